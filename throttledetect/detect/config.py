"""Every threshold of the detectors, declared once (as Zeek declares its options), overridable,
and written into the JSON output so a result says how it was made.

The thresholds that decide (alpha and one effect floor per kind) are verdicts.DEFAULTS, shared
with the rescoring of stored results; the others belong to one detector each (its Params).
Principles rather than tuning set them: each is justified where it is declared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from throttledetect import verdicts


@dataclass(frozen=True)
class DroppingParams:
    min_units: int = 100            # expected packets: fewer cannot show a few % of loss apart from none
    min_control_units: int = 200    # a control with fewer expected packets is too weak to compare
    lossy_path: float = 0.01        # loss above this with nothing showing selectivity: inconclusive
    onset_min_s: float = 10.0       # a loss onset needs this long before and after it
    onset_bin_s: float = 2.0
    onset_persistence: float = 0.5  # the last third after an onset keeps at least half the step


@dataclass(frozen=True)
class PolicingParams:
    min_losses: int = 15            # lost and passed packets, each (SIGCOMM'16's min_num_samples)
    rate_span: float = 3.0          # rate grid: [received / span, received x 1.5]
    rate_steps: int = 48
    burst_steps: int = 16
    max_burst_s: float = 2.0        # the largest bucket tried holds this long at the rate
    permutations: int = 1999        # of the loss labels (the null of the alignment test)
    dispersion_window: int = 20     # expected packets per window of the regularity test
    # a queue holding this many packets is a shaper's: a tbf holding one drops like a policer, and
    # its queue reads at most one (the packet waiting for its tokens), counted in the flow's large
    # packets (shaping.queue_unit_bytes); the half packet above it is room for the delay's noise
    min_queue_packets: float = 1.5


@dataclass(frozen=True)
class ShapingParams:
    min_frames: int = 60            # frames with a sender time (delay test)
    window_s: float = 1.0           # delay: minimum per window (robust to jitter and pacing)
    min_windows: int = 12
    min_queue_packets: float = 1.5  # a queue must hold this many packets at the cap (PolicingParams')
    spacing_k: int = 8              # packets per spacing window (rate at the bottleneck)
    cap_tolerance: float = 0.1      # a window within 10 % of the cap is "at the cap"
    min_busy_share: float = 0.5     # share of the backlogged period's windows at the cap
    min_backlog_s: float = 3.0


@dataclass(frozen=True)
class BlockingParams:
    min_silence_s: float = 5.0      # the local side kept sending this long after the last inbound packet
    keeps_sending_share: float = 0.25  # ... a quarter of its recent packet rate: a hang-up leaves only
    # keepalives and RTCP (an order of magnitude below media), while a sender that gets no feedback
    # any more may halve its rate or drop its video (congestion control), and still goes on
    keeps_sending_window_s: float = 5.0
    min_media_pps: float = 5.0      # ... and at least this many packets a second: keepalives, RTCP and
    # consent checks come one every 0.5-5 s per flow, voice sends 16-50 a second even at its sparsest
    min_active_packets: int = 8     # inbound packets before the silence (2 s of a slow voice stream)
    answer_rate_h0: float = 0.8     # setup: H0 each request answered with at least this probability
    min_requests: int = 5
    request_grace_s: float = 3.0    # requests this close to the capture's end are not judged
    min_media_packets: int = 50     # a flow with fewer non-STUN packets both ways carries no media to test
    min_two_way_packets: int = 20   # this many non-STUN packets each way: the call was set up
    same_call_gap_s: float = 30.0   # the app's attempts this close in time are one call (setup.py)


@dataclass(frozen=True)
class DetectConfig:
    thresholds: dict = field(default_factory=lambda: dict(verdicts.DEFAULTS))
    dropping: DroppingParams = DroppingParams()
    policing: PolicingParams = PolicingParams()
    shaping: ShapingParams = ShapingParams()
    blocking: BlockingParams = BlockingParams()
    seed: int = 0

    @property
    def alpha(self) -> float:
        return float(self.thresholds["alpha"])

    def with_thresholds(self, **overrides) -> "DetectConfig":
        return replace(self, thresholds=verdicts.config_values({**self.thresholds, **overrides}))

    def to_json(self) -> dict:
        return asdict(self)


DEFAULT_CONFIG = DetectConfig()
