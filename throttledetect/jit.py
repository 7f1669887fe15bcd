"""One switch for compiled hot loops.

The decoding loops are written once, as plain Python over numpy arrays, and compiled
by numba when it is available. Setting THROTTLEDETECT_NO_JIT=1 (or NUMBA_DISABLE_JIT=1)
runs the very same code interpreted: that is what the fuzzer instruments, and the
fallback when numba is missing.
"""
import os

_disabled = os.environ.get("THROTTLEDETECT_NO_JIT") == "1" or os.environ.get("NUMBA_DISABLE_JIT") == "1"

try:
    if _disabled:
        raise ImportError
    import numba as _numba
except ImportError:  # pragma: no cover - exercised by THROTTLEDETECT_NO_JIT=1 runs
    _numba = None

JIT_ENABLED = _numba is not None


def njit(fn=None, *, inline: bool = False):
    """Compile `fn` in nopython mode with an on-disk cache, or return it unchanged.

    inline=True inlines the function into its callers at numba's IR level: for per-packet helpers
    that take many arrays, a real call would marshal every array argument on every packet.
    """
    if fn is None:
        return lambda f: njit(f, inline=inline)
    if _numba is None:
        return fn
    return _numba.njit(cache=True, nogil=True, inline="always" if inline else "never")(fn)
