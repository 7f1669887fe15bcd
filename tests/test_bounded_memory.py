"""Issue 15 (memory): the analysis read and computed in bounded pieces gives the same document as
all at once.

The pieces: read/pages.py reads the mapped file a SPAN of bytes at a time and gives the pages
back (payloads every PAYLOAD_BATCH rows at most); classify/evidence.py finds RTP candidates
ROW_CHUNK rows at a time; metrics/flow.py measures the flows BATCH_PACKETS packets at a time;
streams/build.py keeps the streams of the MAX_CACHED_FLOWS flows used last (the others are built
again when asked for).
Each capture is analysed with tiny pieces (so that it crosses many spans, chunks and batches)
and with pieces larger than any capture, and the two JSON documents must be equal, character
for character: on the corpus captures (skipped, saying why, without the corpus) and on the
benchmark's synthetic mix.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.corpus import external_pcaps, need_corpus, ndpi_pcaps
from throttledetect.read import read_capture

HUGE = 1 << 60


def _document(path) -> str:
    from throttledetect import pipeline
    from throttledetect.read import read_capture
    analysis = pipeline.analyze_capture(read_capture(path))
    return json.dumps(pipeline.to_document([analysis]), sort_keys=True)


def _at_once(monkeypatch):
    from throttledetect.classify import evidence
    from throttledetect.metrics import flow
    from throttledetect.read import pages
    from throttledetect.streams import build
    monkeypatch.setattr(pages, "SPAN", HUGE)
    monkeypatch.setattr(pages, "PAYLOAD_BATCH", HUGE)
    monkeypatch.setattr(evidence, "ROW_CHUNK", HUGE)
    monkeypatch.setattr(flow, "BATCH_PACKETS", HUGE)
    monkeypatch.setattr(build, "MAX_CACHED_FLOWS", HUGE)


def _in_pieces(monkeypatch):
    from throttledetect.classify import evidence
    from throttledetect.metrics import flow
    from throttledetect.read import pages
    from throttledetect.streams import build
    monkeypatch.setattr(pages, "SPAN", 3 * 4096)
    monkeypatch.setattr(pages, "PAYLOAD_BATCH", 7)
    monkeypatch.setattr(evidence, "ROW_CHUNK", 1000)
    monkeypatch.setattr(flow, "BATCH_PACKETS", 300)
    monkeypatch.setattr(build, "MAX_CACHED_FLOWS", 1)


def _same(path, monkeypatch):
    with monkeypatch.context() as m:
        _at_once(m)
        whole = _document(path)
    with monkeypatch.context() as m:
        _in_pieces(m)
        pieces = _document(path)
    assert pieces == whole


def _corpus_picks():
    return ndpi_pcaps() + external_pcaps()


@need_corpus
@pytest.mark.parametrize("path", _corpus_picks(), ids=lambda p: p.name)
def test_corpus_documents_same_in_pieces(path, monkeypatch):
    _same(path, monkeypatch)


def test_synthetic_mix_same_in_pieces(tmp_path, monkeypatch):
    from bench.synth import make_mixed_capture
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=30_000, seed=11)
    _same(path, monkeypatch)


def test_flow_batches_cover_every_flow_once():
    from throttledetect.metrics.flow import flow_batches
    start = np.r_[0, np.cumsum([5, 0, 900, 3, 3, 3, 1000, 1])]
    batches = flow_batches(start, 10)
    assert batches[0][0] == 0 and batches[-1][1] == len(start) - 1
    assert all(a < b for a, b in batches) and all(b == c for (_, b), (c, _) in zip(batches, batches[1:]))
    assert flow_batches(start, 10_000) == [(0, len(start) - 1)]
    assert flow_batches(np.zeros(1, np.int64), 10) == [(0, 0)]


def test_gather_and_payloads_read_the_same_bytes(tmp_path, monkeypatch):
    from bench.synth import make_mixed_capture
    from throttledetect.read import pages, read_capture
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=3000, seed=5)
    cap = read_capture(path)
    monkeypatch.setattr(pages, "SPAN", 2 * 4096)
    monkeypatch.setattr(pages, "PAYLOAD_BATCH", 5)
    rng = np.random.default_rng(1)
    at = rng.integers(0, len(cap.buffer) - 12, 5000)
    assert np.array_equal(pages.gather(cap, at), np.asarray(cap.buffer)[at])
    assert np.array_equal(pages.gather(cap, at, 12), np.asarray(cap.buffer)[at[:, None] + np.arange(12)])
    rows = np.flatnonzero(cap.packets.payload_len > 0)[::3].tolist()
    assert list(pages.payloads(cap, rows)) == [cap.payload(r) for r in rows]


# --- analyze --format json: each flow's metrics spilled as JSON text as they are measured --------
# (report/spill.py). The document must be the one the whole analysis gives, byte for byte, and what
# the metrics keep in memory must not grow with the flows.


def _spilled_json(path, monkeypatch, *, batch=None, test="calls") -> str:
    from click.testing import CliRunner
    from throttledetect.cli import cli
    from throttledetect.metrics import flow
    out = path.parent / (path.name + f".{test}.spilled.json") if hasattr(path, "parent") else None
    with monkeypatch.context() as m:
        if batch is not None:
            m.setattr(flow, "BATCH_PACKETS", batch)
        r = CliRunner().invoke(cli, ["analyze", str(path), "--format", "json", "--workers", "1", "--test", test,
                                     "-o", str(out)])
    assert r.exit_code in (0, 1), (r.output, r.exception)
    text = out.read_text()
    out.unlink()
    return text


def _whole_json(path, test="calls") -> str:
    from throttledetect import api
    report = api.analyze(str(path), workers=1, test=test)
    return report.to_json()


def test_synthetic_mix_spilled_document_is_the_whole_one(tmp_path, monkeypatch):
    from bench.synth import make_mixed_capture
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=30_000, seed=11)
    whole = _whole_json(path)
    assert _spilled_json(path, monkeypatch) == whole
    assert _spilled_json(path, monkeypatch, batch=300) == whole
    whole_all = _whole_json(path, test="all")
    assert _spilled_json(path, monkeypatch, batch=300, test="all") == whole_all


@pytest.mark.parametrize("name", ["call_policed.pcap", "call_shaped.pcap", "call_blocked.pcap", "call_clean.pcap"])
def test_sample_spilled_document_is_the_whole_one(name, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path
    path = tmp_path / name
    shutil.copy(Path(__file__).resolve().parents[1] / "captures" / name, path)
    assert _spilled_json(path, monkeypatch, batch=500) == _whole_json(path)


def test_uplink_reports_read_in_a_spilled_analysis(tmp_path, monkeypatch):
    """The far end's receiver reports (plain RTCP) are read by the detectors after the columns no
    later stage reads are let go: the document is the whole analysis's, uplink test included."""
    from tests.detect.calls import AUDIO, make_call
    path = tmp_path / "uplink.pcap"
    make_call(path, **dict(AUDIO, uplink_loss=(20.0, 0.0, 0.15)))
    spilled = _spilled_json(path, monkeypatch, batch=500)
    assert spilled == _whole_json(path)
    doc = json.loads(spilled)
    assert any(d.get("test") == "uplink" and d["decision"] == "detected"
               for f in doc["flows"] for d in f["detections"])


