"""`throttledetect replay`: play a real capture through real kernel throttling (Linux, root).

Parses options and calls throttledetect.testbed.replay; no replay logic lives here.
"""
from __future__ import annotations

import click

from throttledetect.commands.options import (DEFAULT_IDLE_TIMEOUT_S, MAX_IDLE_TIMEOUT_S, Networks, Number,
                                             flatten_networks)


class ReplayError(click.ClickException):
    """One line on stderr, exit status 2: the replay could not be made."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"throttledetect: error: {' '.join(self.format_message().split())}", err=True)


@click.command("replay")
@click.argument("infile", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("outfile", metavar="OUT", type=click.Path(dir_okay=False, writable=True))
@click.option("--police", metavar="RATE[:BURST]",
              help="Policer: tbf whose queue holds one packet. RATE bit/s (300k, 1.5M) or a factor of the flows' "
                   "mean rate (0.7x); BURST bytes or time at the rate (default 20ms, at least one frame).")
@click.option("--shape", metavar="RATE[:QUEUE[:BURST]]",
              help="Shaper: tbf with a queue of QUEUE bytes or time at the rate (default 50ms, at least 3 frames); "
                   "BURST default 1500 bytes.")
@click.option("--htb", metavar="RATE[:PACKETS]", help="htb class rate = ceil = RATE with a pfifo of PACKETS (default 50).")
@click.option("--block-after", type=click.FloatRange(0), metavar="S",
              help="Drop every packet of the flows from S seconds after the replay starts (pfifo limit 0).")
@click.option("--drop", type=click.FloatRange(0, 1, min_open=True), metavar="P",
              help="Random drops with probability P (netfilter's statistic match; needs iptables).")
@click.option("--none", "no_throttle", is_flag=True, default=False, help="Throttle nothing: the replay alone.")
@click.option("--direction", type=click.Choice(["to-local", "from-local", "both"]), default="to-local",
              show_default=True,
              help="Throttled direction: to-local = arriving at the capturing host (what its capture shows), "
                   "from-local = leaving it (seen only past the router: --server-pcap).")
@click.option("--loop", "loop_s", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Play exactly SECONDS: the capture looped (RTP sequence numbers and timestamps continuous) or cut.")
@click.option("--onset", type=click.FloatRange(0), default=0.0, show_default=True, metavar="S",
              help="Throttling starts S seconds after the replay's first packet.")
@click.option("--flows", "selector", default="calls", show_default=True, metavar="SELECTOR",
              help='Flows to throttle: "calls" (classified as calls), "all", labels or flow ids (comma-separated).')
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in the truth file.")
@click.option("--server-pcap", type=click.Path(dir_okay=False, writable=True),
              help="Also keep the capture taken on the server's side of the router.")
@click.option("--idle-timeout", type=Number(0, MAX_IDLE_TIMEOUT_S, min_open=True), default=DEFAULT_IDLE_TIMEOUT_S,
              show_default=True,
              help="Seconds of silence after which a 5-tuple starts a new flow.")
@click.option("--local", "local", multiple=True, type=Networks(),
              help="Address range(s) of the capturing host's side (default: private, CGNAT, link-local, loopback).")
def command(infile, outfile, police, shape, htb, block_after, drop, no_throttle, direction, loop_s, onset, selector,
            seed, server_pcap, idle_timeout, local):
    """Replay capture IN through kernel throttling; write OUT (pcap) and OUT.truth.json.

    Every packet is sent again from its own side at its recorded time, with its own addresses and
    ports, through network namespaces: client (the capture's local addresses) -- router (the
    throttle: tbf, htb, pfifo, netfilter) -- server (every remote address). OUT is tcpdump on the
    client's interface. Exactly one of --police, --shape, --htb, --block-after, --drop, --none.
    Needs root, iproute2 and tcpdump (and iptables for --drop).
    """
    from throttledetect.read import CaptureError
    from throttledetect.testbed.netns import TestbedError
    from throttledetect.testbed.replay import replay, spec_from_option
    from throttledetect.testbed.replay_net import tool_availability

    given = [(k, v) for k, v in (("police", police), ("shape", shape), ("htb", htb), ("block", block_after),
                                 ("drop", drop), ("none", True if no_throttle else None)) if v is not None]
    if len(given) != 1:
        names = ", ".join("--" + {"block": "block-after"}.get(k, k) for k, _ in given)
        raise click.UsageError("give exactly one of --police, --shape, --htb, --block-after, --drop, --none"
                               + (f" (got {names})" if given else ""))
    kind, value = given[0]
    if kind == "block" and onset:
        raise click.UsageError("--block-after sets the onset itself; leave out --onset")
    nets = flatten_networks(local)
    try:
        spec = spec_from_option(kind, value, direction=direction, onset_s=onset, flows=selector, loop_s=loop_s,
                                local=tuple(str(n) for n in nets or ()), idle_timeout=idle_timeout)
    except ValueError as e:
        raise click.UsageError(str(e))
    ok, why = tool_availability()
    if not ok:
        raise ReplayError(f"cannot replay here: {why}")
    try:
        truth = replay(infile, outfile, spec, seed=seed, server_pcap=server_pcap,
                       progress=lambda m: click.echo(m, err=True))
    except CaptureError as e:
        raise ReplayError(str(e))
    except (ValueError, TestbedError, OSError) as e:
        raise ReplayError(f"{infile}: {e}")
    for line in summary_lines(truth):
        click.echo(line)


def summary_lines(t: dict) -> list[str]:
    m, r = t["measured"], t["replay"]
    tp = r["timing_precision"].get("from_local_at_client", {})
    lines = [f"{t['output']['path']}: {m['capture_packets']} packets captured of {r['packets']} replayed "
             f"({m['extra_packets']} not from the replay); {t['kind']}"
             + (f" {t['direction']} from {t['onset_s']} s" if t["kind"] != "none" else "")
             + f"; truth in {t['output']['truth']}",
             f"  timing: packets within {tp.get('abs_error_us_p50')} us of their time (median), "
             f"{tp.get('abs_error_us_p99')} us (p99); senders used {r['sender_cpu_s']} s CPU"]
    for d, c in t["throttle"].items():
        parts = [f"{k}={v}" for k, v in c.items() if v is not None and k != "qdisc"]
        lines.append(f"  {d}: {c['qdisc']} " + " ".join(parts))
    for d, a in m["throttled_aggregate"].items():
        lines.append(f"  throttled flows {d}: sent {a['sent']}, lost {a['lost']} ({a['drop_fraction']}), delay p50/p90 "
                     f"{a['delay_ms_p50']}/{a['delay_ms_p90']} ms, offered {a['offered_bps_after_onset']} bit/s -> "
                     f"received {a['received_bps_after_onset']} bit/s after the onset")
    for side, c in t["tcpdump"].items():
        if c.get("packets dropped by kernel"):
            lines.append(f"  WARNING: the {side}'s tcpdump dropped {c['packets dropped by kernel']} packets "
                         "(the machine could not keep up): the capture misses packets the network did not drop")
    if r["left_out"]:
        lines.append("  not replayed: " + ", ".join(f"{n} {why}" for why, n in r["left_out"].items()))
    return lines
