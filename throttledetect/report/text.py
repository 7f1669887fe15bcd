"""Plain-text tables for the terminal: columns sized to their content, numbers right-aligned."""
from __future__ import annotations


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
