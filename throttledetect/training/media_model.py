"""Training of the media-pattern model (classify/media_model.py holds the features and inference).

Kept apart from classification so that classifying never imports the training set's sources
(the nDPI label parser in evaluate/, the corpus walk): data flows one way, classify -> evaluate
is not a dependency. ``throttledetect train`` (commands/train.py) calls ``train`` and
``write_model``; the method and the measured figures are in models/README.md.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from throttledetect.classify.media_model import (  # features, constants and the model type it fits
    AMBIGUOUS, BOOTSTRAP, FEATURES, LAMBDAS, MEDIA_MIN_RATE, MIN_DURATION_S, MIN_PACKETS, MediaModel,
    SIGNALLING, STUN_SHARE_MAX, TARGET_PRECISION, UDP, _sigmoid, flow_stats, parse_media_model,
    stun_share,
)



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
