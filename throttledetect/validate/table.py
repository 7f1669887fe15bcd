"""Markdown tables of a scored validation run (score.score): per app, per app x scenario group,
the bases, and the vca-sense real-limit check. Every rate says "k/n trials, B bases"."""
from __future__ import annotations


def _p(p: dict | None, digits: int = 2) -> str:
    if not p or not p.get("n"):
        return "—"
    ci = p.get("ci")
    iv = f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""
    return f"{p['rate']:.{digits}f}{iv} · {p['k']}/{p['n']} trials, {p['bases']} bases"


def _short(p: dict | None) -> str:
    if not p or not p.get("n"):
        return "—"
    return f"{p['k']}/{p['n']}"


def _q(q: dict) -> str:
    if not q or not q.get("n"):
        return "—"
    return f"{100 * q['median']:.1f} % / {100 * q['p90']:.1f} % ({q['n']})"


def main_table(s: dict) -> str:
    lines = ["| app | bases | found (throttling) | right kind (of found) | inconclusive | false throttling (confounders) "
             "| false throttling (untouched flows) | policer rate error median / p90 | shaper rate error median / p90 |",
             "|---|---:|---|---|---|---|---|---|---|"]

    def row(name, nb, m):
        lines.append(f"| {name} | {nb} | {_p(m['found'])} | {_p(m['right_kind'])} | {_p(m['inconclusive'])} | "
                     f"{_p(m['false_throttling'])} | {_p(m['fp_bystander'])} | {_q(m['rate_error']['policing'])} | "
                     f"{_q(m['rate_error']['shaping'])} |")
    for a in s["apps"]:
        row(a, len(s["bases"][a]), s["per_app"][a])
    row("**all apps (pooled)**", sum(len(b) for b in s["bases"].values()), s["pooled"])
    out = ["\n".join(lines), ""]
    w = s["worst"]
    parts = []
    for key, what in (("found", "found"), ("right_kind", "right kind"), ("false_throttling", "false throttling")):
        if w.get(key):
            parts.append(f"{what}: **{w[key]['app']}** {_p(w[key])}")
    if parts:
        out.append("Worst app — " + "; ".join(parts) + ".")
    return "\n".join(out)


def shipped_table(s: dict) -> str:
    """Per app at the shipped defaults (verdicts.DEFAULTS), as `analyze` decides out of the box."""
    sh = s.get("shipped")
    if not sh:
        return ""
    lines = ["At the shipped defaults (what `analyze` does without --alpha/--threshold; the thresholds were "
             "seen with every app, so these rows are not a held-out prediction):", "",
             "| app | found | right kind | false throttling (confounders) | false throttling (untouched flows) |",
             "|---|---|---|---|---|"]
    for a in s["apps"]:
        m = sh["per_app"][a]
        lines.append(f"| {a} | {_p(m['found'])} | {_p(m['right_kind'])} | {_p(m['false_throttling'])} | "
                     f"{_p(m['fp_bystander'])} |")
    m = sh["pooled"]
    lines.append(f"| **all apps (pooled)** | {_p(m['found'])} | {_p(m['right_kind'])} | {_p(m['false_throttling'])} "
                 f"| {_p(m['fp_bystander'])} |")
    return "\n".join(lines)


