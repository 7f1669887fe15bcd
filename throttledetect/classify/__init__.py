"""Flow classification: which flows are calls, and whose.

    evidence.py   signatures in the packets (STUN, RTP/RTCP, DTLS, SIP/SDP, TLS, QUIC, DNS, app framings)
    rules.py      ordered decision rules and associations between flows -> label, confidence, reason
    calls.py      flows of one call grouped under a call id (call_of), and per-call summaries
    tables.py     address ranges and ports (models/*.json), domains.py: DNS/SNI name suffixes
    labels.py     the label vocabulary
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from throttledetect.classify.calls import CallSummary, group_calls, summarize_calls
from throttledetect.classify.evidence import CaptureEvidence, gather
from throttledetect.classify.labels import is_call
from throttledetect.classify.rules import Decision, Rules
from throttledetect.flows import FlowTable
from throttledetect.read import Capture


@dataclass
class Classification:
    labels: list            # str per flow
    confidence: np.ndarray  # float per flow, 0..1
    reasons: list           # str per flow: which sign matched
    evidence: CaptureEvidence
    call_of: np.ndarray | None = None   # int64 per flow: call id (>= 0) of the call it belongs to, else -1
    flow_table: object = None           # the FlowTable classified (for call summaries)

    def is_call(self, i: int) -> bool:
        return is_call(self.labels[i])

    def calls(self) -> list[CallSummary]:
        """Per call id: its flows, start/end, the media packets each way and whether two-way
        media was ever seen (throttledetect.classify.calls)."""
        if self.call_of is None or self.flow_table is None:
            return []
        return summarize_calls(self.flow_table, self.labels, self.call_of, self.evidence)


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    from throttledetect.classify.domains import load_domains
    from throttledetect.classify.tables import load_address_ranges, load_ports
    return Rules(load_address_ranges(), load_ports(), load_domains())


def classify(cap: Capture, ft: FlowTable, rules: Rules | None = None) -> Classification:
    rules = rules or default_rules()
    ev = gather(cap, ft)
    decisions: list[Decision] = rules.decide(cap, ft, ev)
    labels = [d.label for d in decisions]
    return Classification(labels=labels,
                          confidence=np.array([d.confidence for d in decisions], dtype=float),
                          reasons=[d.reason for d in decisions], evidence=ev,
                          call_of=group_calls(ft, labels, ev, rules.app_of_address), flow_table=ft)
