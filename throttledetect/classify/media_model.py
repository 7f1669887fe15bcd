"""Is this UDP flow real-time media? A statistical answer for flows no signature names.

Encrypted call media without a readable header (Telegram peer-to-peer, unknown apps) still looks
like media: a steady packet clock in each direction (an audio frame every 20-60 ms, video frames
at 15-30 fps), small payloads, traffic both ways in every second. Bulk transfers (QUIC downloads,
VPN tunnels, BitTorrent) and request/response traffic (DNS) do not. This module measures those
signs per flow, from packet sizes and times only (never ports or addresses, so that it carries
over to captures and apps we have not seen), and scores them with a logistic regression trained
on the corpus by ``throttledetect train``.

The model is data: ``models/media_model.json`` (found like the other model files, see
:func:`throttledetect.classify.tables.model_file`), plain JSON read strictly, never a pickle::

    {"schema": "throttledetect/media-model/1",
     "features": [names, in the order of FEATURES], "mean": [...], "scale": [...], "coef": [...],
     "intercept": x, "threshold": t, "min_packet_rate": r, "min_duration_s": d,
     "trained": {"date", "corpus", "recipe", "seed", "n_positive", "n_negative", "captures", "cv", ...}}

p = 1 / (1 + exp(-(intercept + sum(coef * (x - mean) / scale)))), except that a flow averaging
fewer than ``min_packet_rate`` packets/s gets p = 0 (keepalives, signalling and connectivity checks
are not media, and the regression is not fitted on them); flows that are not UDP, have fewer than
MIN_PACKETS packets or last less than ``min_duration_s`` get NaN ("cannot tell": a burst under a
second is not yet media; such flows still train the regression). A flow is called media when
p >= threshold.

What it cannot do (see trained.cv for the figures): the corpus's media are captured over jittery
links, so pacing carries little weight; a steady two-way exchange of small packets that is not
media (a chatty request/response protocol, some games) can look like media to it. It is meant for
UDP flows that no signature named, and its threshold is set for precision.

Training (:func:`train`, run by ``throttledetect train``) uses every UDP flow of the corpus with at
least MIN_PACKETS packets whose label is known:

- call media (positive): nDPI's label, mapped by evaluate.agreement.ndpi_to_ours, is a call label
  other than signalling; in the external captures, which have no nDPI labels, our own signature
  classifier names a call with confidence >= 0.85 (RTP, STUN app hints, app framings: signs inside
  the packets, independent of the features here); in the testbed captures, the audio and video
  flows MANIFEST.json lists;
- call flows without media (negative): signalling (SIP, H.323, MGCP, Megaco, Skinny), and
  call-labelled flows that are mostly STUN checks (TURN Send/Data indications count as media) or
  average under ``min_packet_rate`` packets/s (nDPI names every flow of a call app, keepalives too);
- not a call (negative): everything else (QUIC, DNS, games, VPNs, BitTorrent ...) and the testbed's
  UDP control flow.

Flows nDPI left Unknown, and nDPI's bare STUN/DTLS, are not used. Evaluation is leave-one-capture-out
(never one capture in both training and test), with the threshold chosen for precision inside each
fold (nested), so that the figures stored under ``trained.cv`` are out of sample.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from throttledetect.classify.tables import (  # noqa: F401 - ModelError is what loading raises
    ModelError,
    _date,
    _fail,
    _int,
    _list,
    _object,
    _read_json,
    _string,
    model_file,
)

SCHEMA = "throttledetect/media-model/1"
MODEL_FILE = "media_model.json"
MIN_PACKETS = 20            # fewer packets: the model cannot tell
MIN_DURATION_S = 1.0        # a shorter flow cannot tell either (a burst is not yet media); trained on all the same
MAX_RATE = 300.0            # packets/s: faster counts as this fast (the corpus's media stay below it)
PACING_TOLERANCE = 0.30     # an IAT within +-30 % of its direction's median IAT is "on the clock"
PACING_FLOOR_S = 2e-4       # ... or within 0.2 ms of it (timestamp resolution, back-to-back packets)
SMALL_PAYLOAD = 300         # bytes
BIN_S = 1.0                 # time bins for "both directions active"
UDP = 17

SIZE_EDGES = (0, 100, 200, 300, 500, 900, 1200)   # payload-size histogram bins [lo, next lo), the last open
FEATURES = (
    "log_packet_rate",      # ln(packets per second over the flow's duration, at most MAX_RATE)
    "log_iat_median_ms",    # ln(0.1 + median inter-arrival time in ms, within each direction)
    "log1p_iat_cv",         # ln(1 + coefficient of variation of those inter-arrival times)
    "pacing",               # fraction of those IATs within +-30 % of their direction's median
    "log_size_mean",        # ln(1 + mean UDP payload bytes)
    "log1p_size_std",       # ln(1 + standard deviation of payload bytes)
    "size_cv",              # payload standard deviation / (1 + mean)
    "frac_small",           # fraction of packets with payload <= 300 bytes
    "log10_bytes_ratio",    # log10((1 + payload bytes of the lighter direction) / (1 + heavier)), >= -4
    "both_dirs_bins",       # fraction of 1 s bins of the flow's span with packets in both directions
) + tuple(f"size_{lo}_{hi - 1}" for lo, hi in zip(SIZE_EDGES, SIZE_EDGES[1:])) + (f"size_{SIZE_EDGES[-1]}_up",)
# ^ the size_* features: fraction of packets whose payload falls in each bin (a coarse payload-size
#   histogram: audio is small, video bimodal, bulk transfers near the MTU, games in between).
# The flow's duration is measured (FlowStats.duration_s) but is not a feature: the corpus's calls are
# snippets of seconds while some of its other traffic spans hours, so a duration term would learn
# "long flows are not calls", the opposite of real calls.

# Labels (our vocabulary) that are calls but not media: signalling (negatives: "call flow without media").
SIGNALLING = frozenset({"sip", "h323", "mgcp", "megaco", "skinny"})
# Labels that may or may not carry media (nDPI's bare STUN / DTLS): left out of training.
AMBIGUOUS = frozenset({"stun", "dtls"})
STUN_SHARE_MAX = 0.5        # a call-labelled flow with more STUN than this is connectivity checks
MEDIA_MIN_RATE = 5.0        # packets/s: slower is not media (p = 0); a call-labelled flow this slow is a keepalive
TARGET_PRECISION = 0.98
LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0)   # L2 strengths tried (chosen by leave-one-capture-out log-loss)
BOOTSTRAP = 1000            # resamples of captures for the confidence intervals of the CV figures
_STUN_COOKIE = np.frombuffer(bytes.fromhex("2112a442"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Features


@dataclass
class FlowStats:
    """Raw per-flow measurements (NaN where the flow is not scored) and the feature matrix."""

    flows: np.ndarray          # the flow indices asked for
    udp: np.ndarray            # bool
    scored: np.ndarray         # bool: UDP with at least MIN_PACKETS packets (has features; the model
                               # still cannot tell under MIN_DURATION_S, see MediaModel.score)
    packets: np.ndarray
    duration_s: np.ndarray
    packet_rate: np.ndarray
    iat_median_ms: np.ndarray
    iat_cv: np.ndarray
    pacing: np.ndarray
    size_mean: np.ndarray
    size_std: np.ndarray
    frac_small: np.ndarray
    bytes_ratio: np.ndarray    # lighter / heavier direction, payload bytes, 0..1
    both_dirs_bins: np.ndarray
    X: np.ndarray              # float[len(flows), len(FEATURES)], NaN rows where not scored

    def describe(self, j: int) -> str:
        """The measurements of the j-th flow asked for, for a reason string."""
        if not self.udp[j]:
            return "not UDP"
        if not self.scored[j]:
            return f"{int(self.packets[j])} packets: too few to tell"
        if self.duration_s[j] < MIN_DURATION_S:
            return f"{self.duration_s[j]:.2f} s of traffic: too short to tell"
        return (f"{self.packet_rate[j]:.0f} pps, median IAT {self.iat_median_ms[j]:.0f} ms, "
                f"{100 * self.pacing[j]:.0f} % of IATs on that clock, "
                f"mean payload {self.size_mean[j]:.0f} B ({100 * self.frac_small[j]:.0f} % <= {SMALL_PAYLOAD} B), "
                f"both directions in {100 * self.both_dirs_bins[j]:.0f} % of seconds, "
                f"bytes ratio {self.bytes_ratio[j]:.2f}")


def _segments(ft, flows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packet rows of `flows` concatenated (each flow's in time order) and the position of its flow."""
    starts = ft.start[flows]
    lens = ft.start[flows + 1] - starts
    total = int(lens.sum())
    seg = np.repeat(np.arange(len(flows), dtype=np.int64), lens)
    first = np.cumsum(lens) - lens
    pos = np.arange(total, dtype=np.int64) - np.repeat(first, lens) + np.repeat(starts, lens)
    return ft.order[pos], seg


