"""Plain-text tables for the terminal: columns sized to their content and fitted to the width
(long text columns wrap onto more lines rather than being cut), numbers right-aligned, every
cell sanitised (report/terminal.py)."""
from __future__ import annotations

import textwrap

from throttledetect.report.terminal import sanitize

# detect.result.KINDS, restated: importing throttledetect.detect (scipy) would slow every command's start.
KINDS = ("shaping", "policing", "dropping", "blocking")
MIN_WRAPPED = 16         # a wrapped column keeps at least this many characters per line
GAP = "  "


def table(headers: list[str], rows: list[list], *, width: int | None = None, wrap: tuple[str, ...] = ()) -> str:
    """Rows under headers. With `width`, the columns named in `wrap` give up room (their text
    wraps) until the table fits; the other columns keep their full content."""
    cells = [[_cell(v) for v in row] for row in rows]
    heads = [sanitize(h) for h in headers]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows)
               for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    if width:
        _fit(widths, heads, [i for i, h in enumerate(headers) if h in wrap], width)
        if sum(widths) + len(GAP) * (len(widths) - 1) > width:
            return _records(heads, cells, width)     # a narrow terminal: one block of "name: value" per row

    def lines_of(values: list[str]) -> list[str]:
        parts = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] if len(v) > w else [v]
                 for v, w in zip(values, widths)]
        out = []
        for k in range(max(len(p) for p in parts)):
            cols = [(p[k] if k < len(p) else "") for p in parts]
            out.append(GAP.join(c.rjust(w) if numeric[i] else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cols, widths))).rstrip())
        return out

    out = lines_of(heads) + [GAP.join("-" * w for w in widths)]
    for r in cells:
        out += lines_of(r)
    return "\n".join(out)


def _records(heads: list[str], cells: list[list[str]], width: int) -> str:
    """Rows as blocks of "name: value" lines (values wrapped), for a terminal too narrow for columns."""
    label = max(len(h) for h in heads) + 2
    blocks = []
    for row in cells:
        lines = []
        for h, v in zip(heads, row):
            body = textwrap.wrap(v, max(width - label, 10), break_on_hyphens=False) or [""]
            lines.append(f"{h + ':':<{label}}{body[0]}".rstrip())
            lines += [" " * label + more for more in body[1:]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _fit(widths: list[int], heads: list[str], wrappable: list[int], width: int) -> None:
    """Narrow the widest wrappable column, one character at a time, until the table fits or every
    wrappable column is at its floor (then the table stays wider than asked: nothing is cut)."""
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        room = [k for k in wrappable if widths[k] > max(MIN_WRAPPED, len(heads[k]))]
        if not room:
            break
        widths[max(room, key=lambda k: widths[k])] -= 1
        excess -= 1


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "nan"
    return sanitize(v)


def fill(text: str, width: int, indent: str = "    ") -> str:
    """One paragraph wrapped to `width`, continuation lines indented; sanitised."""
    return textwrap.fill(sanitize(text), max(width, 20), subsequent_indent=indent, break_on_hyphens=False)


def host(endpoint: str) -> str:
    """'1.2.3.4:5678' -> '1.2.3.4'; '[2001:db8::1]:5678' -> '2001:db8::1'."""
    h = endpoint.rsplit(":", 1)[0]
    return h[1:-1] if h.startswith("[") else h


def direction_phrase(flow: dict, direction: str, toward: str | None = None) -> str:
    """A detection's direction ("ab" = from side a to side b) in words that do not depend on who
    sent first: "to you" / "from you" when the capturing host's side is known (the detection's
    ``toward``, or the flow's ``local``), else the hosts."""
    if toward in ("local", "remote"):
        return "to you" if toward == "local" else "from you"
    local = flow.get("local")
    if local in ("a", "b"):
        arriving = "ba" if local == "a" else "ab"
        return "to you" if direction == arriving else "from you"
    if "a" not in flow or "b" not in flow:
        return direction
    src, dst = (flow["a"], flow["b"]) if direction == "ab" else (flow["b"], flow["a"])
    return f"from {host(src)} to {host(dst)}"


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
                head = f"{f['id']} {verdict} ({direction_phrase(f, d['direction'], d.get('toward'))}"
                head += f", q={q:.2g}" if q is not None else ""
                head += f", effect {d['effect']:.2f}" if d.get("effect") is not None else ""
                out.append(fill(f"{head}): {d['evidence']}", width))
        elif verdict == "inconclusive":
            reasons = list(dict.fromkeys(d["reason"] for d in dets if d["decision"] == "inconclusive" and d.get("reason")))
            suspect = [d["reason"] for d in dets if d["decision"] == "inconclusive"
                       and (d.get("estimates") or {}).get("suspect") and d.get("reason")]
            shown = list(dict.fromkeys(suspect + reasons))[:2]
            out.append(fill(f"{f['id']} inconclusive: " + "; ".join(shown), width))
    return "\n".join(out)
