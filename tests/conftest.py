"""Under CI, a skip for a missing corpus or tool would hide a failure: turn it into one.

.ci/run sets THROTTLEDETECT_REQUIRE_CORPUS=1, THROTTLEDETECT_REQUIRE_TSHARK=1 and
THROTTLEDETECT_REQUIRE_CHROMIUM=1. Locally, without them, such tests skip with their reason shown.
"""
from __future__ import annotations

import os

import pytest

_REQUIRED = [
    ("THROTTLEDETECT_REQUIRE_CORPUS", "corpus"),
    ("THROTTLEDETECT_REQUIRE_TSHARK", "tshark"),
    ("THROTTLEDETECT_REQUIRE_CHROMIUM", "chromium"),
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    for env, word in _REQUIRED:
        if os.environ.get(env) == "1" and word in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"{env}=1 but the test was skipped: {reason}"
