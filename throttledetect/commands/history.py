"""`throttledetect history`: what the results database (analyze --db) has seen, summarised.

    throttledetect history --db results.sqlite                  # every capture's verdicts
    throttledetect history --db results.sqlite --by isp         # per value of the tag "isp", per protocol
    throttledetect history --db results.sqlite --by day --protocol whatsapp_call
"""
from __future__ import annotations

import json

import click

from throttledetect.commands.options import OUTPUT, Tag


@click.command("history")
@click.option("--db", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The results database written by `analyze --db FILE`.")
@click.option("--by", metavar="day|protocol|TAG",
              help="Summarise per day (of the capture), per protocol, or per value of a tag (e.g. isp, city). "
                   "Default: one row per capture and protocol.")
@click.option("--protocol", metavar="LABEL", help="Only this protocol (e.g. whatsapp_call).")
@click.option("--tag", "tags", type=Tag(), multiple=True, help="Only captures with this tag (KEY=VALUE, repeatable).")
@click.option("--all-protocols", is_flag=True, help="Include protocols that are not calls (tls, dns, ...).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@OUTPUT
def command(db, by, protocol, tags, all_protocols, fmt, output):
    """Summarise the per-protocol results kept by `analyze --db`, per capture or grouped."""
    from throttledetect.classify.labels import APP_CHAT, is_call
    from throttledetect.cli import _emit
    from throttledetect.report.output import output_problem
    from throttledetect.store import Store, StoreError, group_results
    if output and output_problem(output, [db]):
        raise click.BadParameter(f"{output}: {output_problem(output, [db])}", param_hint="--output")
    try:
        with Store(db, create=False) as store:
            rows = store.results(protocol=protocol, tags=dict(tags))
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if not (all_protocols or protocol):
        rows = [r for r in rows if is_call(r.protocol) or r.protocol in APP_CHAT]
    if by:
        data = group_results(rows, by)
        if by == "protocol":
            for d in data:
                d.pop("group")
    else:
        data = [{"capture": r.capture_id, "day": r.day, "path": r.path, "tags": r.tags, "protocol": r.protocol,
                 "verdict": r.verdict, "rate_bps": r.rate_bps, "median_rate_to_you_bps": r.median_rate_to_you_bps,
                 "loss_to_you": r.loss_to_you, "jitter_to_you_ms": r.jitter_to_you_ms, "analysed_at": r.analysed_at}
                for r in rows]
    if fmt == "json":
        _emit(json.dumps({"by": by, "rows": data}, indent=2) + "\n", output)
    elif fmt == "csv":
        from throttledetect.report.csvout import write_rows
        flat = [{k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v) for k, v in d.items()} for d in data]
        _emit(write_rows(list(flat[0]) if flat else ["protocol"], flat), output)
    else:
        _emit(render(data, by, output) + "\n", output)


def render(data: list[dict], by: str | None, output) -> str:
    from throttledetect.report.terminal import output_width
    from throttledetect.report.text import table
    width = output_width(to_terminal=not output)
    if not data:
        return "no results (analyze FILE --db DB first, or fewer filters)"
    if by:
        first = [] if by == "protocol" else [by]
        rows = [([d["group"]] if first else []) + [d["protocol"], d["captures"], d["throttled"], _verdicts(d["verdicts"]),
                                                    _kbit(d["median_rate_to_you_bps"]), _pct(d["median_loss_to_you"]),
                                                    _kbit(d["median_rate_bps"])] for d in data]
        return table(first + ["protocol", "captures", "throttled", "verdicts", "rate to you", "loss to you",
                              "throttle rate"], rows, width=width, wrap=("verdicts",))
    rows = [[d["capture"], d["day"] or "-", d["path"], _tags(d["tags"]), d["protocol"], d["verdict"] or "-",
             _kbit(d["median_rate_to_you_bps"]), _pct(d["loss_to_you"]), _kbit(d["rate_bps"])] for d in data]
    return table(["id", "day", "capture", "tags", "protocol", "verdict", "rate to you", "loss to you",
                  "throttle rate"], rows, width=width, wrap=("capture", "tags"))


def _verdicts(v: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in v.items())


def _tags(t: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(t.items())) or "-"


def _kbit(bps) -> str:
    return "-" if bps is None else f"{bps / 1e3:.1f} kbit/s"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"
