"""Scoring: per-trial outcomes, leave-one-app-out calibration, intervals over base traces.

Per trial (``outcome``):

- throttling trials: the trial's verdict combines the target flows' verdicts and the protocol
  lines of their labels (precedence blocking > policing > shaping > dropping > inconclusive >
  none, as the detectors combine kinds). *found* = it is a throttling kind; *right kind* = it is
  one of the scenario's expected verdicts; *inconclusive* = not found and some target or line is
  inconclusive; *false throttling on bystanders* = a flow no stage touched has a throttling
  verdict; *rate error* = |estimate - truth| / truth for policing/shaping found right, per target
  flow (the shared rate for a bucket shared per host), median over the targets.
- confounder trials: *false throttling* = any throttling verdict on a call flow (as classified
  in the impaired capture, or a call flow of the base, or a flow the trial created) or on a call
  protocol line; *inconclusive* = none of those but something inconclusive.

Leave-one-app-out (``calibrate``): for each app A, the grid point (calibration.grid()) that finds
the most of the OTHER apps' counted throttling trials while false throttling on the other apps'
counted confounder trials stays <= FP_LIMIT; A's row is then measured at that point. With no grid
exposed the one point is the detectors as they are.

Sample sizes: trials of one base are not independent (one call, one path, one app build), so
intervals count bases, not seeds: per app a Wilson interval with n = the number of distinct bases
(the trial rate as the estimate); pooled over apps a cluster bootstrap over bases.
"""
from __future__ import annotations

import numpy as np

from throttledetect.classify.labels import is_call
from throttledetect.validate import calibration

KINDS = ("shaping", "policing", "dropping", "blocking")
PRECEDENCE = ("blocking", "policing", "shaping", "dropping", "inconclusive", "none", "untested")
FP_LIMIT = 0.01
THROTTLING_GROUPS = ("drop", "police", "shape", "block", "uplink")
CONFOUNDER_GROUPS = ("clean", "path", "endpoint", "capture")
BOOTSTRAP = 2000


def combine(verdicts) -> str:
    vs = [v for v in verdicts if v]
    for k in PRECEDENCE:
        if k in vs:
            return k
    return "none"


def _entries(rec: dict) -> dict:
    return {"flows": rec.get("flows", []), "protocols": rec.get("protocols", [])}


def _rate_estimate(e: dict, kind: str, shared: bool):
    for d in e.get("detections") or []:
        if d.get("kind") == kind and d.get("decision") == "detected":
            est = d.get("estimates") or {}
            if shared and est.get("host_pair_rate_bps"):
                return float(est["host_pair_rate_bps"])
            if d.get("rate_bps"):
                return float(d["rate_bps"])
            if est.get("rate_bps"):
                return float(est["rate_bps"])
    return None


def outcome(rec: dict, entries: dict | None = None) -> dict:
    """The scored outcome of one stored trial (entries: rescored flows/protocols, default the
    stored ones)."""
    entries = entries or _entries(rec)
    truth = rec.get("truth") or {}
    flows, protos = entries["flows"], entries["protocols"]
    out = {"base": rec["base"], "app": rec["app"], "scenario": rec["scenario"], "group": rec["group"],
           "error": bool(rec.get("error")), "counts": bool(truth.get("counts")),
           "acceptable_inconclusive": bool(truth.get("acceptable_inconclusive"))}
    if rec.get("error"):
        return out
    if truth.get("kind", "none") != "none":
        targets = [e for e in flows if e.get("trial_role") == "target"]
        labels = {e.get("protocol") for e in targets}
        tv = [e.get("verdict") for e in targets]
        pv = [p.get("verdict") for p in protos if p.get("protocol") in labels]
        verdict = combine(tv + pv)
        out.update(throttling=True, verdict=verdict, found=verdict in KINDS,
                   right=verdict in truth.get("expected", ()),
                   inconclusive=verdict == "inconclusive",
                   fp_bystander=any(e.get("verdict") in KINDS for e in flows if e.get("trial_role") == "bystander"))
        if out["right"] and verdict in ("policing", "shaping"):
            want = {t["flow"]: t.get("rate_bps") for t in truth.get("targets", []) if t.get("rate_bps")}
            errs = []
            for e in targets:
                true = want.get(e.get("base_flow"))
                est = _rate_estimate(e, verdict, bool(truth.get("shared_rate")))
                if true and est:
                    errs.append(abs(est - true) / true)
            if not errs:
                lines = [p.get("rate_bps") for p in protos if p.get("protocol") in labels and p.get("rate_bps")]
                if lines and want:
                    true = sum(want.values()) if truth.get("shared_rate") else float(np.median(list(want.values())))
                    errs.append(abs(float(lines[0]) - true) / true)
            out["rate_error"] = float(np.median(errs)) if errs else None
            out["rate_kind"] = verdict
    else:
        calls = [e for e in flows if e.get("call") or e.get("trial_role") in ("target", "new")]
        lines = [p for p in protos if is_call(p.get("protocol", ""))]
        vs = [e.get("verdict") for e in calls] + [p.get("verdict") for p in lines]
        fp = [v for v in vs if v in KINDS]
        out.update(throttling=False, verdict=combine(vs), fp=bool(fp), fp_kinds=sorted(set(fp)),
                   inconclusive=not fp and "inconclusive" in vs)
    return out


