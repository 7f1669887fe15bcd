"""Runner: base x scenario x seed -> impaired capture -> analyze_capture -> a stored record.

Each trial builds its scenario's stages with a generator seeded by (scenario, base, seed index),
runs the network model (network.run), reads the impaired capture back, analyses it exactly as
``throttledetect analyze`` does (``pipeline.analyze_capture`` then ``pipeline.to_document``) and
stores: the realised truth (per target flow: kind, measured drop fraction, realised rate and
queue, onset; every stage's realised parameters), and the document's entries for the call flows,
the targets, every other flow with a detection, and every protocol line — whole, with all their
detections, so that scoring (and rescoring under other thresholds) never needs a rerun.

Trials run in a process pool (spawn; each worker prepares a base the first time it needs it and
keeps it). The real-limit check (corpus/vca-sense) runs in the same pool: each capture analysed as
it is, flagged or not.
"""
from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import re
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np

from throttledetect.validate import bases as B
from throttledetect.validate import network as nw
from throttledetect.validate.scenarios import BY_NAME, KINDS

SCHEMA = "throttledetect-validate/2"
DEFAULT_SEEDS = 10
DEFAULT_JOBS = 2
NICE = 10
VCA_DIR = "vca-sense"

_SPECS: dict = {}
_BASES: dict = {}
_SECONDS = [B.LOOP_SECONDS]


def _init_worker(specs: list, seconds: float, nice: int) -> None:
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    _SPECS.clear()
    _SPECS.update({s["id"]: B.BaseSpec(**s) for s in specs})
    _BASES.clear()
    _SECONDS[0] = float(seconds)


def base(bid: str) -> B.Base:
    if bid not in _BASES:
        _BASES[bid] = B.prepare(_SPECS[bid], _SECONDS[0])
    return _BASES[bid]


def trial_rng(scenario: str, bid: str, i: int) -> np.random.Generator:
    """Every (scenario, base, seed index) its own stream: a seed changes drop positions, onsets,
    rate factors, bursts, jitter ..."""
    return np.random.default_rng([zlib.crc32(scenario.encode()), zlib.crc32(bid.encode()), int(i)])


def _label(ft, f: int) -> str:
    return f"{ft.endpoint(f, 'a')} <-> {ft.endpoint(f, 'b')}"


def _touched(trial: nw.Trial) -> set:
    """Flows any stage changed: lost, delayed, not sent, cut, rewritten."""
    fl = trial.flow
    ch = trial.lost | trial.lost_beyond | ~trial.sent | trial.cut | (trial.t != trial.t_sent)
    out = set(np.unique(fl[ch & (fl >= 0)]).tolist())
    if trial.buf is not None:
        sc = trial.scene
        t = sc.cap.packets
        # bytes rewritten (skew, SSRC, migration, RTCP reports, renumbering): compare frames
        diff = np.flatnonzero(trial.buf != sc.cap.buffer)
        if len(diff):
            row = np.searchsorted(t.frame_off.astype(np.int64), diff, side="right") - 1
            out |= set(np.unique(sc.flow[np.unique(row)]).tolist()) - {-1}
    return out


