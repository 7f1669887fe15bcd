"""Every core: the tested flows of a capture in a pool of processes, and many captures at once.

Both pools fork this process, so a worker starts with everything already computed (the capture,
its flows, classification, metrics and streams, the compiled decoders) and nothing is pickled on
the way in but a flow number or a file name; what comes back is JSON-shaped data (a flow's
detections, a capture's document part). The results do not depend on the number of workers:
each flow's tests read only the capture's own data, and the false-discovery family, the
decisions and the verdicts are made afterwards in the parent from all the p-values, as with one
worker (tests/test_parallel.py compares documents).
"""
from __future__ import annotations

import multiprocessing
import os

# A pool costs about 0.1 s to start and each worker re-derives what the detectors share lazily
# (controls, call groups): below this many tested flows one process is faster.
MIN_FLOWS_FOR_POOL = 4

_JOB: tuple | None = None    # (ctx, fn) in the forked workers of flow_pool


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _fork_context():
    try:
        return multiprocessing.get_context("fork")
    except ValueError:       # no fork (not Linux/macOS): one process
        return None


def _one_flow(i: int):
    ctx, fn = _JOB
    return i, fn(ctx, i)


def flow_pool(workers: int):
    """A map_flows for detect.run.run_detectors: the flows' tests in `workers` processes, the
    largest flows first so the pool finishes together."""
    def run(ctx, flows: list, fn) -> list:
        global _JOB
        mp = _fork_context()
        if workers <= 1 or len(flows) < MIN_FLOWS_FOR_POOL or mp is None:
            return [fn(ctx, i) for i in flows]
        ft = ctx.ft
        size = {i: int(ft.packets_ab[i] + ft.packets_ba[i]) for i in flows}
        order = sorted(flows, key=lambda i: -size[i])
        _JOB = (ctx, fn)
        try:
            with mp.Pool(min(workers, len(flows))) as pool:
                done = dict(pool.imap_unordered(_one_flow, order, chunksize=1))
        finally:
            _JOB = None
        return [done[i] for i in flows]
    return run


def _one_file(job: tuple) -> dict:
    """Read and analyse one capture in a worker: its document part, or why it could not be read,
    and the reader's messages for the parent to print in order."""
    path, settings = job
    from throttledetect import pipeline
    from throttledetect.inputs import read_messages
    from throttledetect.read import CaptureError, read_capture
    try:
        cap = read_capture(path)
    except CaptureError as e:
        return {"path": path, "error": str(e), "messages": [f"throttledetect: error: {e}"]}
    analysis = pipeline.analyze_capture(cap, **settings)
    return {"path": path, "part": pipeline.capture_part(analysis), "messages": read_messages(cap)}


def analyze_files(paths: list[str], settings: dict, *, workers: int, progress=None, say=None, mapper=None):
    """Each capture file analysed in its own worker, `workers` at a time: (document parts in the
    order of paths, inputs.Loaded with the failures). Messages come out in the order of paths.
    mapper(fn, jobs) -> results in order: where the files go instead (cluster.file_mapper)."""
    from throttledetect.inputs import Loaded
    say = say or (lambda line: None)
    settings = dict(settings, workers=1)     # one level of processes: the files
    loaded = Loaded()
    parts = []
    mp = _fork_context()
    jobs = [(p, settings) for p in paths]
    pool = None
    if mapper is not None:
        results = mapper(_one_file, jobs)
    elif mp is None or workers <= 1 or len(paths) < 2:
        results = map(_one_file, jobs)
    else:
        pool = mp.Pool(min(workers, len(paths)))
        results = pool.imap(_one_file, jobs, chunksize=1)
    try:
        for k, r in enumerate(results, 1):
            for line in r["messages"]:
                say(line)
            if "error" in r:
                loaded.failed.append((r["path"], r["error"]))
            else:
                parts.append(r["part"])
            if progress:
                progress.show(f"analysed {k} of {len(paths)} captures", restart_clock=False)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    if progress:
        progress.clear()
    return parts, loaded
