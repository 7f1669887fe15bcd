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

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

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


def fit_logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray,
                 lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """L2-regularised weighted logistic regression on standardised X -> (mean, scale, coef, intercept).

    Minimises sum_i w_i * logloss_i + lam / 2 * |coef|^2 (the intercept is not penalised) with
    scipy.optimize.minimize (trust-region Newton, exact gradient and Hessian) from zero. The
    objective is strictly convex, so the optimum is unique and the same data give the same
    coefficients to well under 1e-6 whatever the platform.
    """
    from scipy.optimize import minimize

    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    Z = np.column_stack([(X - mean) / scale, np.ones(len(X))])
    k = Z.shape[1] - 1
    penalty = np.full(k + 1, lam)
    penalty[k] = 0.0

    def objective(theta):
        z = Z @ theta
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(penalty * theta * theta))

    def gradient(theta):
        return Z.T @ (w * (_sigmoid(Z @ theta) - y)) + penalty * theta

    def hessian(theta):
        p = _sigmoid(Z @ theta)
        return (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(penalty)

    res = minimize(objective, np.zeros(k + 1), jac=gradient, hess=hessian, method="trust-exact",
                   options={"gtol": 1e-10, "maxiter": 1000})
    if not res.success and np.max(np.abs(gradient(res.x))) > 1e-6:
        raise RuntimeError(f"logistic regression did not converge: {res.message}")
    return mean, scale, res.x[:k].copy(), float(res.x[k])


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    n, npos = len(y), int(y.sum())
    nneg = n - npos
    return np.where(y == 1, n / (2.0 * max(npos, 1)), n / (2.0 * max(nneg, 1)))


def _fit_predict(X, y, train, test, lam):
    mean, scale, coef, b = fit_logistic(X[train], y[train], _balanced_weights(y[train]), lam)
    return _sigmoid(b + ((X[test] - mean) / scale) @ coef)


def passes_gate(X: np.ndarray, min_rate: float = MEDIA_MIN_RATE) -> np.ndarray:
    """Rows whose packet rate reaches `min_rate` (below it a flow is not media, whatever else it shows)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(X, dtype=float)[:, FEATURES.index("log_packet_rate")] >= math.log(min_rate)


def loco_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, lam: float,
                rows: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold p for `rows` (default all): each group predicted by a model fitted without it.

    Like the model itself: rows under the packet-rate gate get 0 and are not fitted on."""
    rows = np.arange(len(y)) if rows is None else rows
    gate = passes_gate(X)
    out = np.full(len(y), np.nan)
    for g in np.unique(groups[rows]):
        test = rows[groups[rows] == g]
        train = rows[(groups[rows] != g) & gate[rows]]
        if len(np.unique(y[train])) < 2:
            continue
        out[test] = np.where(gate[test], _fit_predict(X, y, train, test, lam), 0.0)
    return out


def choose_threshold(p: np.ndarray, y: np.ndarray, target: float = TARGET_PRECISION) -> float:
    """The lowest threshold (most recall) at which p >= threshold has precision >= target.

    It is placed halfway between the lowest positive call it keeps and the next lower score,
    and never below 0.5. With no such threshold, 0.99.
    """
    ok = ~np.isnan(p)
    p, y = p[ok], y[ok]
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    # Only cut between distinct scores.
    last_of_tie = np.append(ps[1:] != ps[:-1], True)
    prec = tp / np.maximum(tp + fp, 1)
    good = np.flatnonzero(last_of_tie & (prec >= target) & (tp >= 1))
    if not good.size:
        return 0.99
    i = good[-1]
    below = ps[i + 1] if i + 1 < len(ps) else 0.0
    return float(min(max(0.5 * (ps[i] + below), 0.5), 0.99))


def _counts(p: np.ndarray, y: np.ndarray, t: float | np.ndarray) -> dict:
    call = p >= t
    tp = int(np.sum(call & (y == 1)))
    fp = int(np.sum(call & (y == 0)))
    fn = int(np.sum(~call & (y == 1)))
    tn = int(np.sum(~call & (y == 0)))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, **_prf(tp, fp, fn)}


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def _log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(np.sum(w * -(y * np.log(p) + (1 - y) * np.log(1 - p))) / np.sum(w))


