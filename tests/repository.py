"""Where the tests find the repository and its examples, wherever pytest runs from."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Paths relative to the repository root (the tests that use them run there); globbed
# from this file's location, so that a run from elsewhere does not find no examples and
# skip every test of them as an "empty parameter set".
EXAMPLES = sorted(p.relative_to(ROOT) for p in (ROOT / "examples").glob("*.nn"))
assert len(EXAMPLES) >= 9, EXAMPLES
