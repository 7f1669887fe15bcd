"""`analyze --verify`: the RTP stream statistics we report, checked against Wireshark's own.

Wireshark's RTP analysis is the number an engineer trusts: ``tshark -q -z rtp,streams`` with the
heuristic RTP dissector on (without SIP/SDP in the capture tshark sees RTP only when told to guess),
tshark found through pyshark's discovery (its config.ini, then PATH). Each of our RTP streams
(``metrics`` of the JSON document: per flow and direction) is matched to Wireshark's on (source,
source port, destination, destination port, SSRC), and packets, lost and maximum jitter compared:
equal counts, and jitter within 1 % or 0.0005 ms (tshark prints three decimals). Jitter is compared
only where Wireshark computes it: it knows no clock rate for a dynamic payload type without an SDP
that names it, where we estimate one.

A stream that differs is given the reason when it is one of the known ones, and `explained`:

- lost or jitter: recomputed with Wireshark's definitions (metrics.rtp, wireshark_compatible=True),
  our numbers equal Wireshark's, so the difference is one of definition (RFC 3550 A.3's expected
  packets against Wireshark's count to the last packet to arrive; an estimated clock rate or a
  clock not in whole kHz);
- packets: Wireshark hands part of the flow to another dissector, or takes for RTP what we do not;
- only Wireshark sees it: its heuristic takes any UDP payload whose first two bits read
  "version 2"; we need a payload type in RTP's ranges and sequence numbers that advance;
- only we see it: RTP inside TURN ChannelData, MS-TURN, Zoom or RFC 4571 framing, or on a port
  Wireshark gives to another dissector first (QUIC on 443 ...).

The result is the `verify` section of the document; `summary_line` is the one line the terminal
shows. It costs one tshark pass per capture (about 0.3 s for the 12 s samples, see README) and
runs only with --verify. Without tshark the section says so and nothing else changes.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

HEURISTIC_ARGS = ("--enable-heuristic", "rtp_udp")
TIMEOUT_S = 600
JITTER_REL = 0.01
JITTER_ABS_MS = 0.0005

_TABLE_START = "========================= RTP Streams ========================"
_FLOAT = r"(-?\d+(?:\.\d+)?)"
# One row as printed by ui/cli/tap-rtp.c (rtpstreams_stat_draw_cb); the payload column may hold
# several names joined by ", ", so it is matched lazily.
_ROW = re.compile(
    r"^\s*" + _FLOAT + r"\s+" + _FLOAT
    + r"\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]{8})\s+(.+?)\s+(\d+)\s+(-?\d+)\s+\(" + _FLOAT + r"%\)"
    + (r"\s+" + _FLOAT) * 6 + r"\s*(X?)\s*$"
)
NOT_FOUND = "needs tshark (Wireshark's command-line tool: apt-get install tshark), which was not found"


@dataclass(frozen=True)
class WiresharkStream:
    """One row of ``tshark -z rtp,streams``."""

    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    payload: str
    packets: int
    lost: int
    max_delta_ms: float
    min_jitter_ms: float        # -1: jitter not computed (no clock rate)
    max_jitter_ms: float
    problem: bool

    @property
    def key(self) -> tuple[str, int, str, int, int]:
        return (self.src, self.sport, self.dst, self.dport, self.ssrc)

    @property
    def jitter_computed(self) -> bool:
        return self.min_jitter_ms != -1.0


def rtp_stream_rows(text: str) -> list[tuple]:
    """The fields of each row of the table tshark prints for ``-z rtp,streams`` (the groups of
    _ROW: start, end, src, sport, dst, dport, ssrc hex, payload, packets, lost, lost %, min/mean/max
    delta, min/mean/max jitter, problem flag); ValueError when there is no table or a row is not one."""
    lines = text.splitlines()
    try:
        start = lines.index(_TABLE_START)
    except ValueError:
        raise ValueError("no RTP stream table in tshark's output") from None
    rows = []
    for line in lines[start + 2:]:          # skip the column header line
        if line.startswith("====="):
            break
        m = _ROW.match(line)
        if m is None:
            raise ValueError(f"unparsable RTP stream row: {line.strip()[:120]!r}")
        rows.append(m.groups())
    return rows


def parse_rtp_streams(text: str) -> list[WiresharkStream]:
    """Rows of the table tshark prints for ``-z rtp,streams``; ValueError when there is none."""
    return [WiresharkStream(src=g[2], sport=int(g[3]), dst=g[4], dport=int(g[5]), ssrc=int(g[6], 16),
                            payload=g[7], packets=int(g[8]), lost=int(g[9]), max_delta_ms=float(g[13]),
                            min_jitter_ms=float(g[14]), max_jitter_ms=float(g[16]), problem=g[17] == "X")
            for g in rtp_stream_rows(text)]


def wireshark_streams(tshark: str, path: str) -> list[WiresharkStream]:
    args = [tshark, *HEURISTIC_ARGS, "-n", "-q", "-z", "rtp,streams", "-r", path]
    out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    # tshark exits non-zero on a capture cut short, and still prints the table.
    try:
        return parse_rtp_streams(out.stdout)
    except ValueError as e:
        err = " ".join(out.stderr.split())[-200:]
        raise ValueError(f"{e} (tshark exit {out.returncode}{': ' + err if err else ''})") from None


def _tshark_input(cap, tmp: str) -> str:
    """A file tshark can read holding the capture: the file itself, or its bytes (decompressed,
    or read from standard input) written to `tmp`."""
    if "+" not in cap.format and os.path.isfile(cap.path):
        return cap.path
    path = os.path.join(tmp, "capture." + cap.format.split("+")[0])
    cap.buffer.tofile(path)
    return path


# --- comparison -----------------------------------------------------------------------------------


def _close(ours: float | None, theirs: float) -> bool:
    return ours is not None and abs(ours - theirs) <= max(JITTER_REL * abs(theirs), JITTER_ABS_MS + 1e-9)


def _round(x):
    return None if x is None else round(float(x), 4)


def _ours_json(stats) -> dict:
    return {"packets": int(stats.packets), "lost": int(stats.lost), "max_jitter_ms": _round(stats.max_jitter_ms)}


def _theirs_json(w: WiresharkStream) -> dict:
    return {"packets": w.packets, "lost": w.lost,
            "max_jitter_ms": w.max_jitter_ms if w.jitter_computed else None, "payload": w.payload,
            "problem": w.problem}


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _compare(ours: list, w: WiresharkStream, encap_of=None, cap=None, offset_of=None) -> dict:
    """One stream both report: ours is every RtpStreamMetrics of ours with Wireshark's key."""
    entry: dict = {}
    if len(ours) > 1:
        flows = {m.stream.flow for m in ours}
        packets = sum(int(m.stats.packets) for m in ours)
        entry["ours"] = {"packets": packets, "lost": None, "max_jitter_ms": None}
        entry["wireshark"] = _theirs_json(w)
        entry["agree"] = False
        entry["explained"] = True
        entry["reason"] = ("the 5-tuple was split into several flows by the idle timeout; Wireshark keeps one stream"
                           if len(flows) > 1 else
                           "we split this SSRC by payload type (each has its own sequence numbers); Wireshark keeps "
                           "one stream")
        entry["compared"] = []
        return entry
    m = ours[0]
    s = m.stats
    entry["ours"] = _ours_json(s)
    entry["wireshark"] = _theirs_json(w)
    compared = ["packets", "lost"]
    differs = []
    if s.packets != w.packets:
        differs.append("packets")
    if s.lost != w.lost:
        differs.append("lost")
    notes = []
    if w.jitter_computed:
        compared.append("max_jitter_ms")
        if not _close(s.max_jitter_ms, w.max_jitter_ms):
            differs.append("max_jitter_ms")
    elif s.max_jitter_ms is not None:
        pts = sorted(set(int(p) for p in s.payload_types))
        notes.append(f"jitter not compared: Wireshark has no clock rate for payload type {', '.join(map(str, pts))} "
                     f"without an SDP naming it (ours uses {s.clock_rate} Hz)")
    entry["compared"] = compared
    entry["agree"] = not differs
    if differs:
        reason, explained = _why(m, w, differs, encap_of, cap, offset_of)
        entry["explained"] = explained
        notes.insert(0, reason)
    if notes:
        entry["reason"] = "; ".join(notes)
    return entry