# --------------------------------------------------------------------------------------------
# The training set


@dataclass
class Example:
    capture: str          # file name (the CV group)
    source: str           # ndpi / external / testbed
    flow: str             # "udp a <-> b"
    label: str            # our label (or the testbed flow name)
    kind: str             # MEDIA, CALL_NO_MEDIA, NOT_CALL
    y: int
    app: str = "?"        # the app the flow belongs to (leave-one-app-out group): nDPI's app name for
                          # nDPI's non-call flows, our call label for call flows


@dataclass
class TrainingSet:
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    examples: list
    excluded: dict        # reason -> count
    captures: list        # every capture read (relative to the corpus / project)
    duration: np.ndarray | None = None   # seconds per example (the model cannot tell under MIN_DURATION_S)


def _flow_name(ft, i: int) -> str:
    return f"udp {ft.endpoint(i, 'a')} <-> {ft.endpoint(i, 'b')}"


def _candidates(ft) -> np.ndarray:
    n = (ft.packets_ab + ft.packets_ba)
    return np.flatnonzero((ft.proto == UDP) & (n >= MIN_PACKETS))


def _label_ndpi(cap, ft, label_file: Path, cand: np.ndarray) -> list[tuple[int, str | None, str]]:
    from throttledetect.evaluate.agreement import ndpi_to_ours
    from throttledetect.evaluate.ndpi_labels import flow_key, ndpi_ip_text, parse_ndpi_out
    from throttledetect.read.table import halves_to_address

    labels = {f.key: f for f in parse_ndpi_out(label_file)}
    out = []
    for i in cand.tolist():
        a = ndpi_ip_text(halves_to_address(ft.a_hi[i], ft.a_lo[i]))
        b = ndpi_ip_text(halves_to_address(ft.b_hi[i], ft.b_lo[i]))
        f = labels.get(flow_key(UDP, a, int(ft.a_port[i]), b, int(ft.b_port[i])))
        ours = ndpi_to_ours(f) if f is not None else None
        app = "?" if f is None else (f.app if f.app != "Unknown" else (f.master or "Unknown"))
        out.append((i, ours, app))
    return out


def _label_ours(cap, ft, cand: np.ndarray) -> list[tuple[int, str | None, str]]:
    """Labels from our signature classifier (for captures without nDPI labels): confident ones only."""
    from throttledetect.classify import classify

    cl = classify(cap, ft)
    out = []
    for i in cand.tolist():
        label, conf = cl.labels[i], float(cl.confidence[i])
        # Never learn from this model's own verdicts (once the rules use it): signs in the packets only.
        own = label == "unknown_call" or "model p=" in cl.reasons[i]
        ok = conf >= 0.85 and label != "other" and not own
        out.append((i, label if ok else None, label))
    return out


def _label_testbed(ft, entry: dict, cand: np.ndarray) -> list[tuple[int, str | None, str]]:
    names = {}
    for f in entry.get("flows", []):
        if f.get("transport") == "udp":
            names[frozenset((f["client"], f["server"]))] = f["name"]
    out = []
    for i in cand.tolist():
        name = names.get(frozenset((ft.endpoint(i, "a"), ft.endpoint(i, "b"))))
        out.append((i, {"audio": "testbed_audio", "video": "testbed_video", "udp_control": "testbed_udp_control"}
                    .get(name), "testbed"))
    return out


# Kinds of training example (Example.kind).
MEDIA = "call media"
CALL_NO_MEDIA = "call flow without media"      # signalling, keepalives, connectivity checks
NOT_CALL = "not a call"


def _kind_of(label: str | None) -> str:
    """MEDIA, CALL_NO_MEDIA, NOT_CALL, or another string saying why the flow is left out."""
    from throttledetect.classify.labels import is_call

    if label is None:
        return "label unknown (nDPI Unknown, or no confident signature)"
    if label in ("testbed_audio", "testbed_video"):
        return MEDIA
    if label == "testbed_udp_control":
        return NOT_CALL
    if label in AMBIGUOUS:
        return "bare STUN/DTLS (media or not)"
    if label in SIGNALLING:
        return CALL_NO_MEDIA
    return MEDIA if is_call(label) else NOT_CALL


