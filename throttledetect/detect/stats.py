"""Shared statistics: false-discovery control across many flows."""
from __future__ import annotations

import numpy as np
from scipy import stats


def benjamini_hochberg(pvalues) -> np.ndarray:
    """BH-adjusted p-values (q-values), via scipy.stats.false_discovery_control.

    Null hypothesis of the procedure: each test's own null; it controls the expected share of
    false discoveries among the rejected at the chosen level (Benjamini & Hochberg 1995).
    NaN entries (tests that did not run) stay NaN and do not count.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return out
