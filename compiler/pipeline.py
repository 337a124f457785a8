"""The compiler's stages in order, each a named step whose result can be dumped."""
import numbers

from .graph import build_model
from .parser import parse_program


def parse(text, filename="<string>", seed=0):
    """.nn text -> checked Model (syntax tree -> graph, shapes, loop nests)."""
    # Checked here: NumPy's own error for a negative seed names no seed.
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a whole number of at least 0, got {seed!r}")
    program = parse_program(text, filename)
    return build_model(program, seed=seed, source=text)


def load(path, seed=0):
    from .errors import SymnetError
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SymnetError(f"no such file: {path}")
    except (OSError, UnicodeDecodeError) as e:
        raise SymnetError(f"cannot read {path}: {e}")
    return parse(text, path, seed)
