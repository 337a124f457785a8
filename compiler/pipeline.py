"""The compiler's stages in order, each a named step whose result can be dumped."""
from .graph import build_model
from .parser import parse_program


def parse(text, filename="<string>", seed=0):
    """.nn text -> checked Model (syntax tree -> graph, shapes, loop nests)."""
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
