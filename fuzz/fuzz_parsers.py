"""atheris harness: one payload through every parser of throttledetect.wire.

parse_stun / parse_channel_data / parse_ms_turn, parse_rtp / parse_rtcp / classify_rtp_or_rtcp /
rtp_fields, parse_dtls, parse_sip / parse_sdp, parse_tls_record / parse_client_hello /
parse_server_hello / parse_client_hello_message, parse_dns / read_name, the QUIC long header,
gQUIC and varint readers, and the app framings of throttledetect.wire.apps; each on the bytes
as given, shifted by 1 and 8, and with an RFC 4571 length in front, over UDP and TCP.

Invariant (fuzz/checks.py): every parser returns None or its documented type (and the derived
properties of what it returns evaluate), never raises, and the whole set takes < FUZZ_SLOW_S.
"""
import _harness  # noqa: F401


def _imports():
    import throttledetect.wire.apps  # noqa: F401
    import throttledetect.wire.dns  # noqa: F401
    import throttledetect.wire.dtls  # noqa: F401
    import throttledetect.wire.quic  # noqa: F401
    import throttledetect.wire.rtp  # noqa: F401
    import throttledetect.wire.sip  # noqa: F401
    import throttledetect.wire.stun  # noqa: F401
    import throttledetect.wire.tls  # noqa: F401


def test_one_input(data: bytes) -> None:
    import checks
    checks.check_parsers_input(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _imports)