@need_corpus
@pytest.mark.parametrize("path", external_pcaps(), ids=lambda p: p.name)
def test_corpus_spilled_document_is_the_whole_one(path, tmp_path, monkeypatch):
    import shutil
    local = tmp_path / path.name
    shutil.copy(path, local)
    assert _spilled_json(local, monkeypatch, batch=2000) == _whole_json(local)


def _traced(fn):
    """(result, bytes still allocated by it, peak bytes while it ran), numpy's buffers included."""
    import gc
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, now - before, peak - before


def test_spilled_metrics_hold_a_few_bytes_a_flow(tmp_path, monkeypatch):
    """Measured whole, every flow's metrics objects stay (an RTP stream's with its packets' columns):
    hundreds of bytes a flow and more. Spilled, the list keeps None for every flow the detectors do
    not read, and the spill an offset: what is held does not grow with the flows' packets."""
    from bench.synth import make_mixed_capture
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.metrics.flow import compute_flow_metrics
    from throttledetect.read import read_capture
    from throttledetect.report.spill import JsonSpill
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=30_000, seed=3)
    cap = read_capture(path)
    ft = build_flows(cap)
    cl = classify(cap, ft)
    nf = len(ft)
    from throttledetect.metrics import flow
    from throttledetect.report import spill as spill_module
    monkeypatch.setattr(flow, "BATCH_PACKETS", 2000)
    whole, held_whole, _ = _traced(lambda: compute_flow_metrics(cap, ft, cl))
    monkeypatch.setattr(spill_module, "_WRITE_BUFFER", 0)     # every text written out at once
    spill = JsonSpill()
    spilled, held_spilled, _ = _traced(lambda: compute_flow_metrics(cap, ft, cl, spill=spill,
                                                                    keep=np.zeros(nf, dtype=bool)))
    assert len(spill) == nf and all(m is None for m in spilled)
    assert held_whole > 1000 * nf
    assert held_spilled < 64 * nf          # a None and an offset a flow, whatever its packets
    for i in (0, nf // 2, nf - 1):
        assert spill.value(i) == json.loads(json.dumps(whole[i].to_json()))
    # the flows the detectors read keep their objects, the same as measured whole
    tcp = np.flatnonzero(ft.proto == 6)
    keep = np.zeros(nf, dtype=bool)
    keep[tcp] = True
    kept = compute_flow_metrics(cap, ft, cl, spill=JsonSpill(), keep=keep)
    assert [i for i, m in enumerate(kept) if m is not None] == tcp.tolist()
    assert all(kept[i].to_json() == whole[i].to_json() for i in tcp)


def test_rtp_candidates_grouped_in_bounded_pieces(tmp_path, monkeypatch):
    """The classifier's RTP runs are decided ROW_CHUNK rows' worth of whole flows at a time, the
    candidates kept in per-row columns: the same rows, and the temporaries bounded by the chunk."""
    from bench.synth import make_mixed_capture
    from throttledetect.classify import evidence
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=60_000, seed=4)
    cap = read_capture(path)
    ft = build_flows(cap)
    udp = (ft.flow_of >= 0) & (cap.packets.proto == 17)
    tcp = (ft.flow_of >= 0) & (cap.packets.proto == 6)

    def run(chunk):
        monkeypatch.setattr(evidence, "ROW_CHUNK", chunk)
        flows = [evidence.FlowEvidence() for _ in range(len(ft))]
        out, _, peak = _traced(lambda: evidence._note_rtp(cap, ft, flows, udp, tcp))
        return out, [(f.rtp_packets_ab, f.rtp_packets_ba, f.rtp_ssrcs, dict(f.rtp_pts)) for f in flows], peak

    (enc_w, off_w), ev_w, peak_whole = run(HUGE)
    (enc_p, off_p), ev_p, peak_pieces = run(2000)
    assert np.array_equal(enc_w, enc_p) and np.array_equal(off_w, off_p) and ev_w == ev_p
    assert (enc_w >= 0).sum() > 30_000
    assert peak_pieces < 0.75 * peak_whole
    # ten bytes a row of candidate columns and a chunk's temporaries: measured 27 bytes a row of
    # this mix (RTP three packets in four), 52 when the candidates were listed with their rows
    # and the runs sorted a chunk of candidates at a time, 180 all at once
    assert peak_pieces < 35 * len(ft.flow_of)


