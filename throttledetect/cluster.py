"""A Dask distributed cluster when one machine is not enough: `analyze --scheduler tcp://HOST:PORT`.

The same work as throttledetect.parallel, handed to the cluster's workers instead of local
processes: several captures each go to a worker whole (parallel._one_file, the document part
comes back); a single capture's tested flows go out in batches, one per worker thread, each
batch tested by a worker that has analysed the capture up to the tests once (kept for the
batches after it) and runs detect.run.detect_flow on its flows. Everything that decides (the
false-discovery family, decisions, verdicts, the document) is made here from what comes back,
so the results are those of one process (tests/test_cluster.py, on a LocalCluster).

The workers open the capture files by the paths given here: the files must be at the same paths on
every worker (a shared file system, as Dask's own readers assume). Standard input cannot be sent.
"""
from __future__ import annotations

import threading

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 2        # analysed captures a worker keeps for the next batches (each can be large)


def connect(address: str):
    """A dask.distributed Client of the scheduler at `address`; a clear error when it cannot be."""
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError("--scheduler needs dask's distributed scheduler: pip install 'dask[distributed]'") from None
    try:
        return Client(address, timeout=20, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise RuntimeError(f"cannot reach the Dask scheduler at {address}: {e}") from None


def file_mapper(client):
    """For parallel.analyze_files: each capture a task on the cluster, results in order."""
    def mapper(fn, jobs):
        futures = client.map(fn, jobs, pure=False)
        for f in futures:
            yield f.result()
    return mapper


def _prepared(path: str, settings: dict):
    """This worker's analysis of `path` up to the tests (kept: more batches of it may come)."""
    from throttledetect import pipeline
    key = (path, repr(sorted(settings.items())))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
    shown = {k: v for k, v in settings.items() if k not in ("workers", "alpha", "thresholds", "test")}
    analysis = pipeline.analyze_capture(path, with_detection=False, **shown)
    with _CACHE_LOCK:
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = analysis
    return analysis


def flow_batch(path: str, settings: dict, batch: list) -> list:
    """Worker side: detect.run.detect_flow for the flows of `batch`, as (flow, result) pairs."""
    from throttledetect import pipeline
    from throttledetect.detect.run import run_detectors
    a = _prepared(path, settings)
    wanted = set(batch)
    got = {}

    def only_batch(ctx, flows, fn):
        out = []
        for i in flows:
            r = fn(ctx, i) if i in wanted else (None, [])
            if i in wanted:
                got[i] = r
            out.append(r)
        return out
    run_detectors(a.capture, a.flows, a.classification, a.metrics, streams=a.streams,
                  config=pipeline.detection_config(None, settings.get("alpha"), settings.get("thresholds")),
                  test=settings.get("test", "calls"), map_flows=only_batch)
    return [(i, got[i]) for i in batch]


def flow_mapper(client, path: str, settings: dict):
    """A map_flows for run_detectors: the tested flows in batches on the cluster, the largest first,
    one batch per worker thread, each batch about the same number of packets."""
    def run(ctx, flows: list, fn) -> list:
        if not flows:
            return []
        slots = max(1, sum(client.nthreads().values()))
        ft = ctx.ft
        size = {i: int(ft.packets_ab[i] + ft.packets_ba[i]) for i in flows}
        batches = [[] for _ in range(min(slots, len(flows)))]
        load = [0] * len(batches)
        for i in sorted(flows, key=lambda i: -size[i]):
            k = load.index(min(load))
            batches[k].append(i)
            load[k] += size[i]
        futures = [client.submit(flow_batch, path, settings, b, pure=False) for b in batches]
        done = dict(pair for f in futures for pair in f.result())
        return [done[i] for i in flows]
    return run
