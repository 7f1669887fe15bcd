"""`throttledetect simulate`: apply a known impairment to a real capture (ground truth for tests).

Parses options and calls throttledetect.simulate; no simulation logic lives here.
"""
from __future__ import annotations

import math
import re

import click

from throttledetect.commands.options import (DEFAULT_IDLE_TIMEOUT_S, MAX_IDLE_TIMEOUT_S, MAX_SECONDS, Networks, Number,
                                             OutputFile, flatten_networks)

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
MAX_RATE_BPS = 1e12          # 1 Tbit/s: any larger rate is a typo
MAX_BYTES = 1e12             # bucket depths and queues
MAX_JITTER_MS = 60_000.0
MAX_LOOP_S = 86_400.0        # a day of looped call
MAX_LOOPED_BYTES = 4 << 30   # the looped capture is built in memory and read back


def parse_rate(text: str) -> float:
    """'64000', '64k', '1.5M', '2Mbit', '500kbps' -> bit/s."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)(?:bit/s|bits|bit|bps|b/s)?\s*", text, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a rate (bit/s, e.g. 64000, 64k, 1.5M)")
    value = float(m.group(1)) * _SI[m.group(2).lower()]
    if not 0 < value <= MAX_RATE_BPS:
        raise ValueError(f"rate {text!r} must be above 0 and at most 1 Tbit/s")
    return value


def parse_bytes(text: str, rate_bps: float) -> float:
    """'3000', '3k', '1500B', or a time worth at the rate: '50ms', '0.2s' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*", text, re.I)
    if m:
        seconds = float(m.group(1)) / (1000.0 if m.group(2).lower() == "ms" else 1.0)
        return rate_bps / 8 * seconds
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)\s*(?:b|bytes?)?\s*", text, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 3000, 10k) or a time (e.g. 50ms)")
    value = float(m.group(1)) * _SI[m.group(2).lower()]
    if not 0 < value <= MAX_BYTES:
        raise ValueError(f"size {text!r} must be above 0 and at most 1 TB")
    return value


def build_impairment(drop, police, shape, block_after, congest, congest_model, jitter, jitter_shape, shared):
    from throttledetect import simulate as sim
    given = [name for name, v in (("--drop", drop), ("--police", police), ("--shape", shape),
                                  ("--block-after", block_after), ("--congest", congest or None),
                                  ("--jitter", jitter)) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one impairment: --drop, --police, --shape, --block-after, "
                               "--congest or --jitter" + (f" (got {', '.join(given)})" if given else ""))
    try:
        if drop is not None:
            return sim.Drop(drop)
        if police is not None:
            parts = police.split(":")
            if len(parts) > 2:
                raise ValueError("--police takes RATE[:BURST]")
            rate = parse_rate(parts[0])
            burst = parse_bytes(parts[1], rate) if len(parts) > 1 else None
            return sim.Police(rate, burst, shared=shared)
        if shape is not None:
            parts = shape.split(":")
            if len(parts) > 3:
                raise ValueError("--shape takes RATE[:QUEUE[:BURST]]")
            rate = parse_rate(parts[0])
            queue = parse_bytes(parts[1], rate) if len(parts) > 1 and parts[1] else None
            burst = parse_bytes(parts[2], rate) if len(parts) > 2 and parts[2] else None
            return sim.Shape(rate, queue, burst, shared=shared)
        if block_after is not None:
            return sim.BlockAfter(block_after)
        if congest:
            kw = {}
            if congest_model:
                names = ("p_gb", "p_bg", "loss_bad", "delay_ms", "slot_ms")
                values = [float(v) for v in congest_model.split(",")]
                if not 3 <= len(values) <= 5:
                    raise ValueError("--congest-model takes P_GB,P_BG,LOSS_BAD[,DELAY_MS[,SLOT_MS]]")
                kw = dict(zip(names, values))
                check_congest_model(kw)
            return sim.Congest(**kw)
        return sim.Jitter(jitter, shape=jitter_shape)
    except ValueError as e:
        raise click.UsageError(str(e))