def corpus_sources(corpus: Path, captures: Path | None, vca: bool = False) -> list[tuple[str, Path, Any]]:
    """(source kind, capture path, label info) for every capture used in training, in a fixed order."""
    out: list[tuple[str, Path, Any]] = []
    pcap_dir, label_dir = corpus / "ndpi" / "pcap", corpus / "ndpi" / "labels"
    if pcap_dir.is_dir():
        for p in sorted(pcap_dir.iterdir()):
            lf = label_dir / (p.name + ".out")
            if p.is_file() and lf.is_file():
                out.append(("ndpi", p, lf))
    ext = corpus / "external"
    if ext.is_dir():
        for p in sorted(ext.iterdir()):
            if p.is_file():
                out.append(("external", p, None))
    # Real Tencent Meeting calls (no nDPI labels): labelled by our signature classifier, like external/.
    # Off by default: with them the leave-one-capture-out recall fell from 0.67 to 0.13 (models/README.md).
    vca_dir = corpus / "vca-sense"
    if vca and vca_dir.is_dir():
        for p in sorted(vca_dir.iterdir()):
            if p.is_file() and ".pcap" in p.name:
                out.append(("vca", p, None))
    if captures is not None and (captures / "MANIFEST.json").is_file():
        manifest = json.loads((captures / "MANIFEST.json").read_text(encoding="utf-8"))
        for entry in sorted(manifest.get("captures", []), key=lambda e: e["file"]):
            p = captures / entry["file"]
            if p.is_file():
                out.append(("testbed", p, entry))
    return out


def gather_training_set(corpus: Path, captures: Path | None, vca: bool = False) -> TrainingSet:
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture

    Xs, durations, examples, excluded, read = [], [], [], {}, []
    for kind_src, path, info in corpus_sources(corpus, captures, vca):
        cap = read_capture(str(path))
        ft = build_flows(cap, idle_timeout=None)    # one flow per 5-tuple, as nDPI's labels count them
        cand = _candidates(ft)
        read.append(f"{kind_src}/{path.name}")
        if not cand.size:
            continue
        if kind_src == "ndpi":
            labelled = _label_ndpi(cap, ft, info, cand)
        elif kind_src in ("external", "vca"):
            labelled = _label_ours(cap, ft, cand)
        else:
            labelled = _label_testbed(ft, info, cand)
        stun = stun_share(cap, ft, cand)
        st = flow_stats(cap, ft, cand)
        X = st.X
        for j, (i, label, app) in enumerate(labelled):
            kind = _kind_of(label)
            if kind == MEDIA and not label.startswith("testbed"):
                # nDPI names every flow of a call app; some carry no media (checks, keepalives).
                if stun[j] > STUN_SHARE_MAX or np.exp(X[j, 0]) < MEDIA_MIN_RATE:
                    kind = CALL_NO_MEDIA
            if kind not in (MEDIA, CALL_NO_MEDIA, NOT_CALL):
                excluded[kind] = excluded.get(kind, 0) + 1
                continue
            Xs.append(X[j])
            durations.append(st.duration_s[j])
            # A call flow's app is its call label (one group per app, whichever capture it is in).
            group = label if kind in (MEDIA, CALL_NO_MEDIA) and not label.startswith("testbed") else app
            if label == "testbed_udp_control":
                group = "testbed_udp_control"      # a synthetic non-call stream: its own app, not the calls
            examples.append(Example(path.name, kind_src, _flow_name(ft, i), label, kind, int(kind == MEDIA),
                                    _app_group(group)))
    X = np.array(Xs, dtype=float).reshape(-1, len(FEATURES))
    y = np.array([e.y for e in examples], dtype=float)
    groups = np.array([f"{e.source}/{e.capture}" for e in examples])
    return TrainingSet(X, y, groups, examples, excluded, read, np.array(durations, dtype=float))


def _app_group(name: str) -> str:
    """One group per app for leave-one-app-out: generic telephony (rtp, sip, ...) is one 'app'."""
    if name in ("rtp", "sip", "RTP", "SRTP", "RTCP", "SIP"):
        return "sip/rtp"
    if name in ("webrtc", "stun", "dtls"):
        return "webrtc"
    return name


