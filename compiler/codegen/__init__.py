"""Code generators: LLVM IR for the host CPU (llvm.py), PTX (ptx.py), the emulated grid."""
import llvmlite

# The IR we build uses opaque pointers (`ptr`), which llvmlite's IR builder writes and
# its LLVM parses only from 0.46 (LLVM 20) on; older ones fail deep in code generation.
LLVMLITE_MIN = (0, 46)

if tuple(int(part) for part in llvmlite.__version__.split(".")[:2]) < LLVMLITE_MIN:
    raise ImportError(f"symnet needs llvmlite {'.'.join(map(str, LLVMLITE_MIN))} or newer; "
                      f"this is {llvmlite.__version__} (pip install -U llvmlite)")
