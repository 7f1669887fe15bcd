"""atheris harness: arbitrary bytes as a capture file (raw, or wrapped in gzip/xz/bzip2, whole or
cut short), read -> build_flows -> classify.

Invariant (fuzz/checks.py): nothing but CaptureError escapes the reader, and its message is one
line naming the file and a byte offset; a returned Capture has every offset inside its buffer;
flows and classification never raise; one input never takes longer than FUZZ_SLOW_S (1 s).

    THROTTLEDETECT_NO_JIT=1 .venv/bin/python fuzz/fuzz_reader.py CORPUS_DIR [SEED_DIR] -max_total_time=60
(or `make fuzz`, which builds the seeds and runs every harness through fuzz/run.py).
"""
import _harness  # noqa: F401  (sets THROTTLEDETECT_NO_JIT before anything imports throttledetect)


def _imports():
    import throttledetect.classify  # noqa: F401
    import throttledetect.classify.domains  # noqa: F401
    import throttledetect.classify.tables  # noqa: F401
    import throttledetect.flows  # noqa: F401
    import throttledetect.metrics.rtp  # noqa: F401
    import throttledetect.read  # noqa: F401
    import throttledetect.report.document  # noqa: F401
    from throttledetect.classify import default_rules
    default_rules()
    try:  # loaded lazily by the rules on first use: load it here, outside the timed inputs
        from throttledetect.classify.media_model import default_media_model
        default_media_model()
    except ImportError:
        pass  # load the model files once, outside the timed inputs


def test_one_input(data: bytes) -> None:
    import checks
    checks.check_reader_input(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _imports)