# --------------------------------------------------------------------------- intervals

def wilson(p: float, n: float, z: float = 1.959964) -> list | None:
    """95 % Wilson score interval of a rate p over an effective sample of n (may be fractional)."""
    if n <= 0 or p is None:
        return None
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, float(centre - half)), min(1.0, float(centre + half))]


def cluster_bootstrap(k_by_base: dict, n_by_base: dict, seed: int = 0, reps: int = BOOTSTRAP) -> list | None:
    """95 % percentile interval of sum(k) / sum(n) resampling whole bases with replacement."""
    ids = [b for b in n_by_base if n_by_base[b] > 0]
    if len(ids) < 2:
        return None
    k = np.array([k_by_base.get(b, 0) for b in ids], dtype=float)
    n = np.array([n_by_base[b] for b in ids], dtype=float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(reps, len(ids)))
    rates = k[pick].sum(axis=1) / np.maximum(n[pick].sum(axis=1), 1e-12)
    return [float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))]


def proportion(items: list, pred, *, pooled: bool = False) -> dict:
    """k/n trials, the number of distinct bases B, the rate, and its interval (Wilson with n = B;
    pooled over apps: cluster bootstrap over bases)."""
    n = len(items)
    k = sum(1 for o in items if pred(o))
    bases = sorted({o["base"] for o in items})
    rate = k / n if n else None
    if pooled:
        kb: dict = {}
        nb: dict = {}
        for o in items:
            nb[o["base"]] = nb.get(o["base"], 0) + 1
            kb[o["base"]] = kb.get(o["base"], 0) + (1 if pred(o) else 0)
        ci = cluster_bootstrap(kb, nb)
        method = "cluster bootstrap over bases"
    else:
        ci = wilson(rate, len(bases)) if n else None
        method = "Wilson, n = bases"
    return {"k": k, "n": n, "bases": len(bases), "rate": rate, "ci": ci, "method": method}


def _quantiles(xs: list) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(xs), "median": float(np.median(xs)), "p90": float(np.quantile(xs, 0.9))}


def summarise(outs: list, *, pooled: bool = False) -> dict:
    """Found / right kind / inconclusive / false throttling / rate errors over a set of outcomes."""
    ok = [o for o in outs if not o["error"]]
    thr = [o for o in ok if o.get("throttling") and o["counts"]]
    apart = [o for o in ok if o.get("throttling") and not o["counts"]]
    conf = [o for o in ok if o.get("throttling") is False and o["counts"]]
    found = [o for o in thr if o["found"]]
    return {
        "trials": len(outs), "errors": len(outs) - len(ok),
        "found": proportion(thr, lambda o: o["found"], pooled=pooled),
        "right_kind": proportion(found, lambda o: o["right"], pooled=pooled),
        "inconclusive": proportion(thr, lambda o: o["inconclusive"], pooled=pooled),
        "fp_bystander": proportion(thr + apart, lambda o: o["fp_bystander"], pooled=pooled),
        "false_throttling": proportion(conf, lambda o: o["fp"], pooled=pooled),
        "confounder_inconclusive": proportion(conf, lambda o: o["inconclusive"], pooled=pooled),
        "not_counted": {"n": len(apart), "found": sum(o["found"] for o in apart),
                        "inconclusive": sum(o["inconclusive"] for o in apart),
                        "none": sum(o["verdict"] == "none" for o in apart)},
        "rate_error": {k: _quantiles([o.get("rate_error") for o in found if o.get("rate_kind") == k])
                       for k in ("policing", "shaping")},
        "kinds": _count(o["verdict"] for o in thr),
        "fp_kinds": _count(k for o in conf for k in o.get("fp_kinds", [])),
    }


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- calibration

def outcomes_at(records: list, overrides: dict) -> list:
    if not overrides:
        return [outcome(r) for r in records]
    return [outcome(r, calibration.rescore(_entries(r), overrides)) if not r.get("error") else outcome(r)
            for r in records]