# --congest-model: the three probabilities, then the bad state's delay and the slot length
_CONGEST_RANGES = {"p_gb": (0.0, 1.0, False), "p_bg": (0.0, 1.0, False), "loss_bad": (0.0, 1.0, False),
                   "delay_ms": (0.0, MAX_JITTER_MS, False), "slot_ms": (0.0, 1000.0, True)}


def check_congest_model(kw: dict) -> None:
    for name, value in kw.items():
        lo, hi, lo_open = _CONGEST_RANGES[name]
        if not (math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi):
            raise ValueError(f"--congest-model: {name} = {value} is not in {'(' if lo_open else '['}{lo:g}, {hi:g}]")


def check_outputs_against_input(infile: str, outfile: str) -> None:
    """OUT and its truth file must not be IN (the input is memory-mapped while OUT is written)."""
    from throttledetect.report.output import output_problem
    from throttledetect.simulate import truth_path
    for option, path in (("OUT", outfile), ("OUT (its truth file)", truth_path(outfile))):
        problem = output_problem(path, [infile])
        if problem:
            raise click.BadParameter(f"{path}: {problem}", param_hint=option)


def check_loop(cap, loop_s: float, infile: str) -> None:
    """Refuse, before building it, a looped capture too large to hold and read back."""
    from throttledetect.read.capture import MAX_RECORDS
    ts = cap.packets.ts_ns
    span = (int(ts.max()) - int(ts.min())) / 1e9 if len(ts) else 0.0
    copies = math.ceil(loop_s / max(span, 1e-3))
    packets, size = copies * len(ts), copies * int(cap.stats["file_bytes"])
    if packets > MAX_RECORDS or size > MAX_LOOPED_BYTES:
        raise click.BadParameter(
            f"{loop_s:g} s is {copies} copies of {infile} ({span:.1f} s): {packets} packets, {size / 1e9:.1f} GB; "
            f"at most {MAX_RECORDS} packets and {MAX_LOOPED_BYTES / 1e9:.1f} GB", param_hint="--loop")