def _framed(m, encap_of) -> dict[str, int]:
    """Packets of our stream by encapsulation other than plain RTP over UDP: {'turn-channel': 6}."""
    if encap_of is None:
        return {}
    from throttledetect.metrics.flow import ENCAP_NAMES
    import numpy as np
    e = np.asarray(encap_of)[m.stream.packet_index]
    kinds, counts = np.unique(e[e > 0], return_counts=True)
    return {ENCAP_NAMES.get(int(k), str(int(k))): int(c) for k, c in zip(kinds, counts)}


def _bad_padding(m, cap, offset_of) -> int:
    """Packets of our stream whose padding bit is set and whose padding count (the last byte) is 0 or
    longer than what follows the header: SRTP encrypts the padding, so the count is noise, and
    Wireshark's heuristic refuses such a packet."""
    if cap is None or offset_of is None:
        return 0
    t, buf, n = cap.packets, cap.buffer, 0
    for row in m.stream.packet_index.tolist():
        start = int(t.payload_off[row]) + int(offset_of[row])
        end = int(t.payload_off[row]) + int(t.payload_len[row])
        if start < 0 or end - start < 12 or not buf[start] & 0x20:
            continue
        head = 12 + 4 * int(buf[start] & 0x0F)
        if buf[start] & 0x10 and start + head + 4 <= end:
            head += 4 + 4 * (int(buf[start + head + 2]) << 8 | int(buf[start + head + 3]))
        pad = int(buf[end - 1])
        if pad == 0 or pad > end - start - head:
            n += 1
    return n


