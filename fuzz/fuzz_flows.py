"""atheris harness: well-framed captures with fuzzed addresses, ports, timing and payloads
(fuzz/checks.py synth_capture), read -> build_flows -> classify -> RTP streams.

Raw-byte fuzzing of the reader rarely gets as far as a flow with a plausible STUN, SIP, TLS or
RTP payload; here every input is a valid capture, so the classifier's evidence gathering and
rules run on every execution. Same invariants as fuzz_reader, plus: no packet is lost and no
warning is raised for a well-formed file.
"""
import _harness  # noqa: F401


def _imports():
    import throttledetect.classify  # noqa: F401
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
        pass


def test_one_input(data: bytes) -> None:
    import checks
    checks.check_flows_input(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _imports)
