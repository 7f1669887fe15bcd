"""Detectors: one module per test, declared in one list (run.py); see run.py for how they run.

Importing this package is light: run.py and the detectors (numpy, scipy, numba) load when
``run_detectors`` is first used.
"""
from __future__ import annotations


def run_detectors(*args, **kwargs):
    from throttledetect.detect.run import run_detectors as _run
    return _run(*args, **kwargs)


__all__ = ["run_detectors"]