def run_trial(bid: str, scenario: str, i: int) -> dict:
    """One trial (see the module doc). Never raises: a failure is a record with "error"."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    sc = BY_NAME[scenario]
    rec = {"base": bid, "app": _SPECS[bid].app if bid in _SPECS else None, "scenario": scenario, "group": sc.group,
           "seed_index": int(i)}
    try:
        b = base(bid)
        rng = trial_rng(scenario, bid, i)
        stages, params = sc.build(b, rng)
        trial = nw.run(b.scene, stages, rng)
        cap = trial.capture(f"{scenario} #{i}")
        rec.update(params=params, stages=trial.truth)
        rec["truth"] = _truth(b, sc, trial, params)
        if cap is None:       # nothing left to capture: no flow, no verdict
            rec.update(flows=[], protocols=[], packets=0, empty_capture=True)
        else:
            rec.update(_analyse(b, sc, trial, cap))
    except Exception as exc:   # noqa: BLE001 - one failed trial is reported, not fatal to the run
        import traceback
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    rec["seconds"] = round(time.perf_counter() - t_start, 3)
    rec["cpu_s"] = round(time.process_time() - cpu_start, 3)
    return rec


def _truth(b: B.Base, sc, trial: nw.Trial, params: dict) -> dict:
    ft = b.scene.ft
    onset = params.get("onset_s") or 0.0
    direction = params.get("direction", "to-local")
    meas = trial.measure(b.targets, onset, direction)
    rates = params.get("rate_bps") or {}
    targets = []
    for f in b.targets:
        m = meas[int(f)]
        targets.append({"flow": _label(ft, f), "label": b.scene.cl.labels[f], "kind": sc.kind,
                        "rate_bps": round(float(rates[f]), 1) if f in rates else None,
                        "queue_bytes": params.get("queue_bytes"), "onset_s": params.get("onset_s"), **m})
    # Without a control flow that could show selectivity and without an onset, a drop is a lossy
    # path as far as anyone can tell (issue 10, item 1); on a one-way base a block looks like the
    # far end hanging up (the local host sends nothing that could go unanswered). Such trials
    # may end inconclusive and stay out of the found goal.
    undecidable = (sc.group == "drop" and not params.get("onset_s") and not b.controls) or \
        (sc.group == "block" and b.spec.kind == "one-way")
    return {"kind": sc.kind, "expected": list(sc.right), "counts": bool(sc.counts and not undecidable),
            "acceptable_inconclusive": bool(undecidable), "controls": len(b.controls),
            "targets": targets, "shared_rate": params.get("per") == "host"}


def _analyse(b: B.Base, sc, trial: nw.Trial, cap) -> dict:
    from throttledetect.pipeline import analyze_capture, to_document
    from throttledetect.classify.labels import is_call
    a = analyze_capture(cap)
    doc = to_document([a], include_metrics=False)
    inv: dict = {}
    for f, k in b.keys.items():
        inv.setdefault(k, f)
    touched = _touched(trial)
    targets = set(int(f) for f in b.targets)
    flows = []
    for j, e in enumerate(doc["flows"]):
        f = inv.get(B.flow_key(a.flows, j))
        if f in targets:
            role = "target"
        elif f is None:
            role = "new"                  # a flow the trial made (a migrated call)
        elif f in touched:
            role = "touched"
        else:
            role = "bystander"
        call = is_call(e.get("protocol", "")) or (f is not None and f in b.calls)
        if role in ("target", "new") or call or e.get("detections") or e.get("verdict") not in (None, "none"):
            flows.append(dict(e, trial_role=role, call=bool(call), base_flow=None if f is None else _label(b.scene.ft, f)))
    return {"flows": flows, "protocols": doc["protocols"], "packets": int(len(cap.packets))}


# --------------------------------------------------------------------------- vca-sense

LIMIT = re.compile(r"limit_(\d+(?:p\d+)?)KB")


def vca_truth(name: str) -> dict:
    m = LIMIT.search(name)
    if m:
        return {"limited": True, "limit_kBps": float(m.group(1).replace("p", "."))}
    return {"limited": False, "limit_kBps": None}


def run_vca(path: str) -> dict:
    """One real-limit capture analysed as it is: flagged = any throttling verdict on a flow or a
    protocol line."""
    from throttledetect.pipeline import analyze_capture, to_document
    t_start = time.perf_counter()
    name = Path(path).name
    rec = {"file": name, **vca_truth(name)}
    try:
        a = analyze_capture(path)
        doc = to_document([a], include_metrics=False)
        thr = [e for e in doc["flows"] if e.get("verdict") in KINDS]
        rec["protocols"] = [{k: p.get(k) for k in ("protocol", "flows", "verdict", "kinds", "summary", "rate_bps")}
                            for p in doc["protocols"]]
        rec["throttled_flows"] = [{"flow": f"{e['a']} <-> {e['b']}", "protocol": e.get("protocol"),
                                   "verdict": e.get("verdict")} for e in thr]
        rec["verdicts"] = sorted({p["verdict"] for p in doc["protocols"] if p.get("verdict")})
        rec["flagged"] = bool(thr) or any(p.get("verdict") in KINDS for p in doc["protocols"])
        rec["flows"] = len(doc["flows"])
        rec["tested"] = sum(1 for e in doc["flows"] if e.get("detections"))
    except Exception as exc:   # noqa: BLE001
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["seconds"] = round(time.perf_counter() - t_start, 3)
    return rec


# --------------------------------------------------------------------------- the run

def plan(specs: list, scenarios, seeds: int, prepared: dict) -> tuple[list, list]:
    """Tasks (base id, scenario, seed index) and the (base, scenario, why) pairs left out."""
    tasks, skipped = [], []
    for s in specs:
        b = prepared[s.id]
        for sc in scenarios:
            why = sc.applies(b)
            if why:
                skipped.append({"base": s.id, "scenario": sc.name, "why": why})
                continue
            n = 1 if sc.deterministic else seeds
            tasks += [(s.id, sc.name, i) for i in range(n)]
    return tasks, skipped


def _call(task):
    return run_trial(*task)


def run(corpus: Path | None, scenarios, *, seeds: int = DEFAULT_SEEDS, jobs: int = DEFAULT_JOBS,
        base_filter: str | None = None, seconds: float = B.LOOP_SECONDS, vca: bool = True, nice: int = NICE,
        progress=None, hidden: bool = False) -> dict:
    """Discover the bases, run every applicable trial (and the vca-sense check), return the result
    document (schema SCHEMA; see docs/validation.md)."""
    import multiprocessing as mp
    corpus = Path(corpus) if corpus is not None else B.default_corpus()
    t0 = time.perf_counter()
    specs, found = B.discover(corpus)
    if base_filter:
        want = [w.strip() for w in base_filter.split(",") if w.strip()]
        specs = [s for s in specs if any(w in s.id or w == s.app for w in want)]
    if hidden:
        specs = B.hidden_twins(specs)
    if not specs:
        raise B.CorpusMissing(f"no base found (corpus {corpus}{', filter ' + base_filter if base_filter else ''}): "
                              f"the harness needs call captures (../shared/corpus, --corpus DIR or "
                              f"$THROTTLEDETECT_CORPUS)")
    spec_dicts = [s.__dict__ for s in specs]
    # the parent prepares every base once to plan (applicability) and to report what it holds
    _init_worker(spec_dicts, seconds, 0)
    prepared = {s.id: base(s.id) for s in specs}
    tasks, skipped = plan(specs, scenarios, seeds, prepared)
    vca_files = sorted(str(p) for p in (corpus / VCA_DIR).glob("*.pcap*")) if vca and (corpus / VCA_DIR).is_dir() else []
    work = [("trial", t) for t in tasks] + [("vca", p) for p in vca_files]
    records, vca_recs = [], []
    done = 0
    if jobs <= 1:
        if nice:
            _init_worker(spec_dicts, seconds, nice)
            _BASES.update(prepared)
        for kind, item in work:
            (records if kind == "trial" else vca_recs).append(_do((kind, item)))
            done += 1
            if progress:
                progress(done, len(work), time.perf_counter() - t0)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(spec_dicts, seconds, nice)) as pool:
            # vca-sense first (the longest items), then trials grouped by base (a worker prepares a
            # base once)
            order = [w for w in work if w[0] == "vca"] + [w for w in work if w[0] == "trial"]
            for kind, rec in pool.imap_unordered(_do_tagged, order, chunksize=1):
                (records if kind == "trial" else vca_recs).append(rec)
                done += 1
                if progress:
                    progress(done, len(work), time.perf_counter() - t0)
    key = {(s.id, sc.name): (a, b) for a, s in enumerate(specs) for b, sc in enumerate(scenarios)}
    records.sort(key=lambda r: (key[(r["base"], r["scenario"])][1], key[(r["base"], r["scenario"])][0],
                                r["seed_index"]))
    vca_recs.sort(key=lambda r: r["file"])
    return {"schema": SCHEMA, "meta": dict(meta(seeds, jobs, seconds, corpus, time.perf_counter() - t0, records),
                                           hidden_rtp=hidden),
            "bases": [prepared[s.id].info | {"spec": s.__dict__} for s in specs],
            "discovery": [dict(d, base=d["base"]["app"] if d["base"] else None) for d in found],
            "scenarios": [s.describe() for s in scenarios], "skipped": skipped,
            "trials": records, "vca_sense": vca_recs}


def _do(item):
    kind, x = item
    return run_trial(*x) if kind == "trial" else run_vca(x)


def _do_tagged(item):
    return item[0], _do(item)


def meta(seeds, jobs, seconds, corpus, runtime, records) -> dict:
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seeds": seeds, "jobs": jobs,
            "seconds": seconds, "corpus": str(corpus), "git_head": git_head(), "detectors_sha256": detector_fingerprint(),
            "runtime_s": round(runtime, 1), "trial_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in records), 1),
            "trials": len(records), "failed": sum(1 for r in records if r.get("error"))}


def detector_fingerprint() -> str:
    """sha256 (12 hex digits) of the sources that decide verdicts (detect/, streams/, verdicts.py, pipeline)."""
    import hashlib
    h = hashlib.sha256()
    root = B.REPO / "throttledetect"
    files = sorted((root / "detect").glob("*.py")) + sorted((root / "streams").glob("*.py"))
    files += [p for p in (root / "verdicts.py", root / "pipeline.py") if p.exists()]
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def git_head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(B.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save(result: dict, path) -> None:
    """JSON, gzip-compressed when the name ends in .gz."""
    from throttledetect.report.jsonout import json_default
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        json.dump(result, f, default=json_default)
        f.write("\n")


def load(path) -> dict:
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)
