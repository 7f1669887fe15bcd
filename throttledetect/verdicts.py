"""Verdicts: the vocabulary, how tests become a flow's verdict and a protocol's, and rate wording.

Dependency-free on purpose (no numpy, no scipy): the report, the validation and the commands
import it without paying the detectors' start-up. Everything here works on detections as plain
dicts (the JSON contract's ``detections`` entries), so a stored result can be re-decided
under other thresholds (``rescore``) without rerunning the tests: that is how the validation
calibrates leave-one-app-out.

A detection (one test of one flow direction) carries ``kind``, ``decision`` and, when it ran,
``pvalue``, ``effect`` and ``checks`` (named conditions that must all hold besides
significance). ``decide`` turns those into "detected" / "not_detected" under a configuration:
detected iff the false-discovery-adjusted p-value (``qvalue``) is below ``alpha``, every
check holds and the effect reaches the kind's floor. Tests that could not run say
"inconclusive" with a reason and are left as they are.

Flow verdict (``flow_verdict``):
- a throttling kind when a test of that kind is detected (several: PRECEDENCE decides);
- ``none`` only when every test that could show throttling ran and found nothing;
- ``inconclusive`` otherwise, with what is missing (the reasons of the tests that could not run).
A flow that carries no media (STUN checks, signalling: role "setup") is judged by the call-setup
test alone: its call's requests answered is ``none``.

Protocol verdict (``protocol_verdict``): the most specific throttling kind among its flows'
verdicts; else ``none`` when its media flows were all tested and found nothing; else
``inconclusive`` ("3 media flows tested: none; 2 could not be tested: no loss signal").
"""
from __future__ import annotations

import math

KINDS = ("shaping", "policing", "dropping", "blocking")
# "untested": no test ran on the flow (not a call flow under --test calls, or too few packets);
# never "none", which says the tests that could show throttling ran and found nothing
UNTESTED = "untested"
VERDICTS = KINDS + ("none", "inconclusive", UNTESTED)
# Which kind names a flow when several are detected. Blocking first (the flow is dead, nothing
# else matters); policing before shaping and dropping: the policing test only detects when the
# queue before the losses held under MIN_QUEUE_PACKETS packets, and a rate-dependent drop is a
# specific kind of selective drop; shaping before dropping (a shaper's full queue drops too).
PRECEDENCE = ("blocking", "policing", "shaping", "dropping")
# Severity order of verdicts in tables and when one protocol appears in several captures.
SEVERITY = PRECEDENCE + ("inconclusive", "none", UNTESTED)
RATE_AGREEMENT = 0.10     # rates of several flows or captures are "common" within 10 % (max/min - 1)
MINOR_SHARE = 0.25        # untested media flows carrying at most this share of a protocol's packets

# The thresholds ``decide`` applies (DetectConfig holds the same names; the JSON output writes
# the configuration it was made with). Effect floors are per kind, in each kind's effect unit:
#   dropping: loss in excess of the reference (fraction), policing: the token bucket's explanation
#   of the losses (Youden's J), shaping: queue built (ms) or, without a sender clock, the share of
#   arrival gaps at the cap, blocking: share of a silence beyond any earlier gap, setup: share of a
#   call attempt's requests left unanswered (the 2025 signature: none, or nearly none, answered).
# The design's reference floors (what each effect should at least be, argued in each detector's
# docstring); the validation's calibration grid scales them.
REFERENCE_FLOORS = {
    "floor.dropping": 0.01,
    "floor.policing": 0.5,
    "floor.shaping": 20.0,
    "floor.shaping_spacing": 0.5,
    "floor.blocking": 0.5,
    "floor.setup": 0.9,
}

# The points the validation chooses among, leave-one-app-out (throttledetect.validate): the
# FDR level and one multiplier on every reference floor but call setup's (nearly every request
# unanswered is the signature itself; a lower floor would call a lossy path's retransmissions a block).
FLOOR_MULTIPLIERS = (0.5, 0.75, 1.0, 1.5)
CALIBRATION_GRID = [
    {"alpha": a, **{k: v * (1.0 if k == "floor.setup" else m) for k, v in REFERENCE_FLOORS.items()}}
    for a in (0.001, 0.005, 0.01, 0.02) for m in FLOOR_MULTIPLIERS
]