def calibrate(records: list, grid: list | None = None) -> dict:
    """Leave-one-app-out: {"grid": [...], "choice": {app: grid index}, "outcomes": per record
    outcome at its own app's choice, "why": {app: text}}."""
    grid = grid if grid is not None else calibration.grid()
    cache: dict = {}

    def at(gi: int) -> list:
        if gi not in cache:
            cache[gi] = outcomes_at(records, grid[gi])
        return cache[gi]

    apps = sorted({r["app"] for r in records})
    choice, why = {}, {}
    # the shipped defaults are the point chosen on every app (the row of each app is measured at
    # the point chosen without it); None = all apps
    for app in apps + [None]:
        best, best_key, text = 0, None, ""
        for gi in range(len(grid)):
            others = [o for o in at(gi) if o["app"] != app and not o["error"] and o["counts"]]
            thr = [o for o in others if o.get("throttling")]
            conf = [o for o in others if o.get("throttling") is False]
            det = sum(o["found"] for o in thr) / len(thr) if thr else 0.0
            fp = sum(o["fp"] for o in conf) / len(conf) if conf else 0.0
            key = (fp <= FP_LIMIT, det if fp <= FP_LIMIT else -fp, -gi)
            if best_key is None or key > best_key:
                best, best_key = gi, key
                text = (f"found {det:.3f} on {len(thr)} other-app trials, false throttling {fp:.3f} on "
                        f"{len(conf)}" + ("" if fp <= FP_LIMIT else f" (no point meets <= {FP_LIMIT})"))
        choice[app], why[app] = best, text
    all_apps = choice.pop(None)
    why_all = why.pop(None)
    outs = []
    for i, r in enumerate(records):
        outs.append(at(choice[r["app"]])[i])
    return {"grid": grid, "choice": choice, "why": why, "outcomes": outs, "all_apps": all_apps,
            "why_all_apps": why_all}


def score(result: dict) -> dict:
    """Everything the tables show, from a stored result (rescoring needs no rerun)."""
    records = result["trials"]
    cal = calibrate(records)
    outs = cal["outcomes"]
    apps = sorted({o["app"] for o in outs})
    per_app = {a: summarise([o for o in outs if o["app"] == a]) for a in apps}
    groups = list(dict.fromkeys(o["group"] for o in outs))
    per_group = {(a, g): summarise([o for o in outs if o["app"] == a and o["group"] == g])
                 for a in apps for g in groups if any(o["app"] == a and o["group"] == g for o in outs)}
    pooled = summarise(outs, pooled=True)
    # what `analyze` does out of the box: every trial decided at the shipped defaults (named, not
    # the stored verdicts: a stored run rescored after the defaults changed is decided at today's)
    from throttledetect import verdicts
    shipped_outs = outcomes_at(records, dict(verdicts.DEFAULTS))
    shipped = {a: summarise([o for o in shipped_outs if o["app"] == a]) for a in apps}
    shipped_pooled = summarise(shipped_outs, pooled=True)
    pooled_group = {g: summarise([o for o in outs if o["group"] == g], pooled=True) for g in groups}
    bases = {}
    for o in outs:
        bases.setdefault(o["app"], set()).add(o["base"])

    def worst(metric, lowest=True):
        c = [(a, s[metric]) for a, s in per_app.items() if s[metric]["n"]]
        if not c:
            return None
        a, p = (min if lowest else max)(c, key=lambda x: x[1]["rate"])
        return {"app": a, **p}

    vca = result.get("vca_sense") or []
    lim = [v for v in vca if v.get("limited") and not v.get("error")]
    unl = [v for v in vca if not v.get("limited") and not v.get("error")]
    return {"apps": apps, "bases": {a: sorted(b) for a, b in bases.items()}, "per_app": per_app,
            "per_group": per_group, "groups": groups, "pooled": pooled, "pooled_group": pooled_group,
            "shipped": {"per_app": shipped, "pooled": shipped_pooled},
            "worst": {"found": worst("found"), "right_kind": worst("right_kind"),
                      "false_throttling": worst("false_throttling", lowest=False)},
            "calibration": {"grid_points": len(cal["grid"]), "from_detectors": calibration.available(),
                            "choice": {a: cal["grid"][i] for a, i in cal["choice"].items()}, "why": cal["why"],
                            "all_apps": cal["grid"][cal["all_apps"]], "why_all_apps": cal["why_all_apps"]},
            "vca": {"limited_flagged": [sum(v["flagged"] for v in lim), len(lim)],
                    "unlimited_flagged": [sum(v["flagged"] for v in unl), len(unl)], "captures": vca},
            "outcomes": outs}