# --------------------------------------------------------------------------------------------
# Training and evaluation


def leave_one_app_out(ts: TrainingSet, lam: float, deployed_threshold: float | None = None) -> dict:
    """Each app's flows scored by a model trained without any flow of that app, with the threshold
    chosen (for precision) on the other apps' leave-one-app-out scores: how the model does on an
    app it has never seen. Call apps report recall; non-call apps report false calls. The sample
    size that matters is the number of distinct captures per app, not flows."""
    apps = np.array([e.app for e in ts.examples])
    told = _told(ts)
    oof = loco_scores(ts.X, ts.y, apps, lam)
    per_app, thresholds = {}, np.full(len(ts.y), np.nan)
    for a in np.unique(apps):
        test = np.flatnonzero(apps == a)
        rest = np.flatnonzero(apps != a)
        inner = loco_scores(ts.X, ts.y, apps, lam, rows=rest)
        t = choose_threshold(np.where(told, inner, np.nan)[rest], ts.y[rest])
        thresholds[test] = t
        test = test[told[test]]
        if not len(test):
            continue
        caps = sorted({ts.examples[i].capture for i in test})
        y, p = ts.y[test], oof[test]
        row = {"captures": len(caps), "threshold": round(float(t), 4)}
        if y.sum():
            found = int(np.sum((p >= t) & (y == 1)))
            row.update(media_flows=int(y.sum()), found=found, recall=round(found / int(y.sum()), 4),
                       media_captures=len({ts.examples[i].capture for i in test[y == 1]}))
            if deployed_threshold is not None:
                at = int(np.sum((p >= deployed_threshold) & (y == 1)))
                row.update(found_at_deployed_threshold=at, recall_at_deployed_threshold=round(at / int(y.sum()), 4))
        if (1 - y).sum():
            row.update(not_media_flows=int((1 - y).sum()), false_calls=int(np.sum((p >= t) & (y == 0))))
            if deployed_threshold is not None:
                row["false_calls_at_deployed_threshold"] = int(np.sum((p >= deployed_threshold) & (y == 0)))
        per_app[str(a)] = row
    ok = told & ~np.isnan(oof)
    total = _counts(oof[ok], ts.y[ok], thresholds[ok])
    with_media = {a: r for a, r in per_app.items() if "recall" in r}
    worst = min(with_media, key=lambda a: (with_media[a]["recall"], a)) if with_media else None
    out = {"method": "leave-one-app-out: each app's flows scored by a model fitted without that app; the "
                     "threshold chosen for precision on the other apps' leave-one-app-out scores (nested)",
           "apps": len(per_app), "captures": len({e.capture for e in ts.examples}), **total, "worst_app": worst,
           "worst_app_recall": with_media[worst]["recall"] if worst else None}
    if deployed_threshold is not None:
        at = _counts(oof[ok], ts.y[ok], deployed_threshold)
        out["at_deployed_threshold"] = {"threshold": round(float(deployed_threshold), 4), **at}
    out["per_app"] = dict(sorted(per_app.items()))
    return out