def _why(m, w: WiresharkStream, differs: list[str], encap_of=None, cap=None, offset_of=None) -> tuple[str, bool]:
    s = m.stats
    if "packets" in differs:
        d = int(s.packets) - w.packets
        framed = _framed(m, encap_of)
        if d > 0 and sum(framed.values()) == d:
            where = ", ".join(f"{n} inside {k} framing" for k, n in framed.items())
            return (f"packets: {where} in the same flow; Wireshark's heuristic reads only the plain RTP (it counts "
                    "the others lost)"), True
        if d > 0 and _bad_padding(m, cap, offset_of) == d:
            return (f"packets: {d} of ours have the padding bit set and a padding count longer than the packet "
                    "(SRTP encrypts the padding, so the count is noise); Wireshark's heuristic refuses them and counts "
                    "them lost"), True
        if d > 0:
            return (f"packets: Wireshark counts {d} fewer; it may have handed part of the flow to another dissector "
                    "(T.38 after a re-INVITE, a protocol registered on the port): not verified"), False
        return (f"packets: Wireshark counts {-d} more; its heuristic may take packets that are not RTP to us "
                "(payload type out of range, a sequence number that does not advance): not verified"), False
    try:
        ws = m.stream.stats(wireshark_compatible=True)
    except Exception:  # noqa: BLE001 - an explanation, never a failure
        ws = None
    parts, explained = [], ws is not None
    if "lost" in differs:
        if ws is not None and ws.lost == w.lost:
            parts.append(f"lost: ours follows RFC 3550 A.3 (highest minus lowest sequence number received, "
                         f"{s.lost}); counted Wireshark's way (first to the last packet to arrive) it is {ws.lost} "
                         "as in Wireshark: late or duplicated packets at the stream's ends")
        else:
            parts.append(f"lost: ours {s.lost}, Wireshark {w.lost}, ours counted Wireshark's way "
                         f"{ws.lost if ws is not None else '?'}: not explained")
            explained = False
    if "max_jitter_ms" in differs:
        if ws is not None and _close(ws.max_jitter_ms, w.max_jitter_ms):
            parts.append(f"max jitter: ours uses a clock of {s.clock_rate} Hz; with Wireshark's (whole kHz, or none "
                         f"for a dynamic payload type) it is {_round(ws.max_jitter_ms)} ms as in Wireshark")
        else:
            parts.append(f"max jitter: ours {_round(s.max_jitter_ms)} ms, Wireshark {w.max_jitter_ms} ms: not "
                         "explained")
            explained = False
    return "; ".join(parts), explained


def _only_ours(m) -> tuple[str, bool]:
    st = m.stream
    if st.encap != "plain":
        if st.encap == "tcp":
            return "RTP over TCP (RFC 4571 framing): Wireshark's heuristic reads RTP over UDP only", True
        return (f"RTP inside {st.encap} framing: Wireshark's heuristic reads RTP directly over UDP only", True)
    ports = {st.sport, st.dport}
    if 443 in ports:
        return "UDP port 443: Wireshark gives it to QUIC before any heuristic runs (RTP and QUIC share the flow)", True
    return ("Wireshark's heuristic did not take this flow (a dissector registered on its port, or on a port seen "
            "earlier in the conversation, claims it)"), False


def _only_theirs(w: WiresharkStream) -> tuple[str, bool]:
    if w.packets <= 3 or w.lost < 0:
        return ("not RTP to us: Wireshark's heuristic takes any UDP payload whose first two bits read version 2; "
                f"this is {w.packets} packet(s) ({w.payload}) with no stream behind them"), True
    return (f"we found no RTP stream here ({w.packets} packets, {w.payload}): our RTP test needs a payload type in "
            "RTP's ranges and sequence numbers that advance"), False