# The shipped thresholds: the grid point the validation chose on every app (false throttling
# <= 0.01 on the confounder trials, then the most throttling found; docs/validation.md, git
# 20f3e93: found 0.70, false throttling 7 of 1,652 confounder trials). Each app's row in the
# README is measured at the point chosen without that app, so that row predicts what these
# thresholds do on an app the validation never saw; shipping any other point would leave
# `analyze` out of the box without a prediction (the reference floors, 2x stricter, were shipped
# until then: found 0.65, false throttling 2 of 1,652).
SHIPPED_MULTIPLIER = 0.5
DEFAULTS = {"alpha": 0.02, **{k: v * (1.0 if k == "floor.setup" else SHIPPED_MULTIPLIER)
                             for k, v in REFERENCE_FLOORS.items()}}


def config_values(overrides: dict | None = None) -> dict:
    out = dict(DEFAULTS)
    if overrides:
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown thresholds: {', '.join(sorted(unknown))}")
        out.update(overrides)
    return out


# ------------------------------------------------------------------------------- statistics

def benjamini_hochberg(pvalues: list) -> list:
    """BH-adjusted p-values (q-values) of a list; None entries stay None (scipy's
    false_discovery_control, imported here so that importing this module stays light)."""
    from scipy.stats import false_discovery_control
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out = [None] * len(pvalues)
    if idx:
        q = false_discovery_control([min(1.0, max(0.0, float(pvalues[i]))) for i in idx], method="bh")
        for i, qi in zip(idx, q):
            out[i] = float(qi)
    return out


def decide(det: dict, values: dict) -> str:
    """The decision of one detection under threshold values (see the module docstring). A test
    whose negative result would not show the flow clean says so with ``otherwise``; one whose
    significant result with an effect below the floor is neither clean nor throttled says so with
    ``short_of_floor`` (its ``reason`` then says why)."""
    if det.get("pvalue") is None or (det.get("decision") == "inconclusive" and det.get("otherwise") != "inconclusive"):
        return det.get("decision", "inconclusive")
    q = det.get("qvalue", det.get("pvalue"))
    floor = values.get(det.get("floor_key") or f"floor.{det['kind']}", 0.0)
    effect = det.get("effect")
    checks = det.get("checks") or {}
    significant = q is not None and q < values["alpha"] and all(checks.values())
    if significant and (effect is None or effect >= floor):
        return "detected"
    if significant and det.get("short_of_floor"):
        return det["short_of_floor"]
    return det.get("otherwise", "not_detected")


def apply_fdr(detections: list) -> None:
    """One false-discovery family over every detection with a p-value (fills ``qvalue``). A
    p-value shared by several detections (a group test: ``family_key``) counts once."""
    keys, pvals = [], []
    seen = {}
    for d in detections:
        if d.get("pvalue") is None or d.get("decision") == "inconclusive":
            continue
        key = d.get("family_key") or id(d)
        if key not in seen:
            seen[key] = len(pvals)
            pvals.append(float(d["pvalue"]))
        keys.append((d, seen[key]))
    q = benjamini_hochberg(pvals)
    for d, k in keys:
        d["qvalue"] = q[k]


def redecide(detections: list, values: dict) -> None:
    """Recompute qvalues and decisions in place (one family)."""
    apply_fdr(detections)
    for d in detections:
        d["decision"] = decide(d, values)


# ------------------------------------------------------------------------------- verdicts

def flow_verdict(detections: list, role: str = "media") -> tuple[str, str]:
    """(verdict, reason) of one tested flow from its detections (dicts)."""
    found = {d["kind"] for d in detections if d.get("decision") == "detected"}
    for k in PRECEDENCE:
        if k in found:
            return k, ""
    if not detections:
        return "inconclusive", "no test could run"
    missing = [d for d in detections if d.get("decision") == "inconclusive" and d.get("required", True)]
    if missing:
        reasons = list(dict.fromkeys(d.get("reason") or f"{d['kind']}: could not be tested" for d in missing))
        return "inconclusive", "; ".join(reasons[:3])
    return "none", ""


def protocol_verdict(flows: list) -> dict:
    """Per protocol from its tested flows (dicts with verdict, role, verdict_reason, detections)."""
    verdicts = [f["verdict"] for f in flows]
    kinds = [k for k in PRECEDENCE if k in verdicts]
    media = [f for f in flows if f.get("role") != "setup"]
    basis = media or flows
    if kinds:
        verdict = kinds[0]
    elif basis and all(f["verdict"] == "none" for f in basis):
        verdict = "none"
    elif media and _minor_untested(media):
        verdict = "none"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "kinds": kinds}


