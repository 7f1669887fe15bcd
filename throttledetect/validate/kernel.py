"""Real-kernel rows of the validation: the corpus's call traces replayed packet for packet through the
kernel's own throttling (network namespaces, veth, tbf/htb/pfifo; testbed/replay.py), captured with
tcpdump on the calling host, and analysed as a user would analyse that capture.

The simulator's network model (validate/network.py) is independent of the detectors, but it is still
a model; here the policer, the shaper and the queue are Linux's, the timing is a real machine's, and
the capture is tcpdump's. Rows are fewer (each trial takes its real time) and say so.

A trial is scored on the flows the replay throttled (truth["throttled_flows"]) when it throttled
something, else on every call flow (false throttling), as validate/score.py scores the simulator's.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from throttledetect import verdicts

THROTTLING = set(verdicts.PRECEDENCE)


@dataclass(frozen=True)
class KernelScenario:
    name: str
    spec: dict              # testbed.replay.ReplaySpec fields (the loop length is added per run)


SCENARIOS = (
    KernelScenario("none", {"kind": "none"}),
    KernelScenario("police 0.7x (tbf, 20 ms bucket, 1-packet queue)", {"kind": "police", "rate_factor": 0.7}),
    KernelScenario("police 0.5x (tbf, 20 ms bucket, 1-packet queue)", {"kind": "police", "rate_factor": 0.5}),
    KernelScenario("shape 0.7x (tbf, 200 ms queue)", {"kind": "shape", "rate_factor": 0.7, "queue_s": 0.2}),
    KernelScenario("htb 0.7x (50-packet pfifo)", {"kind": "htb", "rate_factor": 0.7}),
    KernelScenario("block after 15 s (pfifo limit 0)", {"kind": "block", "block_after_s": 15.0}),
)


def available() -> tuple[bool, str]:
    """Can this machine replay (root, ip, tc, tcpdump)?"""
    if os.geteuid() != 0:
        return False, "the real-kernel rows need root (network namespaces)"
    from throttledetect.testbed.replay_net import tool_availability
    return tool_availability()


def run_trial(args) -> dict:
    """One replay and its analysis (runs in a worker process)."""
    base_id, app, path, scen_name, spec, seconds = args
    from throttledetect.pipeline import analyze_capture, to_document
    from throttledetect.testbed.replay import replay_trial
    out_dir = tempfile.mkdtemp(prefix="throttledetect-kernel-")
    try:
        try:
            out, truth = replay_trial(path, dict(spec, loop_s=seconds), None, seed=1, out_dir=out_dir)
        except Exception as exc:     # noqa: BLE001 - a replay that cannot be made is a row that says why
            return {"base": base_id, "app": app, "scenario": scen_name, "error": f"replay: {exc}"}
        doc = to_document([analyze_capture(out, with_metrics=False)], include_metrics=False)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    throttled = {frozenset((f["local"], f["remote"])) for f in truth["throttled_flows"]}
    flows = []
    for f in doc["flows"]:
        if not f.get("tested"):
            continue
        key = frozenset((f["a"], f["b"]))
        flows.append({"id": f["id"], "protocol": f["protocol"], "verdict": f["verdict"],
                      "reason": f.get("verdict_reason", ""), "throttled": key in throttled,
                      "rate_bps": next((d.get("rate_bps") for d in f["detections"]
                                        if d["kind"] == f["verdict"] and d.get("decision") == "detected"), None)})
    measured = [f for f in truth["measured"]["flows"] if f["throttled"]]
    lost = [f["measured"].get("to-local", {}).get("drop_fraction_after_onset") for f in measured]
    added = [f["measured"].get("to-local", {}).get("delay_added_ms_p50") for f in measured]
    return {"base": base_id, "app": app, "scenario": scen_name, "expected": truth["expected_verdict"],
            "throttle": truth.get("throttle"), "flows": flows,
            "lost_after_onset": [x for x in lost if x is not None],
            "delay_added_ms": [x for x in added if x is not None]}


def score_trial(r: dict) -> dict:
    """found / right kind / false throttling of one trial (None where it does not apply)."""
    if "error" in r:
        return {"error": r["error"]}
    if r["expected"] == "none":
        fp = any(f["verdict"] in THROTTLING for f in r["flows"])
        return {"false_throttling": fp, "verdicts": sorted({f["verdict"] for f in r["flows"]})}
    target = [f for f in r["flows"] if f["throttled"]]
    got = [f["verdict"] for f in target]
    found = any(v in THROTTLING for v in got)
    right = any(v == r["expected"] for v in got)
    return {"found": found, "right_kind": right if found else None, "verdicts": got}


def run(bases: list, *, seconds: float = 40.0, jobs: int = 1, scenarios=SCENARIOS, progress=None) -> list[dict]:
    """Every scenario on every base; jobs replays at once (each has its own namespaces)."""
    # each base's call window (its two-way media after the setup) looped, as the simulator's rows do
    todo = [(b.id, b.app, b.path, s.name, dict(s.spec, window_ns=tuple(b.window_ns)), seconds)
            for b in bases for s in scenarios]
    if jobs <= 1:
        out = []
        for k, a in enumerate(todo):
            out.append(run_trial(a))
            if progress:
                progress(k + 1, len(todo))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = []
        for k, r in enumerate(pool.map(run_trial, todo)):
            out.append(r)
            if progress:
                progress(k + 1, len(todo))
    return out


def table(records: list[dict]) -> str:
    """Markdown: per scenario (found, right kind, false throttling, over trials and bases), then
    every trial's verdicts."""
    rows = ["| scenario | trials (bases) | found | right kind (of found) | false throttling | errors |",
            "|---|---:|---|---|---|---:|"]
    by: dict = {}
    for r in records:
        by.setdefault(r["scenario"], []).append(r)
    for name, rs in by.items():
        sc = [score_trial(r) for r in rs]
        ok = [s for s in sc if "error" not in s]
        errors = len(sc) - len(ok)
        bases = len({r["base"] for r in rs})
        f = [s["found"] for s in ok if "found" in s]
        k = [s["right_kind"] for s in ok if s.get("found")]
        fp = [s["false_throttling"] for s in ok if "false_throttling" in s]
        rows.append(f"| {name} | {len(ok)} ({bases}) | {_frac(f)} | {_frac(k)} | {_frac(fp)} | {errors} |")
    detail = ["| base | app | scenario | verdicts of the throttled flows (or of every call flow) | lost after onset "
              "| delay added (median ms) |", "|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            detail.append(f"| {r['base']} | {r['app']} | {r['scenario']} | error: {r['error'][:120]} | | |")
            continue
        target = [f for f in r["flows"] if f["throttled"]] if r["expected"] != "none" else r["flows"]
        vs = ", ".join(f"{f['verdict']}" + (f" ({verdicts.fmt_rate(f['rate_bps'])})" if f.get("rate_bps") else "")
                       for f in target) or "no flow tested"
        lost = ", ".join(f"{x:.0%}" for x in r.get("lost_after_onset", [])) or "-"
        added = ", ".join(f"{x:.0f}" for x in r.get("delay_added_ms", [])) or "-"
        detail.append(f"| {r['base']} | {r['app']} | {r['scenario']} | {vs} | {lost} | {added} |")
    return "\n".join(rows) + "\n\n" + "\n".join(detail) + "\n"


def _frac(xs: list) -> str:
    return f"{sum(bool(x) for x in xs)}/{len(xs)}" if xs else "—"
