"""Writing a file all at once or not at all: the one way symnet writes what it keeps."""
import os
import secrets


def write_atomically(path, data, mode=0o666, durable=False):
    """Write `data` (bytes, or a function given the open binary file) to `path` through
    a temporary file beside it, renamed into place: readers see the old file or the new
    one, never half of one.

    The temporary has a random name, so concurrent writers never share one, and it is
    removed on any failure, Ctrl-C included; OSError propagates for the caller to word.
    mode: permissions before the umask (not mkstemp's 0o600). durable: fsync the file
    and its folder, so the new file survives a power cut (checkpoints)."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):     # abspath would drop the slash and write the file
        raise IsADirectoryError(21, "a file name cannot end in '/'", path)
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_folder(folder)


def _fsync_folder(folder):
    """Make the rename itself durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_in_the_way(folder):
    """The nearest existing ancestor of `folder` (itself included) when it is not a
    folder, else None: os.makedirs then fails with only "File exists"."""
    folder = os.path.abspath(os.fspath(folder))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return None if os.path.isdir(folder) else folder
