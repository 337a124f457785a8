"""Located diagnostics: every user-facing error is a SymnetError.

A SymnetError carries an optional source location. `format()` renders the form the
language spec requires: `FILE:LINE:COL: error: MESSAGE`, the source line, and a caret.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """A position in a source file (1-based line and column)."""
    filename: str
    line: int
    col: int
    line_text: str = field(default="", compare=False, repr=False)

    def __str__(self):
        return f"{self.filename}:{self.line}:{self.col}"


def printable(text):
    """Text safe for a terminal: control and bidi-override characters as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


class SymnetError(Exception):
    """An error in the user's model, data or command line: reported, never a traceback."""

    def __init__(self, message, loc=None):
        message = printable(message)
        super().__init__(message)
        self.message = message
        self.loc = loc

    def format(self):
        if self.loc is None:
            return f"error: {self.message}"
        text = f"{self.loc}: error: {self.message}"
        if self.loc.line_text:
            line = printable(self.loc.line_text.rstrip("\n").replace("\t", " "))
            caret = " " * (self.loc.col - 1) + "^"
            text += f"\n    {line}\n    {caret}"
        return text

    def __str__(self):
        return self.format()