@click.command("simulate")
@click.argument("infile", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("outfile", metavar="OUT", type=OutputFile())
@click.option("--flows", "selector", default="calls", show_default=True, metavar="SELECTOR",
              help='Flows to impair: "calls" (classified as calls), "all", a label ("whatsapp_call", '
                   'comma-separated for several) or flow ids ("3,5", as `throttledetect flows` numbers them).')
@click.option("--direction", type=click.Choice(["to-local", "from-local", "both"]), default="to-local",
              show_default=True,
              help="Which direction of the flows is impaired: to-local = arriving at the capturing host "
                   "(what a capture on the client sees), from-local = leaving it (what a capture at the far "
                   "end would see).")
@click.option("--drop", type=Number(0, 1), metavar="P", help="Independent random drops, probability P.")
@click.option("--police", metavar="RATE[:BURST]",
              help="Token-bucket policer: RATE bit/s (64k, 1.5M), BURST bytes or time at the rate "
                   "(default max(1500, 20 ms worth)). Over-rate packets are dropped, none delayed.")
@click.option("--shape", metavar="RATE[:QUEUE[:BURST]]",
              help="Token-bucket shaper with a FIFO: RATE bit/s, QUEUE bytes or time at the rate (default 50ms), "
                   "BURST bucket depth (default 1500). Packets wait for tokens; queue overflow is tail-dropped.")
@click.option("--block-after", type=Number(0, MAX_SECONDS), metavar="S",
              help="Drop everything of the flows from S seconds after each one starts.")
@click.option("--congest", is_flag=True, default=False,
              help="Confounder, ALL flows: bursty Gilbert-Elliott loss (~3 %) with queueing delay, one "
                   "state shared by every flow (a congested shared link).")
@click.option("--congest-model", metavar="P_GB,P_BG,LOSS_BAD[,DELAY_MS[,SLOT_MS]]",
              help="Parameters of --congest (default 0.01,0.1,0.45,60,10: per 10 ms slot).")
@click.option("--jitter", type=Number(0, MAX_JITTER_MS), metavar="MS",
              help="Confounder, ALL flows: independent random extra delay of mean MS per packet (Wi-Fi-like).")
@click.option("--jitter-shape", type=Number(0, 1000, min_open=True), default=1.0, show_default=True,
              help="Gamma shape of --jitter delays (1 = exponential).")
@click.option("--shared-bucket", is_flag=True, default=False,
              help="--police/--shape: one bucket for all selected flows (per direction) instead of one per flow.")
@click.option("--onset", type=Number(0, MAX_SECONDS), default=0.0, show_default=True, metavar="S",
              help="Start the impairment S seconds after the capture's first packet.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Random seed (same seed, same output bytes).")
@click.option("--loop", "loop_s", type=Number(0, MAX_LOOP_S), metavar="SECONDS",
              help="First repeat the capture to at least SECONDS, RTP sequence numbers and timestamps continuous.")
@click.option("--idle-timeout", type=Number(0, MAX_IDLE_TIMEOUT_S, min_open=True), default=DEFAULT_IDLE_TIMEOUT_S,
              show_default=True, help="Seconds of silence after which a 5-tuple starts a new flow.")
@click.option("--local", "local", multiple=True, type=Networks(),
              help="Address range(s) of the capturing host's side (default: private, CGNAT, link-local, loopback).")
def command(infile, outfile, selector, direction, drop, police, shape, block_after, congest, congest_model, jitter,
            jitter_shape, shared_bucket, onset, seed, loop_s, idle_timeout, local):
    """Apply a known impairment to flows of capture IN; write OUT (pcap) and OUT.truth.json.

    Exactly one impairment: --drop, --police, --shape, --block-after (to the selected flows), or the
    confounders --congest, --jitter (to every flow). The truth file records the input (path, sha256),
    the configuration, the vantage point and the measured effect per flow and direction.
    """
    from throttledetect import simulate as sim
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.read import CaptureError, read_capture

    impairment = build_impairment(drop, police, shape, block_after, congest, congest_model, jitter, jitter_shape,
                                  shared_bucket)
    check_outputs_against_input(infile, outfile)
    nets = flatten_networks(local)
    try:
        cap = read_capture(infile)
    except CaptureError as e:
        raise click.ClickException(str(e))
    for w in cap.warnings:
        click.echo(f"throttledetect: warning: {infile}: {w}", err=True)
    if loop_s:
        check_loop(cap, loop_s, infile)
    ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=nets)
    cl = classify(cap, ft)
    if loop_s:
        try:
            cap, info = sim.loop_capture(cap, ft, cl, loop_s)
        except ValueError as e:
            raise click.ClickException(f"{infile}: cannot loop: {e}")
        ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=nets)
        cl = classify(cap, ft)
        click.echo(f"looped {info['copies']} copies to {info['looped_duration_s']:.1f} s "
                   f"({len(info['rtp_streams'])} RTP streams kept continuous)", err=True)
    try:
        result = sim.simulate(cap, ft, cl, impairment, select=selector, direction=direction, onset_s=onset,
                              seed=seed)
        truth = sim.write(result, cap, outfile)
    except ValueError as e:
        hint = " (see `throttledetect classify IN` for flow ids and labels)" if "selector" in str(e) else ""
        raise click.ClickException(f"{e}{hint}")
    m = truth["measured"]
    delay = f", mean added delay {m['delay_ms_mean']:.1f} ms (max {m['delay_ms_max']:.1f})" \
        if m["delay_ms_mean"] else ""
    click.echo(f"{outfile}: {m['packets_out']} of {m['packets_in']} packets; {impairment.kind} acted on "
               f"{m['impaired_packets']} packets in {len([f for f in truth['flows'] if f['impaired_directions']])} "
               f"flow(s) ({direction}), dropped {m['dropped']} ({100 * m['drop_fraction']:.2f} %){delay}; "
               f"truth in {truth['output']['truth']}")
