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
