"""One switch for compiled hot loops, and where their compiled code is cached.

The decoding loops are written once, as plain Python over numpy arrays, and compiled
by numba when it is available. Setting THROTTLEDETECT_NO_JIT=1 (or NUMBA_DISABLE_JIT=1)
runs the very same code interpreted: that is what the fuzzer instruments, and the
fallback when numba is missing.

numba caches compiled code on disk beside the sources (``__pycache__``) or in the user's cache
directory (``~/.cache/numba``). A service account without a home, a read-only container or an
installation owned by root offers neither, and numba then refuses to even define a cached
function ("no locator available"): every command, ``--help`` included, died with a traceback.
So the place is chosen here before numba is imported (CACHE): the user's own NUMBA_CACHE_DIR,
else numba's places when writable, else a private directory of this user under the temporary
directory, and when even that is impossible the loops are compiled in memory for each run.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass

_disabled = os.environ.get("THROTTLEDETECT_NO_JIT") == "1" or os.environ.get("NUMBA_DISABLE_JIT") == "1"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class CachePlace:
    kind: str           # "user" (NUMBA_CACHE_DIR), "in-tree", "user-wide", "private-temp", "none"
    path: str | None    # directory (None for "none"; for "in-tree" the package directory)


def _writable_dir(path: str) -> bool:
    """Can files be created in `path` (creating it if missing)? Read-only mounts answer no."""
    probe = path
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.access(probe, os.W_OK | os.X_OK)


def _in_tree_writable() -> bool:
    # numba writes beside each source file; every package directory of ours must take files
    for root, dirs, files in os.walk(_PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        if any(f.endswith(".py") for f in files):
            cache = os.path.join(root, "__pycache__")
            if not _writable_dir(cache):
                return False
    return True


def _numba_user_cache_dir() -> str:
    # numba's UserWideCacheLocator: appdirs' user_cache_dir("numba"), i.e. $XDG_CACHE_HOME/numba or ~/.cache/numba
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numba")


def _private_temp_dir() -> str | None:
    """$TMPDIR/throttledetect-numba-<uid>, created 0700 and used only if it is ours and private.

    numba's cache files are pickles: a directory another user could write into (or had created
    for us, or a symlink planted in its place) would let them run code as us, so anything but a
    real directory owned by this user with no group/other access is refused."""
    if not hasattr(os, "getuid"):
        return None
    path = os.path.join(tempfile.gettempdir(), f"throttledetect-numba-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


def choose_cache_place() -> CachePlace:
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return CachePlace("user", user)
    if _in_tree_writable():
        return CachePlace("in-tree", _PACKAGE_DIR)
    wide = _numba_user_cache_dir()
    if _writable_dir(wide):
        return CachePlace("user-wide", wide)
    private = _private_temp_dir()
    if private:
        return CachePlace("private-temp", private)
    return CachePlace("none", None)


if _disabled:
    CACHE = CachePlace("none", None)
else:
    CACHE = choose_cache_place()
    if CACHE.kind == "private-temp" and "numba" not in sys.modules:
        # read by numba.config when numba is imported; numba's own places were unusable anyway
        os.environ["NUMBA_CACHE_DIR"] = CACHE.path

try:
    if _disabled:
        raise ImportError
    import numba as _numba
except ImportError:  # pragma: no cover - exercised by THROTTLEDETECT_NO_JIT=1 runs
    _numba = None

if _numba is not None and CACHE.kind == "private-temp" and not _numba.config.CACHE_DIR:
    _numba.config.CACHE_DIR = CACHE.path     # numba was imported before us (a notebook)

JIT_ENABLED = _numba is not None
CACHE_ENABLED = JIT_ENABLED and CACHE.kind != "none"


def njit(fn=None, *, inline: bool = False):
    """Compile `fn` in nopython mode with an on-disk cache (when there is a place for one),
    or return it unchanged when compilation is off.

    inline=True inlines the function into its callers at numba's IR level: for per-packet helpers
    that take many arrays, a real call would marshal every array argument on every packet.
    """
    if fn is None:
        return lambda f: njit(f, inline=inline)
    if _numba is None:
        return fn
    return _numba.njit(cache=CACHE_ENABLED, nogil=True, inline="always" if inline else "never")(fn)


def cache_is_warm(dispatcher) -> bool | None:
    """Has `dispatcher` (a function made by njit) compiled code in the cache already? None when
    this cannot be told (no JIT, no cache, a numba without the attributes used here)."""
    if not CACHE_ENABLED:
        return None if not JIT_ENABLED else False
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    if index is None:
        return None
    return os.path.exists(index)
