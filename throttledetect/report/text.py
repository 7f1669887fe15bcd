"""Plain-text tables for the terminal: columns sized to their content, numbers right-aligned."""
from __future__ import annotations

import textwrap

from throttledetect.verdicts import KINDS


def table(headers: list[str], rows: list[list], *, max_width: int = 48) -> str:
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) if rows else False for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(v, max_width: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.3f}"
    else:
        s = str(v)
    return s if len(s) <= max_width else s[: max_width - 1] + "…"


def evidence(flows: list[dict], *, width: int = 110) -> str:
    """What made each tested flow's verdict, one entry per flow that is not "none": the
    detections of its verdict's kind (direction, q-value, effect, the evidence sentence), or for
    "inconclusive" the reasons the tests could not decide. Empty when every verdict is "none"."""
    out = []
    for f in flows:
        verdict = f.get("verdict")
        dets = f.get("detections") or []
        if verdict in KINDS:
            for d in (d for d in dets if d["kind"] == verdict and d["decision"] == "detected"):
                q = d.get("qvalue", d.get("pvalue"))
                head = f"{f['id']} {verdict} ({d['direction']}"
                head += f", q={q:.2g}" if q is not None else ""
                head += f", effect {d['effect']:.2f}" if d.get("effect") is not None else ""
                out.append(textwrap.fill(f"{head}): {d['evidence']}", width, subsequent_indent="    "))
        elif verdict == "inconclusive":
            why = f.get("verdict_reason") or "; ".join(dict.fromkeys(
                d["reason"] for d in dets if d["decision"] == "inconclusive" and d.get("reason")))
            out.append(textwrap.fill(f"{f['id']} inconclusive: {why}", width, subsequent_indent="    "))
    return "\n".join(out)