def verify_capture(ci: int, analysis, tshark: str) -> tuple[list[dict], dict]:
    """(stream entries, capture entry) of one analysed capture."""
    cap = analysis.capture
    ev = getattr(getattr(analysis, "classification", None), "evidence", None)
    encap_of = getattr(ev, "rtp_encap_of", None)
    offset_of = getattr(ev, "rtp_offset_of", None)
    ours: dict[tuple, list] = {}
    for fm in analysis.metrics or ():
        for m in fm.rtp_streams:
            st = m.stream
            ours.setdefault((st.src, st.sport, st.dst, st.dport, st.ssrc), []).append(m)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="throttledetect-verify-") as tmp:
        theirs = {w.key: w for w in wireshark_streams(tshark, _tshark_input(cap, tmp))}
    seconds = time.perf_counter() - t0
    entries = []
    for key in list(ours) + [k for k in theirs if k not in ours]:
        src, sport, dst, dport, ssrc = key
        ms = ours.get(key, [])
        w = theirs.get(key)
        e = {"capture": ci, "flow": f"{ci}:{ms[0].stream.flow}" if ms else None,
             "src": _endpoint(src, sport), "dst": _endpoint(dst, dport), "ssrc": f"0x{ssrc:08X}"}
        if ms and w is not None:
            e.update(_compare(ms, w, encap_of, cap, offset_of))
        elif ms:
            reason, explained = _only_ours(ms[0])
            e.update(ours=_ours_json(ms[0].stats) if len(ms) == 1 else
                     {"packets": sum(int(m.stats.packets) for m in ms), "lost": None, "max_jitter_ms": None},
                     wireshark=None, compared=[], agree=False, explained=explained, reason=reason)
        else:
            reason, explained = _only_theirs(w)
            e.update(ours=None, wireshark=_theirs_json(w), compared=[], agree=False, explained=explained,
                     reason=reason)
        entries.append(e)
    return entries, {"capture": ci, "path": cap.path, "streams": len(entries), "seconds": round(seconds, 3)}


def verify_analyses(analyses: list, *, progress=None) -> dict:
    """The `verify` section of the document for these analyses (pipeline.CaptureAnalysis). Never raises
    for a missing or failing tshark: the section says what happened."""
    from throttledetect.read.fallback import find_tshark, tshark_version
    tshark = find_tshark()
    if tshark is None:
        return {"available": False, "reason": f"--verify {NOT_FOUND}", "streams": []}
    version = tshark_version(tshark)
    section: dict = {"available": True, "tool": f"tshark {version}".strip(), "method":
                     "tshark " + " ".join(HEURISTIC_ARGS) + " -n -q -z rtp,streams (found through pyshark)",
                     "captures": [], "streams": []}
    t0 = time.perf_counter()
    for ci, a in enumerate(analyses):
        if progress:
            progress.show(f"verifying {a.capture.path} against Wireshark (tshark -z rtp,streams)")
        try:
            entries, info = verify_capture(ci, a, tshark)
        except Exception as e:  # noqa: BLE001 - one capture's failure is said, not fatal
            section["captures"].append({"capture": ci, "path": a.capture.path,
                                        "error": " ".join(f"{type(e).__name__}: {e}".split())[:300]})
            continue
        section["captures"].append(info)
        section["streams"] += entries
    s = section["streams"]
    section["seconds"] = round(time.perf_counter() - t0, 3)
    section["total"] = len(s)
    section["agree"] = sum(1 for e in s if e["agree"])
    section["explained"] = sum(1 for e in s if not e["agree"] and e.get("explained"))
    section["unexplained"] = sum(1 for e in s if not e["agree"] and not e.get("explained"))
    return section


def summary_line(section: dict | None) -> str:
    """The one line the terminal shows: 'Verified against Wireshark (tshark 4.0.17): 4 of 4 RTP streams agree'."""
    if not section:
        return ""
    if not section.get("available"):
        return f"Verified against Wireshark: not done: {section.get('reason', NOT_FOUND)}"
    failed = [c for c in section.get("captures", []) if "error" in c]
    head = f"Verified against Wireshark ({section.get('tool', 'tshark')}, {section.get('seconds', 0):.1f} s)"
    if section["total"] == 0 and not failed:
        return f"{head}: no RTP stream, by us or by Wireshark"
    text = f"{head}: {section['agree']} of {section['total']} RTP streams agree"
    more = []
    if section["explained"]:
        more.append(f"{section['explained']} differ for a known reason")
    if section["unexplained"]:
        more.append(f"{section['unexplained']} differ unexplained")
    if failed:
        more.append(f"tshark failed on {len(failed)} capture(s)")
    if more:
        text += "; " + ", ".join(more) + " (--format json: 'verify')"
    return text
