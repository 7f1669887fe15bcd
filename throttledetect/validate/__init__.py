"""Validation: predict how the detectors do on calls and networks the project does not have.

    bases.py       the real call captures trials start from, found by the classifier
    network.py     the network model (throttlers and confounders), independent of the detectors
    scenarios.py   what each trial does to its base, the expected verdicts, what counts
    runner.py      trials in a process pool -> analyze_capture -> stored records (JSON)
    score.py       per-trial outcomes, leave-one-app-out calibration, intervals over bases
    calibration.py the detectors' calibratable thresholds (throttledetect.verdicts) or identity
    table.py       markdown tables (per app, per app x scenario group, vca-sense)
    legacy.py      the previous named-trace API, kept for tests/detect/test_bundled.py only
"""
from throttledetect.validate.bases import CorpusMissing, default_corpus  # noqa: F401
from throttledetect.validate.legacy import TRACES, TraceSpec, prepare_trace  # noqa: F401