def _minor_untested(media: list) -> bool:
    """The media flows tested clean carry nearly all the media (MINOR_SHARE or less of the packets
    is in flows that could not be tested: a short side leg, a candidate pair used for seconds)."""
    def n(f):
        return f.get("packets", f.get("packets_in", 0))
    total = sum(n(f) for f in media)
    untested = sum(n(f) for f in media if f["verdict"] != "none")
    clean = [f for f in media if f["verdict"] == "none"]
    return bool(clean) and total > 0 and untested <= MINOR_SHARE * total


def protocol_summary(label: str, flows: list, verdict: str, kinds: list, rate: float | None) -> str:
    media = [f for f in flows if f.get("role") != "setup"]
    setup = [f for f in flows if f.get("role") == "setup"]
    n = len(media)
    if kinds:
        parts = []
        for k in kinds:
            hit = [f for f in flows if f["verdict"] == k]
            onsets = [d.get("onset_s") for f in hit for d in f.get("detections", [])
                      if d["kind"] == k and d.get("decision") == "detected" and d.get("onset_s") is not None]
            extra = f" from {min(onsets):.1f} s" if onsets else ""
            parts.append(f"{k} on {len(hit)} of {len(flows)} flow{'s' * (len(flows) != 1)}{extra}")
        tail = ""
        if rate:
            tail = f", rate {fmt_rate(rate)}" if len([f for f in flows if f["verdict"] in kinds]) < 2 \
                else f", common rate {fmt_rate(rate)}"
        return f"{label}: " + "; ".join(parts) + tail + "."
    tested = [f for f in media if f["verdict"] == "none"]
    untested = [f for f in media if f["verdict"] == "inconclusive"]
    bits = []
    if n:
        bits.append(f"{len(tested)} media flow{'s' * (len(tested) != 1)} tested: none")
    if untested:
        why = {}
        for f in untested:
            r = f.get("verdict_reason") or "could not be tested"
            why[r] = why.get(r, 0) + 1
        top = sorted(why.items(), key=lambda kv: -kv[1])[0][0]
        bits.append(f"{len(untested)} could not be tested ({top})")
    if setup:
        answered = [f for f in setup if f["verdict"] == "none"]
        unsure = [f for f in setup if f["verdict"] == "inconclusive"]
        how = [f"{len(answered)} set up or answered"] if answered else []
        if unsure:
            r = unsure[0].get("verdict_reason") or "could not be judged"
            how.append(f"{len(unsure)} not judged: {r}")
        bits.append(f"{len(setup)} setup flow{'s' * (len(setup) != 1)} ({'; '.join(how)})")
    return f"{label}: " + "; ".join(bits) + "."


# ------------------------------------------------------------------------------- rescoring

def rescore(document: dict, overrides: dict | None = None) -> dict:
    """The JSON document's flow verdicts and protocol verdicts re-decided under other
    thresholds, from the stored statistics (a copy; the input is not changed)."""
    import copy
    values = config_values(overrides)
    doc = copy.deepcopy(document)
    flows = doc.get("flows", [])
    for ci in {f.get("capture", 0) for f in flows}:
        fl = [f for f in flows if f.get("capture", 0) == ci and f.get("tested")]
        dets = [d for f in fl for d in f.get("detections", [])]
        redecide(dets, values)
        for f in fl:
            f["verdict"], f["verdict_reason"] = flow_verdict(f.get("detections", []), f.get("role", "media"))
    by_label: dict = {}
    for f in flows:
        if f.get("tested"):
            by_label.setdefault(f["protocol"], []).append(f)
    for p in doc.get("protocols", []):
        fl = by_label.get(p["protocol"])
        if fl:
            p.update(protocol_verdict(fl))
    return doc


# ------------------------------------------------------------------------------- wording

def fmt_rate(bps) -> str:
    if bps is None or not isinstance(bps, (int, float)) or not math.isfinite(bps):
        return "?"
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mbit/s"
    return f"{bps / 1e3:.1f} kbit/s"


def common_rate(rates: list) -> float | None:
    """The median of rates that agree within RATE_AGREEMENT, else None."""
    rates = [float(r) for r in rates if r]
    if not rates:
        return None
    if max(rates) / min(rates) - 1.0 > RATE_AGREEMENT:
        return None
    s = sorted(rates)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])
