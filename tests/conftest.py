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
    # An expected failure is reported as skipped too (with wasxfail): it is not a missing corpus
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    for env, word in _REQUIRED:
        if os.environ.get(env) == "1" and word in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"{env}=1 but the test was skipped: {reason}"


# A detector that raises must fail the tests, not turn into an "inconclusive" detection
# (detect/run.py reads this at every call; the test of the lenient path unsets it itself).
os.environ.setdefault("THROTTLEDETECT_STRICT", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (make test-fast deselects it)")


@pytest.fixture(scope="session")
def synthetic_call(tmp_path_factory):
    """make_call(**kw) written once per distinct keyword set for the whole session: returns the path.

    See tests/detect/calls.py for what a synthetic call holds and the keywords."""
    from tests.detect.calls import make_call
    made: dict = {}
    base = tmp_path_factory.mktemp("calls")

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in made:
            path = base / f"call{len(made)}.pcap"
            make_call(path, **kw)
            made[key] = path
        return made[key]
    return get


@pytest.fixture(scope="session")
def scenario(synthetic_call, tmp_path_factory):
    """A synthetic call impaired by throttledetect.simulate and run through the detectors, once per
    session for each distinct set of arguments: returns (cap, ft, cl, report).

    call: make_call keywords; impairment: a simulate impairment or None (the clean call);
    port: impair only the call flow on this local port (default: every call flow); select: a
    simulate selector instead ("all": every flow); label: relabel the flow on `port` (media the
    classifier cannot name) before detecting; direction: simulate's ("to-local")."""
    from tests.detect.calls import CALL_PORT, analyze, detect, flow_of, impaired
    made: dict = {}
    base = tmp_path_factory.mktemp("impaired")

    def run(call: dict, impairment=None, *, port=None, select=None, onset_s=None, seed=0, label=None,
            direction="to-local"):
        key = (tuple(sorted(call.items())), repr(impairment), port, repr(select), onset_s, seed, label, direction)
        if key not in made:
            src = synthetic_call(**call)
            if impairment is None:
                cap, ft, cl = analyze(src)
            else:
                sel = select
                if sel is None:
                    sel = [flow_of(analyze(src)[1], port)] if port is not None else "calls"
                cap, ft, cl = impaired(src, base / f"s{len(made)}.pcap", impairment, select=sel, onset_s=onset_s,
                                       seed=seed, direction=direction)
            if label is not None:
                # what the classifier would have said had it named the flow: its label, and a call
                # of its own when it was in none
                j = flow_of(ft, port or CALL_PORT)
                cl.labels[j] = label
                if cl.call_of is not None and cl.call_of[j] < 0:
                    cl.call_of[j] = int(cl.call_of.max()) + 1
            made[key] = (cap, ft, cl, detect(cap, ft, cl))
        return made[key]
    return run
