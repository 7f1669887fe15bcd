"""A comparison (report/compare.py) as a terminal table: baseline | test in each cell."""
from __future__ import annotations

from throttledetect.report.text import table


def render(cmp, width: int) -> str:
    head = ["baseline: " + ", ".join(cmp.baseline), "test:     " + ", ".join(cmp.test)]
    rows = []
    for r in cmp.rows:
        b, t = r.baseline, r.test
        rows.append([r.protocol, r.direction, f"{b.verdict or '-'} | {t.verdict or '-'}",
                     f"{_kbit(b.median_bps)} | {_kbit(t.median_bps)}", f"{_pct(b.loss)} | {_pct(t.loss)}",
                     f"{_ms(b.jitter_ms)} | {_ms(t.jitter_ms)}",
                     "-" if r.rate.area is None else f"{r.rate.area:.2f}",
                     "-" if r.rate.ks_pvalue is None else f"{r.rate.ks_pvalue:.2g}", r.rate.decision])
    body = table(["protocol", "direction", "verdict", "median rate kbit/s", "loss", "jitter ms", "area", "KS p",
                  "throughput"], rows, width=width, wrap=("verdict", "throughput"))
    legend = ("Each cell: baseline | test. Throughput per bin compared by Wehe's tests: differs when the area "
              "between the inverse CDFs >= 0.5 (0.3 above 10 Mbit/s) and the KS test p < 0.01; a large area "
              "alone is inconclusive.")
    from throttledetect.report.text import fill
    return "\n".join(head) + "\n\n" + body + "\n\n" + fill(legend, width, indent="")


def _kbit(bps) -> str:
    return "-" if bps is None else f"{bps / 1e3:.1f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"
