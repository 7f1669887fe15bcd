"""Writing results to files: all or nothing.

A report is written to a temporary file beside its destination and renamed over it only when
complete, so an interrupted or failed run leaves the previous report as it was (never empty or
half-written), and a reader never sees a partial file.
"""
from __future__ import annotations

import os
import stat
import tempfile


class OutputError(Exception):
    """A result could not be written: one line naming the file."""


def write_atomic(path: str | os.PathLike, data, *, encoding: str = "utf-8") -> None:
    """data: str, bytes, or an iterable of str pieces (a large document written as it is made)."""
    path = os.fspath(path)
    target = os.path.realpath(path)          # through a symlink, replace what it points to
    payload = data.encode(encoding) if isinstance(data, str) else data
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        payload = _Pieces(payload, encoding)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(path, target, payload)       # a FIFO, /dev/stdout, a terminal: nothing to rename
        return
    directory = os.path.dirname(target) or "."
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as e:
        _unlink_quietly(tmp)
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _write_in_place(path: str, target: str, payload: bytes) -> None:
    try:
        with open(target, "wb") as f:
            _write(f, payload)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None


class _Pieces:
    def __init__(self, pieces, encoding: str):
        self.pieces, self.encoding = pieces, encoding


def _write(f, payload) -> None:
    if isinstance(payload, _Pieces):
        for piece in payload.pieces:
            f.write(piece.encode(payload.encoding))
    else:
        f.write(payload)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_problem(path: str | os.PathLike, inputs=()) -> str | None:
    """Why `path` cannot take a result (checked before any work), or None. `inputs` are the files
    the command reads: a result must never overwrite one of them."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "is a folder; give a file name"
    for src in inputs:
        try:
            if os.path.exists(path) and os.path.samefile(path, src):
                return f"is the input {src}; it would be overwritten"
        except OSError:
            continue
    target = os.path.realpath(path)
    if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
        return None if os.access(target, os.W_OK) else "cannot write (permission denied)"
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        return f"the folder {os.path.dirname(path) or '.'} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in the folder {os.path.dirname(path) or '.'} (permission denied)"
    return None
