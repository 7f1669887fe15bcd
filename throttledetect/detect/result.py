"""The one result type every detector returns, shaped like scipy.stats results, and the small
result of the tests inside detectors (TestResult: statistic, pvalue, alternative, null, n)."""
from __future__ import annotations

from dataclasses import dataclass, field


TOWARD_LOCAL, TOWARD_REMOTE = "local", "remote"


@dataclass
class TestResult:
    """One statistical test: as scipy's results, plus what was tested."""

    statistic: float
    pvalue: float
    alternative: str = "greater"
    null: str = ""          # the null hypothesis, one line
    n: int = 0              # sample size the test rests on
    estimates: dict = field(default_factory=dict)   # what else the test measured (named)


@dataclass
class Detection:
    """Outcome of one detector on one flow direction.

    decision: "detected" (q-value below alpha, every check holding, effect at least the kind's
    floor: verdicts.decide), "not_detected", or "inconclusive" (the test could not run: ``reason``).
    statistic / pvalue: the test's own; effect: a size a user can compare across flows, in the
    unit ``effect_unit`` names; checks: conditions that must hold besides significance (named,
    so a result says which failed); estimates: rate_bps, burst_bytes, onset_s, loss, ...
    evidence: one sentence a network engineer can check against the capture.
    direction: "ab"/"ba" (the contract's); toward: "local" (arriving at the capturing host) or
    "remote" (leaving it). required: whether an inconclusive result keeps the flow from "none".
    family_key: tests that share one p-value (a group of flows fitted together) name the group,
    so the false-discovery family counts that p-value once.
    """

    kind: str
    direction: str
    decision: str
    toward: str = TOWARD_LOCAL
    test: str = ""
    statistic: float | None = None
    pvalue: float | None = None
    effect: float | None = None
    effect_unit: str = ""
    checks: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)
    evidence: str = ""
    reason: str = ""
    null: str = ""
    qvalue: float | None = None
    required: bool = True
    family_key: str | None = None
    floor_key: str | None = None      # which effect floor applies (default "floor.<kind>")
    otherwise: str = "not_detected"   # the decision when the test does not detect ("inconclusive":
    #                                    a negative result here would not show the flow is clean)
    short_of_floor: str | None = None  # the decision when the test is significant, its checks hold
    #                                    and only the effect falls short of the floor (None: otherwise)

    @classmethod
    def inconclusive(cls, kind: str, direction: str, reason: str, *, toward: str = TOWARD_LOCAL, test: str = "",
                     required: bool = True, **estimates) -> "Detection":
        return cls(kind=kind, direction=direction, decision="inconclusive", toward=toward, test=test, reason=reason,
                   estimates=estimates, required=required)

    @classmethod
    def nothing_to_find(cls, kind: str, direction: str, why: str, *, toward: str = TOWARD_LOCAL, test: str = "",
                        **estimates) -> "Detection":
        """The test had what it needs and there is no sign at all (no loss to explain, ...)."""
        return cls(kind=kind, direction=direction, decision="not_detected", toward=toward, test=test, reason=why,
                   estimates=estimates)
