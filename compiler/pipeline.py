"""The compiler's stages in order, each a named step whose result can be dumped."""
import numbers

from .graph import build_model
from .parser import parse_program


def parse(text, filename="<string>", seed=0):
    """.nn text -> checked Model (syntax tree -> graph, shapes, loop nests)."""
    # Checked here: NumPy's own error for a negative seed names no seed.
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a whole number of at least 0, got {seed!r}")
    if not isinstance(text, str):
        raise TypeError(f"parse takes the model's text as a str, got {type(text).__name__} "
                        "(for a file, use compiler.load(path))")
    program = parse_program(text, filename)
    return build_model(program, seed=seed, source=text)


def load(path, seed=0):
    from .errors import SymnetError
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SymnetError(f"no such file: {path}")
    except IsADirectoryError:
        raise SymnetError(f"{path} is a folder; give a .nn file")
    except OSError as e:
        raise SymnetError(f"cannot read {path}: {e.strerror or e}")
    except UnicodeDecodeError:
        with open(path, "rb") as f:      # the error's offset is into one chunk of the file
            raw = f.read()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SymnetError(f"this file is not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                              "save it as UTF-8", _byte_loc(path, raw, e.start)) from None
    return parse(text, path, seed)


def _byte_loc(path, raw, offset):
    """The Loc of a byte offset in a file's raw bytes (its column counted in characters)."""
    from .errors import Loc
    start = raw.rfind(b"\n", 0, offset) + 1
    end = raw.find(b"\n", offset)
    line = raw[start:end if end >= 0 else len(raw)].decode("utf-8", "replace")
    col = len(raw[start:offset].decode("utf-8", "replace")) + 1
    return Loc(path, raw.count(b"\n", 0, offset) + 1, col, line)
