"""JSON for results that carry numpy scalars and arrays."""
from __future__ import annotations

import numpy as np


def json_default(x):
    """`default=` for json.dump: numpy integers, floats and arrays as plain Python values."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