def _segment_median(values: np.ndarray, seg: np.ndarray, m: int) -> np.ndarray:
    """Median of `values` per segment id in 0..m-1 (NaN for empty segments), without a Python loop."""
    out = np.full(m, np.nan)
    if not values.size:
        return out
    order = np.lexsort((values, seg))
    v = values[order]
    counts = np.bincount(seg, minlength=m)
    first = np.cumsum(counts) - counts
    has = counts > 0
    lo = first[has] + (counts[has] - 1) // 2
    hi = first[has] + counts[has] // 2
    out[has] = 0.5 * (v[lo] + v[hi])
    return out


def flow_stats(cap, ft, flow_indices: Iterable[int] | np.ndarray) -> FlowStats:
    """Measure the flows `flow_indices` of `ft` (built from `cap`), all at once."""
    flows = np.asarray(flow_indices, dtype=np.int64).reshape(-1)
    m = len(flows)
    nan = lambda: np.full(m, np.nan)  # noqa: E731
    packets = (ft.packets_ab[flows] + ft.packets_ba[flows]).astype(np.int64) if m else np.zeros(0, np.int64)
    udp = ft.proto[flows] == UDP if m else np.zeros(0, bool)
    span = (ft.last_ns[flows] - ft.first_ns[flows]) / 1e9 if m else np.zeros(0)
    scored = udp & (packets >= MIN_PACKETS)
    st = FlowStats(flows, udp, scored, packets, nan(), nan(), nan(), nan(), nan(), nan(), nan(), nan(), nan(), nan(),
                   np.full((m, len(FEATURES)), np.nan))
    st.duration_s[:] = span
    sel = np.flatnonzero(scored)
    k = len(sel)
    if not k:
        return st
    t = cap.packets if hasattr(cap, "packets") else cap
    rows, seg = _segments(ft, flows[sel])
    n = np.bincount(seg, minlength=k).astype(float)
    first_ns = ft.first_ns[flows[sel]]
    ts = (t.ts_ns[rows] - first_ns[seg]) / 1e9                     # seconds since the flow's first packet
    dirs = ft.dir_of[rows].astype(np.int64)
    size = t.payload_wirelen[rows].astype(float)
    duration = (ft.last_ns[flows[sel]] - first_ns) / 1e9

    # Inter-arrival times within each direction (a stable sort keeps time order inside a direction).
    key = seg * 2 + dirs
    o = np.argsort(key, kind="stable")
    k2, t2 = key[o], ts[o]
    same = k2[1:] == k2[:-1]
    iat = np.diff(t2)[same]
    iat_seg = k2[1:][same] // 2
    n_iat = np.bincount(iat_seg, minlength=k).astype(float)
    iat_mean = np.bincount(iat_seg, weights=iat, minlength=k) / np.maximum(n_iat, 1)
    iat_var = np.bincount(iat_seg, weights=(iat - iat_mean[iat_seg]) ** 2, minlength=k) / np.maximum(n_iat, 1)
    iat_med = _segment_median(iat, iat_seg, k)
    iat_med = np.where(np.isnan(iat_med), 0.0, iat_med)
    # Each direction keeps its own clock (audio one way, video the other): pace against its median.
    iat_key = k2[1:][same]
    dir_med = _segment_median(iat, iat_key, 2 * k)
    ref = dir_med[iat_key]
    on_clock = np.abs(iat - ref) <= np.maximum(PACING_TOLERANCE * ref, PACING_FLOOR_S)
    pacing = np.bincount(iat_seg, weights=on_clock.astype(float), minlength=k) / np.maximum(n_iat, 1)
    iat_cv = np.sqrt(iat_var) / np.maximum(iat_mean, 1e-9)

    # Payload sizes.
    size_mean = np.bincount(seg, weights=size, minlength=k) / n
    size_std = np.sqrt(np.bincount(seg, weights=(size - size_mean[seg]) ** 2, minlength=k) / n)
    frac_small = np.bincount(seg, weights=(size <= SMALL_PAYLOAD).astype(float), minlength=k) / n
    per_dir = np.bincount(key, weights=size, minlength=2 * k).reshape(k, 2)
    ratio = (per_dir.min(axis=1) + 1) / (per_dir.max(axis=1) + 1)

    # 1 s bins of the flow's span with packets in both directions.
    b = np.floor(ts / BIN_S).astype(np.int64)
    nbins = np.floor(duration / BIN_S).astype(np.int64) + 1
    span = int(nbins.max()) + 1
    cell = np.unique((seg * span + b) * 2 + dirs) // 2        # (flow, bin) once per direction present
    cells, twice = np.unique(cell, return_counts=True)
    both = np.bincount(cells[twice == 2] // span, minlength=k) / nbins

    hist = np.searchsorted(np.asarray(SIZE_EDGES, dtype=float), size, side="right") - 1
    nb = len(SIZE_EDGES)
    size_hist = np.bincount(seg * nb + hist, minlength=k * nb).reshape(k, nb) / n[:, None]

    rate = n / np.maximum(duration, 1e-3)
    X = np.column_stack([
        np.log(np.minimum(rate, MAX_RATE)),
        np.log(0.1 + 1e3 * iat_med),
        np.log1p(iat_cv),
        pacing,
        np.log1p(size_mean),
        np.log1p(size_std),
        size_std / (1 + size_mean),
        frac_small,
        np.maximum(np.log10(ratio), -4.0),
        both,
        size_hist,
    ])
    st.duration_s[sel] = duration
    st.packet_rate[sel] = rate
    st.iat_median_ms[sel] = 1e3 * iat_med
    st.iat_cv[sel] = iat_cv
    st.pacing[sel] = pacing
    st.size_mean[sel] = size_mean
    st.size_std[sel] = size_std
    st.frac_small[sel] = frac_small
    st.bytes_ratio[sel] = ratio
    st.both_dirs_bins[sel] = both
    st.X[sel] = X
    return st


def flow_features(cap, ft, flow_indices) -> np.ndarray:
    """float[len(flow_indices), len(FEATURES)]; NaN rows for flows that are not scored."""
    return flow_stats(cap, ft, flow_indices).X


def stun_share(cap, ft, flow_indices) -> np.ndarray:
    """Fraction of each flow's packets that are STUN messages other than TURN Send/Data indications.

    That is connectivity checks, allocations and keepalives: media relayed inside Send/Data
    indications (0x0016/0x0017) counts as media, not as STUN."""
    flows = np.asarray(flow_indices, dtype=np.int64).reshape(-1)
    if not len(flows):
        return np.zeros(0)
    rows, seg = _segments(ft, flows)
    p = cap.packets
    pre = p.prefix[rows]
    msg_type = (pre[:, 0].astype(np.int64) << 8) | pre[:, 1]
    is_stun = (p.payload_wirelen[rows] >= 20) & (pre[:, 0] < 0x40) & np.all(pre[:, 4:8] == _STUN_COOKIE, axis=1)
    is_stun &= ~np.isin(msg_type, (0x0016, 0x0017))
    n = np.bincount(seg, minlength=len(flows)).astype(float)
    return np.bincount(seg, weights=is_stun.astype(float), minlength=len(flows)) / np.maximum(n, 1)


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class MediaModel:
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    min_packet_rate: float
    min_duration_s: float
    trained: dict = field(default_factory=dict, compare=False)
    path: str = "<memory>"

    def decision(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        return self.intercept + ((X - self.mean) / self.scale) @ self.coef

    def probability(self, X: np.ndarray, duration_s: np.ndarray | None = None) -> np.ndarray:
        """p per row of the feature matrix: 0 under the packet-rate gate, NaN (cannot tell) for
        NaN rows and, when `duration_s` is given, for flows shorter than min_duration_s."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        p = _sigmoid(self.decision(X))
        with np.errstate(invalid="ignore"):
            slow = X[:, FEATURES.index("log_packet_rate")] < math.log(self.min_packet_rate)
        p[slow] = 0.0
        if duration_s is not None:
            p[~(np.asarray(duration_s, dtype=float) >= self.min_duration_s)] = np.nan
        p[np.isnan(X).any(axis=1)] = np.nan
        return p

    def score(self, stats: "FlowStats") -> np.ndarray:
        """p for the flows measured by :func:`flow_stats` (NaN where the model cannot tell)."""
        return self.probability(stats.X, stats.duration_s)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "features": list(self.features), "mean": _floats(self.mean),
                "scale": _floats(self.scale), "coef": _floats(self.coef), "intercept": float(self.intercept),
                "threshold": float(self.threshold), "min_packet_rate": float(self.min_packet_rate),
                "min_duration_s": float(self.min_duration_s),
                "trained": self.trained}


def _floats(a) -> list:
    return [float(x) for x in np.asarray(a, dtype=float)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, where, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        _fail(name, where, f"{value!r} is not a finite number")
    return float(value)


def _vector(value: Any, name: str, where: str, length: int) -> np.ndarray:
    items = _list(value, name, where)
    if len(items) != length:
        _fail(name, where, f"expected {length} numbers (one per feature), got {len(items)}")
    return np.array([_number(v, name, f"{where}[{i}]") for i, v in enumerate(items)], dtype=float)


TRAINED_REQUIRED = ("date", "corpus", "recipe", "seed", "n_positive", "n_negative", "captures", "cv")
TRAINED_OPTIONAL = ("lambda", "labels", "features_doc", "excluded", "flows")


def parse_media_model(doc: Any, name: str = "<memory>") -> MediaModel:
    """Check a parsed JSON document and build the model; ModelError (one line) on any problem."""
    doc = _object(doc, name, "$", required=("schema", "features", "mean", "scale", "coef", "intercept",
                                            "threshold", "min_packet_rate", "min_duration_s", "trained"))
    if doc["schema"] != SCHEMA:
        _fail(name, "$.schema", f"expected {SCHEMA!r}, got {doc['schema']!r}"[:200])
    feats = _list(doc["features"], name, "$.features")
    for i, f in enumerate(feats):
        _string(f, name, f"$.features[{i}]")
    if tuple(feats) != FEATURES:
        _fail(name, "$.features", f"expected the features this version computes, in order: {', '.join(FEATURES)}")
    k = len(FEATURES)
    mean = _vector(doc["mean"], name, "$.mean", k)
    scale = _vector(doc["scale"], name, "$.scale", k)
    for i, s in enumerate(scale):
        if s <= 0:
            _fail(name, f"$.scale[{i}]", f"scale must be positive, got {s!r}")
    coef = _vector(doc["coef"], name, "$.coef", k)
    intercept = _number(doc["intercept"], name, "$.intercept")
    threshold = _number(doc["threshold"], name, "$.threshold")
    if not 0.0 < threshold < 1.0:
        _fail(name, "$.threshold", f"a probability threshold must lie strictly between 0 and 1, got {threshold!r}")
    min_rate = _number(doc["min_packet_rate"], name, "$.min_packet_rate")
    if min_rate < 0:
        _fail(name, "$.min_packet_rate", f"a packet rate cannot be negative, got {min_rate!r}")
    min_duration = _number(doc["min_duration_s"], name, "$.min_duration_s")
    if min_duration < 0:
        _fail(name, "$.min_duration_s", f"a duration cannot be negative, got {min_duration!r}")
    tr = _object(doc["trained"], name, "$.trained", required=TRAINED_REQUIRED, optional=TRAINED_OPTIONAL)
    _date(tr["date"], name, "$.trained.date")
    _string(tr["corpus"], name, "$.trained.corpus")
    recipe = _string(tr["recipe"], name, "$.trained.recipe")
    if not recipe.startswith("throttledetect train"):
        _fail(name, "$.trained.recipe", "expected the command that made the file ('throttledetect train ...')")
    _int(tr["seed"], name, "$.trained.seed")
    for key in ("n_positive", "n_negative"):
        if _int(tr[key], name, f"$.trained.{key}") < 1:
            _fail(name, f"$.trained.{key}", "a model needs at least one example of each class")
    for i, c in enumerate(_list(tr["captures"], name, "$.trained.captures")):
        _string(c, name, f"$.trained.captures[{i}]")
    if not isinstance(tr["cv"], dict):
        _fail(name, "$.trained.cv", f"expected an object, got {type(tr['cv']).__name__}")
    return MediaModel(tuple(feats), mean, scale, coef, intercept, threshold, min_rate, min_duration, tr, name)


def load_media_model(path: str | os.PathLike | None = None) -> MediaModel:
    """Read and check ``media_model.json`` (by default found as tables.model_file finds model files)."""
    source = model_file(MODEL_FILE) if path is None else Path(path)
    name = str(source)
    return parse_media_model(_read_json(source, name), name)


@lru_cache(maxsize=1)
def default_media_model() -> MediaModel:
    return load_media_model()


def media_probability(cap, ft, flow_indices, model: MediaModel | None = None) -> np.ndarray:
    """P(real-time media) per flow of `flow_indices`; NaN where the model cannot tell (not UDP, fewer
    than MIN_PACKETS packets, shorter than MIN_DURATION_S)."""
    model = model or default_media_model()
    return model.score(flow_stats(cap, ft, flow_indices)).reshape(-1)


# --------------------------------------------------------------------------------------------
# Fitting
