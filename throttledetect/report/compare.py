"""Two sets of captures side by side, per protocol: rate, loss, jitter and verdicts, and whether
the throughput differs, by Wehe's two-sample tests.

Wehe (Kakhki et al., IMC 2015; Li et al., SIGCOMM 2019) replays an app's traffic and a control and
calls the difference "differentiation" when both tests agree:

* area test: the area between the two inverse CDFs of the throughput samples (quantiles 0.001 to
  1), divided by the smaller of the two maxima; at least AREA_THRESHOLD (0.5), or
  AREA_THRESHOLD_FAST (0.3) when both rates are above FAST_BPS (10 Mbit/s);
* Kolmogorov-Smirnov two-sample test: p < KS_ALPHA (0.01). Wehe (after NetPolice) also runs it on
  JACKKNIFE_RUNS random halves of the samples; the share of halves that reject is reported.

A large area with p >= 0.01 is "inconclusive" (Wehe asks for another replay then). Wehe's code
describes these thresholds as ad hoc; they are kept as published so results compare with Wehe's.
Here the two sides are two sets of captures (e.g. without and with a VPN, or two ISPs) and the
samples are the protocol's throughput per bin toward the capturing host (report/summary.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from throttledetect.report.summary import ProtocolStats, protocol_stats

AREA_THRESHOLD = 0.5
AREA_THRESHOLD_FAST = 0.3
FAST_BPS = 10e6
KS_ALPHA = 0.01
JACKKNIFE_RUNS = 100
JACKKNIFE_FRACTION = 0.5
MIN_SAMPLES = 10              # bins per side; fewer cannot support a KS test at 0.01
QUANTILES = np.linspace(0.001, 1.0, 1000)


@dataclass
class SampleTest:
    decision: str                 # "differs", "no difference", "inconclusive", "too few samples"
    n_baseline: int
    n_test: int
    area: float | None = None
    area_threshold: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    jackknife_reject_share: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def area_test(a: np.ndarray, b: np.ndarray) -> float:
    """Area between the inverse CDFs, normalised by the smaller maximum (0 = same distribution)."""
    qa, qb = np.quantile(a, QUANTILES), np.quantile(b, QUANTILES)
    scale = min(float(np.max(a)), float(np.max(b)))
    if scale <= 0:
        return 0.0 if np.array_equal(qa, qb) else float("inf")
    gap = np.abs(qa - qb)
    area = float(np.sum((gap[1:] + gap[:-1]) / 2.0 * np.diff(QUANTILES)))    # trapezoid rule
    return area / scale


def two_sample_test(baseline: np.ndarray, test: np.ndarray, *, seed: int = 0) -> SampleTest:
    from scipy.stats import ks_2samp
    a, b = np.asarray(baseline, dtype=float), np.asarray(test, dtype=float)
    if min(len(a), len(b)) < MIN_SAMPLES:
        return SampleTest("too few samples", len(a), len(b))
    area = area_test(a, b)
    threshold = AREA_THRESHOLD_FAST if min(np.median(a), np.median(b)) > FAST_BPS else AREA_THRESHOLD
    rng = np.random.default_rng(seed)
    rejects = 0
    with warnings.catch_warnings():
        # ties make scipy fall back from the exact to the asymptotic p-value, with a warning on stderr
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = ks_2samp(a, b)
        for _ in range(JACKKNIFE_RUNS):
            ha = rng.choice(a, max(2, int(len(a) * JACKKNIFE_FRACTION)), replace=False)
            hb = rng.choice(b, max(2, int(len(b) * JACKKNIFE_FRACTION)), replace=False)
            rejects += ks_2samp(ha, hb).pvalue < KS_ALPHA
    if area >= threshold:
        decision = "differs" if ks.pvalue < KS_ALPHA else "inconclusive"
    else:
        decision = "no difference"
    return SampleTest(decision, len(a), len(b), area, threshold, float(ks.statistic), float(ks.pvalue),
                      rejects / JACKKNIFE_RUNS)


@dataclass
class ProtocolComparison:
    protocol: str
    direction: str                # "to you" / "from you"
    baseline: ProtocolStats
    test: ProtocolStats
    rate: SampleTest

    def to_json(self) -> dict:
        def side(s: ProtocolStats) -> dict:
            return {"flows": s.flows, "verdict": s.verdict, "kinds": s.kinds, "rate_bps": s.rate_bps,
                    "median_rate_bps": s.median_bps, "samples": len(s.samples_bps), "loss": s.loss,
                    "jitter_ms": s.jitter_ms}
        return {"protocol": self.protocol, "direction": self.direction, "baseline": side(self.baseline),
                "test": side(self.test), "rate_test": self.rate.to_json()}


@dataclass
class Comparison:
    baseline: list[str]           # capture paths of each side
    test: list[str]
    rows: list[ProtocolComparison] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return any(r.rate.decision == "differs" for r in self.rows)

    def to_json(self) -> dict:
        return {"schema": "throttledetect-compare/1", "baseline": self.baseline, "test": self.test,
                "method": {"area_threshold": AREA_THRESHOLD, "area_threshold_fast": AREA_THRESHOLD_FAST,
                           "fast_bps": FAST_BPS, "ks_alpha": KS_ALPHA, "jackknife_runs": JACKKNIFE_RUNS},
                "protocols": [r.to_json() for r in self.rows]}

    def table(self, width: int = 100) -> str:
        from throttledetect.report.compare_text import render
        return render(self, width)


def compare_documents(baseline: dict, test: dict, *, protocols=None) -> Comparison:
    """Per protocol seen on either side, per direction: the two sides' figures and the rate tests."""
    cmp = Comparison([c["path"] for c in baseline["captures"]], [c["path"] for c in test["captures"]])
    for inbound, label in ((True, "to you"), (False, "from you")):
        sb, st = protocol_stats(baseline, inbound=inbound), protocol_stats(test, inbound=inbound)
        names = sorted(set(sb) | set(st), key=lambda p: (-(_bytes(sb.get(p)) + _bytes(st.get(p))), p))
        for p in names:
            if protocols is not None and p not in protocols:
                continue
            b, t = sb.get(p, ProtocolStats(p)), st.get(p, ProtocolStats(p))
            cmp.rows.append(ProtocolComparison(p, label, b, t, two_sample_test(b.samples_bps, t.samples_bps)))
    return cmp


def _bytes(s: ProtocolStats | None) -> float:
    return float(np.sum(s.samples_bps)) if s is not None else 0.0


def load_side(sources: list[str], options: dict) -> dict:
    """One side of a comparison as a document: a saved JSON report (analyze --format json), or
    captures/folders analysed now with `options` (api.analyze keywords)."""
    import json
    if len(sources) == 1 and _is_json_report(sources[0]):
        with open(sources[0], encoding="utf-8") as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or "captures" not in doc or "flows" not in doc:
            raise ValueError(f"{sources[0]}: a JSON file, but not a throttledetect analyze report")
        return doc
    from throttledetect.api import analyze
    return analyze(*sources, **options).document


def _is_json_report(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False
