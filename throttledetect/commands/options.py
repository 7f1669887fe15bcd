"""Options shared by the commands, checked by click types before any work is done.

Every number has a range it makes sense in, NaN and infinities are refused, output files are
checked (folder exists and is writable, not one of the inputs) when the options are parsed, so a
mistake costs one line and no waiting. Option groups are plain lists of click decorators: a
command takes a group with `@options(GROUP)`, and a new analysis option is one more entry in
ANALYSIS_OPTIONS plus its key in analysis_settings().
"""
from __future__ import annotations

import ipaddress
import math
import re

import click

# Exit statuses (README "Exit statuses"): scripts and regression suites test these.
EXIT_OK = 0              # results written; nothing asked for by --fail-on was found
EXIT_FOUND = 1           # --fail-on: throttling (or what was asked for) was found
EXIT_BAD_INPUT = 2       # bad options, or an input that could not be read (results for the others are written)
EXIT_INTERNAL = 3        # a bug: one line on stderr, THROTTLEDETECT_DEBUG=1 for the traceback
EXIT_INTERRUPTED = 130   # Ctrl-C

# flows.DEFAULT_IDLE_TIMEOUT_S, restated: importing flows (numba) here would slow `--help` (a test keeps them equal)
DEFAULT_IDLE_TIMEOUT_S = 60.0
MAX_IDLE_TIMEOUT_S = 1e6          # timestamps are integer ns: larger values overflow, and 11 days is plenty
MAX_SECONDS = 1e6                 # any time offset into a capture (onsets, blocking, loops)


class Number(click.FloatRange):
    """A finite float within a range (click's FloatRange lets NaN through: every comparison with
    NaN is false, so NaN is never "out of range")."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


class Networks(click.ParamType):
    """Address ranges, comma-separated (an option that may be repeated): a list of ip_network."""

    name = "CIDR"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        nets = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                self.fail(f"{part!r} is not an address or CIDR", param, ctx)
        return nets


def flatten_networks(values) -> list | None:
    nets = [n for group in values or () for n in group]
    return nets or None


_TAG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")


class Tag(click.ParamType):
    """KEY=VALUE (e.g. isp=acme, city=Kazan): a label stored with a result."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not _TAG_KEY.fullmatch(key):
            self.fail(f"{value!r}: give KEY=VALUE, KEY a letter then letters, digits, '_', '.', '-' "
                      "(at most 40)", param, ctx)
        if not val or len(val) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in val):
            self.fail(f"{value!r}: the value must be 1-200 printable characters", param, ctx)
        return key, val


class OutputFile(click.Path):
    """A file a result will be written to: refused at once when it cannot be (a folder, a missing
    or read-only folder). That it is not one of the inputs is checked by check_outputs()."""

    def __init__(self):
        super().__init__(dir_okay=False, allow_dash=False)

    def convert(self, value, param, ctx):
        from throttledetect.report.output import output_problem
        value = super().convert(value, param, ctx)
        problem = output_problem(value)
        if problem:
            self.fail(f"{click.format_filename(value)}: {problem}", param, ctx)
        return value


def check_outputs(outputs: dict, inputs) -> None:
    """Each named output (option name -> path or None) must not be one of the inputs, nor another output."""
    from throttledetect.report.output import output_problem
    seen = {}
    for option, path in outputs.items():
        if not path:
            continue
        problem = output_problem(path, [p for p in inputs if p != "-"])
        if problem:
            raise click.BadParameter(f"{click.format_filename(path)}: {problem}", param_hint=option)
        key = _identity(path)
        if key in seen:
            raise click.BadParameter(f"{click.format_filename(path)} is also given to {seen[key]}", param_hint=option)
        seen[key] = option


def _identity(path: str):
    import os
    return os.path.realpath(path)


def options(group):
    """Apply a list of click decorators (an option group) to a command function."""
    def decorate(fn):
        for deco in reversed(group):
            fn = deco(fn)
        return fn
    return decorate


FILES = click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True), metavar="FILE|DIR|-...")

READ_OPTIONS = [
    click.option("--idle-timeout", type=Number(0, MAX_IDLE_TIMEOUT_S, min_open=True), default=DEFAULT_IDLE_TIMEOUT_S,
                 show_default=True, metavar="SECONDS",
                 help="Seconds of silence after which a 5-tuple starts a new flow (0 < S <= 1e6)."),
    click.option("--local", "local", multiple=True, type=Networks(),
                 help="Address range(s) of the capturing host's side (repeatable or comma-separated). "
                      "Default: private, CGNAT, link-local and loopback ranges."),
]

OUTPUT = click.option("-o", "--output", type=OutputFile(), metavar="FILE",
                      help="Write to FILE (atomically: an existing FILE is replaced only by a complete result).")

ANALYSIS_OPTIONS = [
    click.option("--bin", "bin_s", type=Number(0.01, 3600), default=1.0, show_default=True, metavar="SECONDS",
                 help="Rate-series bin width, seconds (0.01-3600)."),
    click.option("--alpha", type=Number(0, 1, min_open=True, max_open=True), default=None,
                 help="False-discovery rate over every test of a capture (Benjamini-Hochberg), 0 < alpha < 1 "
                      "[default: 0.02, the validation's calibration point]."),
    click.option("--test", "test_scope", type=click.Choice(["calls", "all"]), default="calls", show_default=True,
                 help="Which flows to test: the call flows, or every flow with enough packets (TCP downloads, "
                      "calls that fell back to TCP, captures taken at a server)."),
    click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE", callback=lambda c, p, v:
                 parse_thresholds(v),
                 help="Override a decision threshold (repeatable): floor.dropping, floor.policing, floor.shaping, "
                      "floor.shaping_spacing, floor.blocking, floor.setup (alpha has its own option). The JSON "
                      "output records every threshold used."),
]


def parse_thresholds(values) -> dict:
    """NAME=VALUE items to a dict, names checked against the decision thresholds (verdicts.DEFAULTS)."""
    from throttledetect.verdicts import DEFAULTS
    out = {}
    for item in values or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULTS or name == "alpha":
            known = ", ".join(k for k in DEFAULTS if k != "alpha")
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE with NAME one of {known}",
                                     param_hint="--threshold")
        try:
            v = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {value!r} is not a number", param_hint="--threshold") from None
        if not math.isfinite(v) or v < 0:
            raise click.BadParameter(f"{item!r}: the value must be a finite number >= 0", param_hint="--threshold")
        out[name] = v
    return out


def analysis_settings(params: dict) -> dict:
    """The keyword arguments of pipeline.analyze_capture from a command's parameters."""
    return {"idle_timeout": params["idle_timeout"], "local_nets": flatten_networks(params.get("local")),
            "bin_s": params.get("bin_s", 1.0), "alpha": params.get("alpha"),
            "test": params.get("test_scope", "calls"), "thresholds": params.get("thresholds") or {}}


VERIFY = click.option(
    "--verify", is_flag=True,
    help="Also check the RTP stream statistics (packets, lost, max jitter) against Wireshark's own "
         "(tshark -z rtp,streams, found through pyshark; needs tshark): a 'verify' section in --format json and "
         "one line in the table. Costs one tshark pass per capture.")

FAIL_ON = click.option(
    "--fail-on", type=click.Choice(["never", "throttled", "inconclusive"]), default="never", show_default=True,
    help="Exit status 1 when a protocol's verdict is a throttling kind (throttled), or that or "
         "inconclusive (inconclusive); for scripts and regression suites.")