def group_table(s: dict) -> str:
    lines = ["| app | group | found | right kind | inconclusive | false throttling | verdicts (throttling trials) "
             "| rate error median / p90 | not counted (no control / one-way): found, inconclusive, none |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in s["apps"]:
        for g in s["groups"]:
            m = s["per_group"].get((a, g))
            if not m:
                continue
            thr = m["found"]["n"] or m["not_counted"]["n"]
            rate = "; ".join(f"{k} {_q(v)}" for k, v in m["rate_error"].items() if v["n"])
            kinds = ", ".join(f"{k} {v}" for k, v in m["kinds"].items()) if thr else \
                (", ".join(f"{k} {v}" for k, v in m["fp_kinds"].items()) or "")
            nc = m["not_counted"]
            apart = f"{nc['found']}, {nc['inconclusive']}, {nc['none']} of {nc['n']}" if nc["n"] else "—"
            harm = _short(m["false_throttling"]) if not thr else _short(m["fp_bystander"]) + " untouched"
            inc = _short(m["inconclusive"]) if thr else _short(m["confounder_inconclusive"])
            lines.append(f"| {a} | {g} | {_p(m['found']) if thr else '—'} | {_short(m['right_kind'])} | {inc} | "
                         f"{harm} | {kinds} | {rate or '—'} | {apart} |")
    return "\n".join(lines)


def bases_table(result: dict) -> str:
    lines = ["| base | app | kind | RTP arriving | two-way media (s) | looped | target flows (to-local rate) | controls |",
             "|---|---|---|---|---:|---|---|---:|"]
    for b in result.get("bases", []):
        tg = "; ".join(f"{t['label']} {t['rate_to_local_bps'] / 1000:.1f} kbit/s" for t in b["targets"])
        lines.append(f"| {b['id']} | {b['app']} | {b['kind']} | {'yes' if b['rtp'] else 'no (time-only loop)'} | "
                     f"{b['two_way_s']:.1f} | x{b['copies']} → {b['duration_s']:.0f} s | {tg} | {b['controls']} |")
    return "\n".join(lines)


def not_bases(result: dict) -> str:
    """Captures with call flows that did not make a base, and why."""
    rows = [d for d in result.get("discovery", []) if not d.get("base") and d.get("why", "") != "no call flow"
            and "media flow" not in d.get("why", "")]
    if not rows:
        return ""
    return "Captures with call flows that are not bases: " + "; ".join(
        f"`{d['id']}` ({d['why']})" for d in rows) + "."


def vca_table(s: dict) -> str:
    v = s["vca"]
    if not v["captures"]:
        return "vca-sense: not run."
    lines = [f"Real limits (corpus/vca-sense, each capture analysed as it is): limited calls flagged "
             f"{v['limited_flagged'][0]}/{v['limited_flagged'][1]}, unlimited calls flagged "
             f"{v['unlimited_flagged'][0]}/{v['unlimited_flagged'][1]}.", "",
             "| capture | truth | flagged | protocol lines | throttled flows |", "|---|---|---|---|---|"]
    for c in v["captures"]:
        truth = f"limited {c['limit_kBps']:g} KB/s" if c.get("limited") else "unlimited"
        if c.get("error"):
            lines.append(f"| {c['file']} | {truth} | error | {c['error']} | |")
            continue
        prot = ", ".join(f"{p['protocol']} {p['verdict']}" for p in c.get("protocols", []) if p.get("verdict"))
        thr = ", ".join(f"{t['protocol']} {t['verdict']}" for t in c.get("throttled_flows", [])[:4])
        lines.append(f"| {c['file']} | {truth} | {'**yes**' if c['flagged'] else 'no'} | {prot} | {thr} |")
    return "\n".join(lines)


def calibration_note(s: dict) -> str:
    c = s["calibration"]
    if not c["from_detectors"]:
        return ("Calibration: throttledetect.verdicts exposes no CALIBRATION_GRID yet; one grid point (the "
                "detectors as they are), so the leave-one-app-out choice is the identity for every app.")
    lines = [f"Calibration: leave-one-app-out over {c['grid_points']} grid points (false throttling <= 0.01 on "
             f"the other apps' confounder trials, then the most found on theirs):"]
    lines += [f"- {a}: {c['choice'][a]} ({c['why'][a]})" for a in sorted(c["choice"])]
    if c.get("all_apps") is not None:
        from throttledetect import verdicts
        same = "= the shipped defaults" if dict(c["all_apps"]) == dict(verdicts.DEFAULTS) else \
            f"(the shipped defaults are {dict(verdicts.DEFAULTS)})"
        lines.append(f"- chosen on every app: {c['all_apps']} {same} ({c['why_all_apps']})")
    return "\n".join(lines)


def render(result: dict, s: dict, *, full: bool = True) -> str:
    m = result.get("meta", {})
    head = (f"{m.get('trials', len(result.get('trials', [])))} trials ({m.get('failed', 0)} failed) on "
            f"{len(result.get('bases', []))} bases, {m.get('seeds')} seeds per scenario and base; "
            f"{m.get('runtime_s')} s on {m.get('jobs')} worker(s) ({m.get('trial_cpu_s')} CPU s in trials); "
            f"{m.get('date')}; git {m.get('git_head')}, detectors {m.get('detectors_sha256')}.")
    out = [main_table(s), "", calibration_note(s), "", shipped_table(s), "", head]
    if m.get("hidden_rtp"):
        out.insert(0, "Encrypted-media twins (--hide-rtp): every base with readable RTP, its call flows' RTP "
                      "and RTCP made unreadable after looping (the real call's packet times and sizes, no "
                      "sequence numbers); each app's row is its twins'.\n")
    if full:
        out += ["", "Per app and scenario group (k/n trials):", "", group_table(s), "", "Bases:", "",
                bases_table(result), "", not_bases(result), "", vca_table(s)]
    return "\n".join(out) + "\n"