def _bootstrap(per_group: dict, rng: np.random.Generator, n: int = BOOTSTRAP) -> dict:
    """95 % intervals of precision / recall / F1 resampling captures (the unit of independence)."""
    names = sorted(per_group)
    c = np.array([[per_group[g]["tp"], per_group[g]["fp"], per_group[g]["fn"]] for g in names], dtype=float)
    idx = rng.integers(0, len(names), size=(n, len(names)))
    s = c[idx].sum(axis=1)
    tp, fp, fn = s[:, 0], s[:, 1], s[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
    q = lambda a: [round(float(np.quantile(a, 0.025)), 4), round(float(np.quantile(a, 0.975)), 4)]  # noqa: E731
    return {"precision": q(prec), "recall": q(rec), "f1": q(f1)}


def _clopper_pearson(k: int, n: int) -> list:
    """Exact 95 % interval of a binomial proportion k / n."""
    from scipy.stats import beta

    if n == 0:
        return [0.0, 1.0]
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return [round(lo, 4), round(hi, 4)]


def _told(ts: TrainingSet) -> np.ndarray:
    """Examples the deployed model scores (the others it calls "cannot tell")."""
    if ts.duration is None:
        return np.ones(len(ts.y), dtype=bool)
    return ts.duration >= MIN_DURATION_S


def evaluate(ts: TrainingSet, lam: float, seed: int) -> tuple[dict, float]:
    """Leave-one-capture-out evaluation -> (the "cv" report, the threshold for the final model)."""
    X, y, groups = ts.X, ts.y, ts.groups
    # Every example trains; the figures are for the flows the model scores (long enough to tell).
    told = _told(ts)
    oof = loco_scores(X, y, groups, lam)
    threshold = choose_threshold(np.where(told, oof, np.nan), y)
    # Nested: each capture's threshold chosen on the out-of-fold scores of the other captures,
    # those scores coming from models that never saw the held-out capture either.
    nested_t = np.full(len(y), np.nan)
    per_group = {}
    for g in np.unique(groups):
        test = np.flatnonzero(groups == g)
        rest = np.flatnonzero(groups != g)
        inner = loco_scores(X, y, groups, lam, rows=rest)
        t = choose_threshold(np.where(told, inner, np.nan)[rest], y[rest])
        nested_t[test] = t
        test = test[told[test]]
        if len(test):
            per_group[g] = _counts(oof[test], y[test], t)
    ok = ~np.isnan(oof) & told
    nested = _counts(oof[ok], y[ok], nested_t[ok])
    kinds = np.array([e.kind for e in ts.examples])
    flagged = ok & (oof >= np.nan_to_num(nested_t, nan=2.0))
    negatives_by_kind = {k: int(np.sum(ok & (kinds == k))) for k in (CALL_NO_MEDIA, NOT_CALL)}
    fp_by_kind = {k: int(np.sum(flagged & (kinds == k))) for k in (CALL_NO_MEDIA, NOT_CALL)}
    tp_n = nested["tp"]
    rng = np.random.default_rng(seed)
    misses = [{"capture": str(groups[i]), "flow": ts.examples[i].flow, "label": ts.examples[i].label,
               "kind": ts.examples[i].kind, "p": round(float(oof[i]), 4), "threshold": round(float(nested_t[i]), 4)}
              for i in np.flatnonzero(ok) if (oof[i] >= nested_t[i]) != (y[i] == 1)]
    from scipy.stats import rankdata
    pos, neg = oof[ok & (y == 1)], oof[ok & (y == 0)]
    ranks = rankdata(np.concatenate([pos, neg]))[:len(pos)]
    auc = (ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    cv = {
        "method": "leave-one-capture-out: every capture's flows scored by a model fitted without that capture",
        "captures": int(len(np.unique(groups))),
        "cannot_tell": {"what": f"flows under {MIN_DURATION_S:g} s: trained on, but the model does not score them",
                        "media": int(np.sum(~told & (y == 1))), "not_media": int(np.sum(~told & (y == 0)))},
        "roc_auc": round(float(auc), 4),
        "log_loss": round(_log_loss(oof[ok], y[ok], np.ones(ok.sum())), 4),
        "nested_threshold": {
            "what": (f"threshold chosen inside each fold (precision >= {TARGET_PRECISION} on the other captures' "
                     "out-of-fold scores): honest out-of-sample figures"),
            **nested,
            "threshold_range": [round(float(np.nanmin(nested_t)), 4), round(float(np.nanmax(nested_t)), 4)],
            "precision_ci95_exact": _clopper_pearson(nested["tp"], nested["tp"] + nested["fp"]),
            "recall_ci95_exact": _clopper_pearson(nested["tp"], nested["tp"] + nested["fn"]),
            "negatives_by_kind": negatives_by_kind,
            "negatives_above_rate_gate": int(np.sum(ok & passes_gate(X) & (y == 0))),
            "false_positives_by_kind": fp_by_kind,
            "precision_against_non_call_flows": round(tp_n / max(tp_n + fp_by_kind[NOT_CALL], 1), 4),
            "false_positive_rate": round(nested["fp"] / max(nested["fp"] + nested["tn"], 1), 4),
            "false_positive_rate_ci95_exact": _clopper_pearson(nested["fp"], nested["fp"] + nested["tn"]),
            "ci95_bootstrap_captures": _bootstrap(per_group, rng),
            "note": ("exact intervals treat flows as independent; the bootstrap resamples captures; with few "
                     "negatives no interval can rule out a false-positive rate of a few per cent"),
        },
        "at_model_threshold": {
            "what": "the model's threshold, chosen on these same out-of-fold scores (optimistic)",
            "threshold": round(threshold, 4),
            **_counts(oof[ok], y[ok], threshold),
        },
        "at_0.5": _counts(oof[ok], y[ok], 0.5),
        "errors_nested": misses,
    }
    return cv, threshold


def train(corpus: Path, captures: Path | None, seed: int = 0, recipe: str | None = None,
          lambdas: Sequence[float] = LAMBDAS, vca: bool = False) -> MediaModel:
    """Gather the training set, pick the L2 strength, evaluate, fit the final model."""
    ts = gather_training_set(Path(corpus), Path(captures) if captures else None, vca)
    if ts.y.sum() < 2 or (1 - ts.y).sum() < 2:
        raise ValueError(f"too few examples to train on ({int(ts.y.sum())} media, {int((1 - ts.y).sum())} not): "
                         f"is {corpus} the corpus?")
    told = _told(ts)
    w = np.ones(int(told.sum()))
    losses = {lam: _log_loss(loco_scores(ts.X, ts.y, ts.groups, lam)[told], ts.y[told], w) for lam in lambdas}
    lam = min(lambdas, key=lambda v: (round(losses[v], 12), v))
    cv, threshold = evaluate(ts, lam, seed)
    cv["lambda_selection"] = {str(k): round(v, 4) for k, v in losses.items()}
    cv["leave_one_app_out"] = leave_one_app_out(ts, lam, threshold)
    fit = passes_gate(ts.X)
    mean, scale, coef, b = fit_logistic(ts.X[fit], ts.y[fit], _balanced_weights(ts.y[fit]), lam)
    cv["gated"] = {"what": f"flows under {MEDIA_MIN_RATE:g} packets/s: p = 0 by the gate, not fitted on",
                   "count": int(np.sum(~fit)), "media_among_them": int(np.sum(ts.y[~fit]))}
    trained = {
        "date": datetime.date.today().isoformat(),
        "corpus": ("../shared/corpus (ndpi/pcap + ndpi/labels, external/" + (", vca-sense/" if vca else "")
                   + ") and captures/ (MANIFEST.json)"),
        "recipe": recipe or f"throttledetect train --seed {seed}",
        "seed": int(seed),
        "n_positive": int(ts.y.sum()),
        "n_negative": int((1 - ts.y).sum()),
        "captures": sorted(set(ts.groups.tolist())),
        "cv": cv,
        "lambda": lam,
        "labels": ("positive (call media): UDP flows whose nDPI label maps (evaluate.agreement.ndpi_to_ours) to a "
                   "call label other than signalling (sip/h323/mgcp/megaco/skinny), the external captures' flows our "
                   "signature classifier names a call (confidence >= 0.85), the testbed's audio/video flows; "
                   f"negative: call flows without media (signalling; call-labelled flows that are over "
                   f"{STUN_SHARE_MAX:.0%} STUN or average under {MEDIA_MIN_RATE:g} packets/s: checks and keepalives) "
                   "and UDP flows labelled anything else (QUIC, DNS, games, VPNs, BitTorrent...), the testbed's UDP "
                   f"control flow; left out: nDPI Unknown, bare STUN/DTLS, flows under {MIN_PACKETS} packets"),
        "excluded": dict(sorted(ts.excluded.items())),
        "flows": [{"capture": e.capture, "flow": e.flow, "label": e.label, "kind": e.kind, "y": e.y, "app": e.app}
                  for e in ts.examples],
    }
    return MediaModel(FEATURES, mean, scale, coef, b, threshold, MEDIA_MIN_RATE, MIN_DURATION_S, trained)


def write_model(model: MediaModel, path: Path) -> None:
    doc = model.to_json()
    parse_media_model(json.loads(json.dumps(doc)), str(path))   # what we write must load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
