"""The one result type every detector returns, shaped like scipy.stats results."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("shaping", "policing", "dropping", "blocking")


@dataclass
class Detection:
    """Outcome of one statistical test on one flow direction (or a group of flows).

    decision: "detected" (pvalue below the threshold after false-discovery control, effect large
    enough), "not_detected", or "inconclusive" (the data cannot decide: `reason` says why).
    statistic/pvalue: the test's own; effect: a standardised size a user can compare across
    flows (documented per detector); estimates: rate_bps, burst_bytes, onset_s, loss_rate, ...
    evidence: one sentence a network engineer can check against the capture.
    """

    kind: str                      # one of KINDS
    direction: str                 # "ab", "ba", or "both"
    decision: str                  # "detected" | "not_detected" | "inconclusive"
    statistic: float | None = None
    pvalue: float | None = None
    effect: float | None = None
    estimates: dict = field(default_factory=dict)
    evidence: str = ""
    reason: str = ""               # why inconclusive (or what limited the test)
    qvalue: float | None = None    # Benjamini-Hochberg adjusted p-value across the flows tested

    @classmethod
    def inconclusive(cls, kind: str, direction: str, reason: str, **estimates) -> "Detection":
        return cls(kind=kind, direction=direction, decision="inconclusive", reason=reason, estimates=estimates)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, "", {})}
