"""RTP stream statistics: loss, reordering, jitter, delay and silence of one RTP stream.

RFC 3550 (RTP) defines the extended sequence number (A.1), expected and lost packets (A.3)
and the interarrival jitter estimator J += (|D| - J) / 16 (6.4.1, A.8). RFC 3551 assigns the
static payload types and their clock rates.

Where RFC 3550 leaves room, the numbers follow Wireshark's RTP analysis
(ui/tap-rtp-analysis.c, ui/tap-rtp-common.c, as in Wireshark 4.0), so that they equal what
an engineer reads in ``tshark -q -z rtp,streams`` or Telephony > RTP > RTP Streams:

- A packet is *regular* unless it is the first, has the marker bit (the start of a
  talkspurt, RFC 3551 4.1: the gap before it is silence, not delay), is comfort noise
  (PT 13 or 19) or follows comfort noise, or carries an RTP timestamp from before the
  stream's first packet. Only regular packets enter min/mean/max delta and jitter.
- Delta is the arrival gap to the previous packet (ms). Jitter is RFC 3550's estimator,
  D taken between a packet and the previous packet whose timestamp was not before the
  stream's first one.
- Mean delta and mean jitter are Wireshark's running means: at each regular packet,
  mean = (mean * (k - 1) + x) / k with k the number of packets before it, non-regular ones
  included. With every packet regular this is the plain mean over the n - 1 gaps.
- Sequence errors count the packets whose sequence number was not the previous one plus
  one (a jump forward, or a late or duplicated packet), as Wireshark's "Seq errs".
- Payload types with no clock rate known to Wireshark (dynamic PTs 96-127 without an SDP
  that names them, or unassigned ones) get no jitter: tshark prints min -1, mean and max 0.

``wireshark_compatible=True`` reproduces tshark's numbers exactly; the default departs from
Wireshark only where Wireshark departs from RFC 3550 or lacks information:

=====================  ===========================================  ================================
quantity               default                                      wireshark_compatible
=====================  ===========================================  ================================
expected, lost         RFC 3550 A.3: highest minus lowest extended  first packet's sequence number
                       sequence number received, plus one            to the last *arrived* one, with
                                                                     Wireshark's wrap heuristic
dynamic PT clock rate  ``clock_rate`` if given, else estimated from  ``clock_rate`` if given (as an
                       the timestamps (``estimate_clock_rate``)      SDP would), else none: no jitter
ticks per ms           clock_rate / 1000                             integer clock_rate // 1000
                                                                     (44100 Hz counts as 44 kHz)
=====================  ===========================================  ================================

Everything else (loss runs, duplicates, reordering, one-way delay, DTX) is RFC 3550 based,
computed with numpy over the whole stream; Wireshark's per-packet state machine (sequence
errors, jitter, deltas) is a recurrence and runs as one compiled loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from throttledetect.jit import njit
from throttledetect.read.table import FRAG_LATER, address_text
from throttledetect.wire.rtp import (COMMON_CLOCK_RATES, DYNAMIC_PT_FIRST, RTP_HEADER_LEN, SEQ_MOD,  # noqa: F401
                                     STATIC_CLOCK_RATES, TS_MOD, clock_rate_for, rtp_fields, rtp_header_mask, unwrap)



PT_CN = 13        # comfort noise, RFC 3389
PT_CN_OLD = 19    # the old comfort-noise assignment Wireshark still honours


# A timestamp step this many packet-times long, without a sequence gap, is a pause of the
# sender (DTX), not loss: one missing packet-time would already be a step of 2.
DTX_GAP_FACTOR = 1.5


def estimate_clock_rate(arrival_s: np.ndarray, rtp_ts: np.ndarray, seq: np.ndarray | None = None) -> int | None:
    """Clock rate of a stream whose payload type is dynamic, from its own timestamps: the one
    estimator of the project (streams.rtp.clock_rate), which the slope only proposes to."""
    from throttledetect.streams.rtp import clock_rate
    t = np.asarray(arrival_s, dtype=np.float64)
    ts = unwrap(rtp_ts, TS_MOD)
    return clock_rate(DYNAMIC_PT_FIRST, t, None if seq is None else unwrap(seq, SEQ_MOD), ts)


@dataclass(frozen=True)
class DtxPeriod:
    """A pause of the sender: the RTP timestamp jumped by more than a packet-time while the
    sequence number advanced by one, so no packet was lost (RFC 3551 4.1, RFC 3389).
    In a video stream the same sign means frames the encoder did not send."""

    seq: int            # extended sequence number of the first packet after the pause
    start_s: float      # arrival of the last packet before the pause
    end_s: float        # arrival of the first packet after it
    silence_ms: float   # timestamp jump minus one packet-time (arrival gap if no clock rate)


@dataclass(frozen=True, eq=False)
class RtpStreamStats:
    """Statistics of one RTP stream; see the module docstring for the definitions.

    Quantities Wireshark reports are None where Wireshark prints -1 or has nothing to
    average (no regular packet, no clock rate).
    """

    packets: int
    bytes: int                     # sum of the sizes given (RTP header + payload, as passed in)
    duration_s: float              # first to last arrival
    payload_types: tuple[int, ...]  # in order of first appearance
    clock_rate: int | None         # Hz: used for delay and DTX (and jitter of dynamic PTs)
    wireshark_compatible: bool

    first_seq: int                 # lowest extended sequence number received (RFC 3550 A.1)
    last_seq: int                  # highest extended sequence number received
    expected: int
    lost: int                      # expected - packets; negative when duplicates outnumber losses
    loss_runs: np.ndarray          # lengths of the runs of missing sequence numbers, in order
    duplicates: int                # packets whose sequence number was already received
    reordered: int                 # packets arriving after a higher sequence number (not dups)
    sequence_errors: int           # Wireshark's count of packets out of sequence
    problem: bool                  # Wireshark's "Problems?" flag: wrong sequence or timestamp

    min_delta_ms: float | None
    mean_delta_ms: float | None
    max_delta_ms: float | None     # longest arrival gap before a regular packet

    jitter_ms: np.ndarray          # running RFC 3550 jitter after each packet, NaN if not computed
    min_jitter_ms: float | None
    mean_jitter_ms: float | None
    max_jitter_ms: float | None

    delay_ms: np.ndarray | None    # arrival minus RTP timestamp, minus its minimum (None: no clock)
    ptime_ms: float | None         # packet-time: median timestamp step between consecutive packets
    dtx_periods: tuple[DtxPeriod, ...] = field(default=())

    @property
    def loss_fraction(self) -> float:
        """Lost / expected, 0 when nothing was lost (duplicates do not make it negative)."""
        return max(self.lost, 0) / self.expected if self.expected > 0 else 0.0


# Result slots of _wireshark_analysis (a numba function returns one flat float array).
_SEQUENCE_ERRORS, _CYCLES, _START_SEQ, _STOP_SEQ, _PROBLEM = 0, 1, 2, 3, 4
_MIN_DELTA, _MEAN_DELTA, _MAX_DELTA, _MIN_JITTER, _MEAN_JITTER, _MAX_JITTER = 5, 6, 7, 8, 9, 10
_N_RESULTS = 11


@njit
def _wireshark_analysis(t_ms, seq, ts, marker, pt, ticks_per_ms, jitter_out):
    """Wireshark's rtppacket_analyse (ui/tap-rtp-analysis.c, 4.0) over one stream.

    t_ms: arrival (ms, any origin); seq, ts: 16- and 32-bit header values as int64;
    ticks_per_ms: RTP clock ticks per ms of each packet's payload type, 0 where unknown.
    Fills jitter_out (NaN where no jitter was computed) and returns the _* result slots.
    """
    n = t_ms.shape[0]
    res = np.zeros(_N_RESULTS)
    start_seq = seq[0]
    stop_seq = seq[0]
    seq_num = seq[0]
    first_ts = ts[0]
    last_time = t_ms[0]      # arrival of the last packet whose timestamp was in sequence
    last_nominal = 0.0       # its timestamp, in ms from the first packet's
    prev_pt = pt[0]
    delta = 0.0
    min_delta = -1.0
    max_delta = 0.0
    mean_delta = 0.0
    jitter = 0.0
    min_jitter = -1.0
    max_jitter = 0.0
    mean_jitter = 0.0
    cycles = 0
    under = False            # past a wrap, not yet back above the first sequence number
    sequence_errors = 0
    problem = False
    jitter_out[0] = 0.0 if ticks_per_ms[0] > 0 else np.nan
    for i in range(1, n):
        s = seq[i]
        stamp = ts[i]
        now = t_ms[i]
        total_nr = i          # packets analysed before this one

        # "In time sequence" means not before the first packet's timestamp (within half
        # the 32-bit space); a packet from before it is late beyond repair.
        if stamp >= first_ts:
            in_time = (stamp - first_ts) < 0x80000000
        else:
            in_time = (0xFFFFFFFF - first_ts) + stamp < 0x80000000
        wrong = not in_time

        if s < start_seq and in_time and not under:
            cycles += 1
            under = True
        elif s == 0 and stop_seq == 65535 and in_time and not under:
            cycles += 1
            under = True
        elif s > start_seq and in_time and under:
            under = False

        if in_time and seq_num + 1 == s:
            seq_num = s
        elif in_time and seq_num == 65535 and s == 0:
            seq_num = s
        elif in_time and (seq_num + 1 < s or seq_num - s > 0xFF00):
            # a jump forward, or so far back that the packets that wrapped were lost
            seq_num = s
            sequence_errors += 1
            wrong = True
        elif seq_num + 1 > s:
            # late or duplicated
            sequence_errors += 1
            wrong = True

        follows_cn = prev_pt == PT_CN or prev_pt == PT_CN_OLD
        is_cn = pt[i] == PT_CN or pt[i] == PT_CN_OLD
        prev_pt = pt[i]
        tpm = ticks_per_ms[i]

        current_jitter = 0.0
        jitter_out[i] = np.nan
        if in_time:
            if tpm > 0:
                nominal = ((stamp - first_ts) % 0x100000000) / tpm
                expected_time = last_time + (nominal - last_nominal)
                current_jitter = (15.0 * jitter + abs(now - expected_time)) / 16.0
                jitter = current_jitter
                jitter_out[i] = jitter
                last_nominal = nominal
            delta = now - last_time

        if not (marker[i] or is_cn or follows_cn or not in_time):
            if delta > max_delta:
                max_delta = delta
            if min_delta == -1.0 or delta < min_delta:
                min_delta = delta
            mean_delta = (mean_delta * (total_nr - 1) + delta) / total_nr
            if tpm > 0:
                if jitter > max_jitter:
                    max_jitter = jitter
                mean_jitter = (mean_jitter * (total_nr - 1) + current_jitter) / total_nr
                if min_jitter == -1.0 or jitter < min_jitter:
                    min_jitter = jitter

        if wrong:
            problem = True
        if in_time:
            last_time = now
        stop_seq = s

    res[_SEQUENCE_ERRORS] = sequence_errors
    res[_CYCLES] = cycles
    res[_START_SEQ] = start_seq
    res[_STOP_SEQ] = stop_seq
    res[_PROBLEM] = 1.0 if problem else 0.0
    res[_MIN_DELTA] = min_delta
    res[_MEAN_DELTA] = mean_delta
    res[_MAX_DELTA] = max_delta
    res[_MIN_JITTER] = min_jitter
    res[_MEAN_JITTER] = mean_jitter
    res[_MAX_JITTER] = max_jitter
    return res


def _ticks_per_ms(payload_type: np.ndarray, dynamic_rate: int | None, wireshark_compatible: bool) -> np.ndarray:
    """Clock ticks per ms for each packet: static PTs from RFC 3551, others `dynamic_rate`."""
    table = np.zeros(128, dtype=np.float64)
    for pt, rate in STATIC_CLOCK_RATES.items():
        table[pt] = rate
    if dynamic_rate:
        table[DYNAMIC_PT_FIRST:] = dynamic_rate
    if wireshark_compatible:
        table = np.floor(table / 1000.0)   # Wireshark divides by (clock_rate / 1000) in integers
    else:
        table = table / 1000.0
    return table[np.asarray(payload_type, dtype=np.int64) & 0x7F]


def rtp_stream_stats(
    arrival_s,
    seq,
    rtp_ts,
    marker,
    payload_type,
    sizes,
    clock_rate: int | None = None,
    *,
    wireshark_compatible: bool = False,
) -> RtpStreamStats:
    """Statistics of one RTP stream (one SSRC from one source to one destination).

    Arrays are per packet, in arrival (capture) order: arrival_s (seconds, any origin),
    seq (16-bit), rtp_ts (32-bit), marker (bool), payload_type (0-127), sizes (bytes).
    clock_rate (Hz) is the rate of the stream's dynamic payload types, as an SDP would
    give it (also used for delay and DTX when given); static payload types always use
    RFC 3551's rates in the jitter. See the module docstring for what
    `wireshark_compatible` changes.
    """
    t = np.asarray(arrival_s, dtype=np.float64)
    n = len(t)
    if n == 0:
        raise ValueError("an RTP stream has at least one packet")
    seq16 = np.asarray(seq, dtype=np.int64) & 0xFFFF
    ts32 = np.asarray(rtp_ts, dtype=np.int64) & 0xFFFFFFFF
    mark = np.asarray(marker, dtype=bool)
    pt = np.asarray(payload_type, dtype=np.int64) & 0x7F
    size = np.asarray(sizes, dtype=np.int64)
    if not (len(seq16) == len(ts32) == len(mark) == len(pt) == len(size) == n):
        raise ValueError("per-packet arrays of an RTP stream must have the same length")

    # Payload types by first appearance; the most frequent one gives the stream's clock.
    pts, first_at, counts = np.unique(pt, return_index=True, return_counts=True)
    payload_types = tuple(int(p) for p in pts[np.argsort(first_at)])
    main_pt = int(pts[np.argmax(counts)])
    estimated = estimate_clock_rate(t, ts32, seq16) if clock_rate is None else None
    if clock_rate is not None:
        stream_clock = clock_rate
    elif main_pt < DYNAMIC_PT_FIRST and clock_rate_for(main_pt):
        stream_clock = clock_rate_for(main_pt)
    else:
        stream_clock = estimated
    # tshark without the SDP does not know a dynamic PT's rate, and does not guess it.
    dynamic_rate = clock_rate if (clock_rate is not None or wireshark_compatible) else estimated

    # Wireshark's per-packet analysis (a recurrence: compiled loop).
    t_ms = (t - t[0]) * 1e3
    jitter = np.empty(n, dtype=np.float64)
    ws = _wireshark_analysis(t_ms, seq16, ts32, mark, pt,
                             _ticks_per_ms(pt, dynamic_rate, wireshark_compatible), jitter)

    # RFC 3550 A.1 / A.3 over the extended sequence numbers.
    ext = unwrap(seq16, SEQ_MOD)
    received, first_idx = np.unique(ext, return_index=True)
    first_seen = np.zeros(n, dtype=bool)
    first_seen[first_idx] = True
    duplicates = n - len(received)
    highest_before = np.maximum.accumulate(ext)[:-1]
    reordered = int(np.count_nonzero((ext[1:] < highest_before) & first_seen[1:]))
    gaps = np.diff(received) - 1
    loss_runs = gaps[gaps > 0]
    first_seq, last_seq = int(received[0]), int(received[-1])
    if wireshark_compatible:
        expected = int(ws[_STOP_SEQ] + ws[_CYCLES] * SEQ_MOD - ws[_START_SEQ] + 1)
    else:
        expected = last_seq - first_seq + 1

    # Delay and DTX over the extended timestamps.
    ts_ext = unwrap(ts32, TS_MOD)
    delay_ms = None
    from throttledetect.streams.rtp import one_timeline    # the one reading of a sender's clock resets
    timeline = one_timeline(t, (ts_ext - ts_ext[0]) / stream_clock) if stream_clock else None
    if timeline is not None:
        delay_ms = (timeline[0] - timeline[0].min()) * 1e3
    ptime_ms, dtx = _dtx_periods(t, ext, ts_ext, stream_clock)

    def known(value: float) -> float | None:
        return None if ws[_MIN_DELTA] == -1.0 else float(value)

    def jitter_known(value: float) -> float | None:
        return None if ws[_MIN_JITTER] == -1.0 else float(value)

    return RtpStreamStats(
        packets=n,
        bytes=int(size.sum()),
        duration_s=float(t.max() - t.min()),
        payload_types=payload_types,
        clock_rate=stream_clock,
        wireshark_compatible=wireshark_compatible,
        first_seq=first_seq,
        last_seq=last_seq,
        expected=expected,
        lost=expected - n,
        loss_runs=loss_runs,
        duplicates=int(duplicates),
        reordered=reordered,
        sequence_errors=int(ws[_SEQUENCE_ERRORS]),
        problem=bool(ws[_PROBLEM]),
        min_delta_ms=known(ws[_MIN_DELTA]),
        mean_delta_ms=known(ws[_MEAN_DELTA]),
        max_delta_ms=known(ws[_MAX_DELTA]),
        jitter_ms=jitter,
        min_jitter_ms=jitter_known(ws[_MIN_JITTER]),
        mean_jitter_ms=jitter_known(ws[_MEAN_JITTER]),
        max_jitter_ms=jitter_known(ws[_MAX_JITTER]),
        delay_ms=delay_ms,
        ptime_ms=ptime_ms,
        dtx_periods=dtx,
    )


def _dtx_periods(t: np.ndarray, ext: np.ndarray, ts_ext: np.ndarray,
                 clock: int | None) -> tuple[float | None, tuple[DtxPeriod, ...]]:
    """Packet-time and the pauses of the sender.

    Only pairs of packets that arrived one after the other with consecutive sequence
    numbers are looked at: their timestamp step is the time the sender let pass between
    them. The median positive step is the packet-time (for video: the frame interval);
    a step longer than DTX_GAP_FACTOR packet-times is a pause, since no packet is missing.
    A sequence gap is loss whatever the timestamps say, so it never counts as a pause.
    """
    consecutive = np.diff(ext) == 1
    step = np.diff(ts_ext)
    positive = step[consecutive & (step > 0)]
    if len(positive) == 0:
        return None, ()
    ptime = float(np.median(positive))
    ptime_ms = ptime / clock * 1e3 if clock else None
    after = np.flatnonzero(consecutive & (step > DTX_GAP_FACTOR * ptime)) + 1
    periods = tuple(
        DtxPeriod(
            seq=int(ext[i]),
            start_s=float(t[i - 1]),
            end_s=float(t[i]),
            silence_ms=float((step[i - 1] - ptime) / clock * 1e3) if clock
            else float((t[i] - t[i - 1]) * 1e3),
        )
        for i in after  # one object per pause, not per packet
    )
    return ptime_ms, periods


# --- Finding the RTP streams of a capture ------------------------------------------------

# RFC 3550 A.1's MAX_DROPOUT: a forward jump of the sequence number larger than this is not
# taken as the same sender going on.
MAX_DROPOUT = 3000


@dataclass(frozen=True, eq=False)
class RtpStream:
    """The packets of one RTP stream, keyed as Wireshark keys it: (src, sport, dst, dport, ssrc).

    Arrays are per packet in capture order; `packet_index` are the rows in the capture's
    PacketTable. `size` is the UDP payload length (RTP header, payload and padding).
    """

    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    packet_index: np.ndarray
    ts_ns: np.ndarray
    seq: np.ndarray
    rtp_ts: np.ndarray
    marker: np.ndarray
    payload_type: np.ndarray
    size: np.ndarray

    @property
    def key(self) -> tuple[str, int, str, int, int]:
        return (self.src, self.sport, self.dst, self.dport, self.ssrc)

    @property
    def packets(self) -> int:
        return len(self.packet_index)

    @property
    def arrival_s(self) -> np.ndarray:
        return self.ts_ns.astype(np.float64) / 1e9

    def stats(self, clock_rate: int | None = None, *, wireshark_compatible: bool = False) -> RtpStreamStats:
        # Arrival relative to the first packet keeps nanosecond precision in float64.
        arrival = (self.ts_ns - self.ts_ns[0]).astype(np.float64) / 1e9
        return rtp_stream_stats(arrival, self.seq, self.rtp_ts, self.marker, self.payload_type, self.size,
                                clock_rate, wireshark_compatible=wireshark_compatible)


def find_rtp_streams(cap, flows) -> list[RtpStream]:
    """The RTP streams of a capture (`Capture` from read_capture, `FlowTable` from build_flows).

    Every UDP packet with a plausible RTP header (rtp_header_mask) is grouped by
    (src, sport, dst, dport, ssrc), as Wireshark does. Random bytes pass the header test
    now and then, each time with a new random SSRC, so a stream is kept only if its sequence
    number advances between two packets (by 1..MAX_DROPOUT), or if it shares a UDP flow with
    such a stream (a real stream that happens to be one packet long).
    Packets in capture order; RTP carried inside other framings (TURN ChannelData, Zoom) is
    not looked into.
    """
    pk = cap.packets
    rows = np.flatnonzero((pk.proto == 17) & (pk.payload_off >= 0) & (pk.payload_len >= RTP_HEADER_LEN)
                          & ((pk.frag & FRAG_LATER) == 0) & (flows.flow_of >= 0))
    rows = rows[rtp_header_mask(pk.prefix[rows], pk.payload_len[rows], pk.payload_wirelen[rows], cap.buffer,
                                pk.payload_off[rows])]
    if len(rows) == 0:
        return []
    head = rtp_fields(pk.prefix[rows], 0)
    ssrc = head["ssrc"].astype(np.int64)
    # Group: sort by stream key, capture order within a stream.
    order = np.lexsort((rows, ssrc, pk.dport[rows], pk.dst_lo[rows], pk.dst_hi[rows],
                        pk.sport[rows], pk.src_lo[rows], pk.src_hi[rows]))
    rows, ssrc = rows[order], ssrc[order]
    head = {k: v[order] for k, v in head.items()}
    keys = (pk.src_hi[rows], pk.src_lo[rows], pk.sport[rows], pk.dst_hi[rows], pk.dst_lo[rows],
            pk.dport[rows], ssrc)
    new_stream = np.zeros(len(rows), dtype=bool)
    new_stream[0] = True
    for k in keys:
        new_stream[1:] |= k[1:] != k[:-1]
    stream_of = np.cumsum(new_stream) - 1
    starts = np.flatnonzero(new_stream)
    n_streams = len(starts)

    seq = head["seq"].astype(np.int64)
    step = (np.diff(seq)) % SEQ_MOD
    advances = ~new_stream[1:] & (step >= 1) & (step <= MAX_DROPOUT)
    keep = np.zeros(n_streams, dtype=bool)
    keep[stream_of[1:][advances]] = True
    flow = flows.flow_of[rows]
    in_good_flow = np.isin(flow, np.unique(flow[keep[stream_of]]))
    keep |= np.bincount(stream_of, weights=in_good_flow, minlength=n_streams) > 0

    ts = head["ts"].astype(np.int64)
    marker = head["marker"]
    pt = head["pt"].astype(np.int64)
    ends = np.append(starts[1:], len(rows))
    streams = []
    for s in np.flatnonzero(keep):   # one object per stream, not per packet
        a, b = starts[s], ends[s]
        r0 = rows[a]
        streams.append(RtpStream(
            src=address_text(pk.src_hi[r0], pk.src_lo[r0]), sport=int(pk.sport[r0]),
            dst=address_text(pk.dst_hi[r0], pk.dst_lo[r0]), dport=int(pk.dport[r0]),
            ssrc=int(ssrc[a]), packet_index=rows[a:b], ts_ns=pk.ts_ns[rows[a:b]], seq=seq[a:b],
            rtp_ts=ts[a:b], marker=marker[a:b], payload_type=pt[a:b],
            size=pk.payload_wirelen[rows[a:b]].astype(np.int64),
        ))
    streams.sort(key=lambda st: st.ts_ns[0])
    return streams
