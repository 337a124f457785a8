"""The compiler's version, with no imports beyond the standard library: `symnet --version`
prints it without loading the compiler (sympy, networkx, LLVM)."""
import hashlib
import os


def _compiler_version():
    """The release plus a hash of the compiler's own source: caches built by any other
    version of the code generator are never reused."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder in (root, os.path.join(root, "codegen")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return "symnet-0.1.0+" + h.hexdigest()[:12]


VERSION = _compiler_version()