def test_pcap_record_index_is_written_into_the_table():
    """The classic-pcap reader's record index (offsets, lengths, times, link types) is the packet
    table's own columns, not 26 more bytes a record held beside them while the file is read."""
    from throttledetect.read.capture import _PcapArrays
    a = _PcapArrays(1000, 48)
    t = a.table
    for index, column in ((a.rec_off, t.frame_off), (a.caplen, t.caplen), (a.wirelen, t.wirelen), (a.ts, t.ts_ns),
                          (a.lt, t.linktype)):
        assert index is column
    g = a.grown(2000, 10)
    assert g.rec_off is g.table.frame_off and g.ts is g.table.ts_ns and len(g.table) == 2000


def test_only_document_lets_go_of_what_only_the_classifier_reads(tmp_path):
    """analyze (run_parts) keeps after classify() only the evidence read later: the per-row RTP
    columns and the call flows' evidence; the names learnt from DNS and TLS and every other
    flow's evidence go (about 1 kB a flow, most flows of a big capture are not calls), and so do
    the packet columns that no stage after the flows reads."""
    from bench.synth import make_mixed_capture
    from throttledetect import pipeline
    from throttledetect.classify.labels import is_call
    path = tmp_path / "mixed.pcap"
    make_mixed_capture(path, packets=30_000, seed=7)
    full, held_full, _ = _traced(lambda: pipeline.analyze_capture(str(path), workers=1))
    lean, held_lean, _ = _traced(lambda: pipeline.analyze_capture(str(path), workers=1, only_document=True))
    ev = lean.classification.evidence
    calls = [is_call(lab) for lab in lean.classification.labels]
    others = calls.count(False)
    assert others > 500 and ev.names == [] and ev.dns_names == {}
    assert all((e is not None) == c for e, c in zip(ev.flows, calls))
    assert held_full - held_lean > 500 * others
    # and the packets' columns no later stage reads: 11 bytes a packet, an error if read
    pk = lean.capture.packets
    for name in pipeline.UNREAD_AFTER_FLOWS:
        assert isinstance(getattr(pk, name), pipeline.LetGoColumn)
        assert len(getattr(pk, name)) == len(pk)
    with pytest.raises(RuntimeError, match="'ttl' column was let go"):
        pk.ttl[0]
    # and the addresses and ports every packet repeats from its flow (36 bytes a packet): read
    # from the flow table, the reader's values for every row however they are indexed
    fresh = read_capture(str(path)).packets
    rows = np.flatnonzero(lean.flows.flow_of >= 0)
    mask = lean.flows.flow_of >= 0
    for name in pipeline.ENDPOINT_COLUMNS:
        col = getattr(pk, name)
        assert isinstance(col, pipeline.EndpointColumn) and len(col) == len(pk)
        assert np.array_equal(np.asarray(col), getattr(fresh, name))
        assert np.array_equal(col[rows[::7]], getattr(fresh, name)[rows[::7]])
        assert np.array_equal(col[mask], getattr(fresh, name)[mask])
        assert col[int(rows[3])] == getattr(fresh, name)[rows[3]]
        assert col[10:20].dtype == getattr(fresh, name).dtype
    assert json.dumps(pipeline.consume_into_part(lean)) == json.dumps(pipeline.consume_into_part(full))
