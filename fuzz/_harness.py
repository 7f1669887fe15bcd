"""Common start-up of the atheris harnesses: interpreted decoding loops, instrumented imports."""
from __future__ import annotations

import os
import sys

# The numba-compiled loops are invisible to a coverage-guided fuzzer: run the very same code
# interpreted (throttledetect/jit.py). Must be set before throttledetect is imported.
os.environ.setdefault("THROTTLEDETECT_NO_JIT", "1")
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")
# The fuzzed reader is ours: no tshark process per input (read/fallback.py).
os.environ.setdefault("THROTTLEDETECT_NO_FALLBACK", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)


def run(test_one_input, import_modules) -> None:
    """Instrument throttledetect (only it: numpy's own code is not what we test) and fuzz."""
    import warnings

    import atheris
    import numpy as np

    # Interpreted runs compute some 64-bit hashes and sums that wrap by design; numpy warns.
    warnings.simplefilter("ignore", RuntimeWarning)
    np.seterr(all="ignore")
    with atheris.instrument_imports(include=["throttledetect"]):
        import_modules()
    import checks  # noqa: F401  (not instrumented: it is the oracle)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
