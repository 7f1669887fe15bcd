"""`analyze --verify`: our RTP stream statistics against Wireshark's (throttledetect/verify.py).

On the bundled clean call every stream agrees (jitter is not compared: its payload types are dynamic,
and without an SDP Wireshark has no clock rate for them). On corpus captures: the SIP call's G.711
stream agrees in packets, lost and max jitter; in the WhatsApp call one stream differs in lost for
the known reason (a late last packet: RFC 3550 A.3 against Wireshark's count) and Wireshark sees a
two-packet "stream" that is not RTP; in the Skype trace SRTP packets with an encrypted padding count
are refused by Wireshark's heuristic. A Wi-Fi capture decoded by the reader's Wireshark fallback
verifies too. Without tshark, one line says so and the exit status does not change.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from tests.corpus import EXTERNAL_DIR, need_corpus
from tests.metrics.tshark_ref import SAMPLE_TABLE
from throttledetect.read import fallback
from throttledetect import verify

ROOT = Path(__file__).resolve().parents[1]
CLEAN = ROOT / "captures" / "call_clean.pcap"

need_tshark = pytest.mark.skipif(fallback.find_tshark() is None,
                                 reason="tshark not found: --verify needs Wireshark's tshark (apt-get install tshark)")


def cli(*args):
    from click.testing import CliRunner

    from throttledetect.cli import cli as main
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


@pytest.fixture(scope="module")
def clean_json():
    res = cli(CLEAN, "--verify", "--format", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res.stderr


@need_tshark
def test_clean_call_every_stream_agrees(clean_json):
    doc, err = clean_json
    v = doc["verify"]
    assert v["available"] and v["tool"].startswith("tshark ")
    assert (v["total"], v["agree"], v["explained"], v["unexplained"]) == (4, 4, 0, 0)
    ours = {(f["id"], s["ssrc"]): s for f in doc["flows"] for d in ("ab", "ba")
            for s in f["metrics"][d]["rtp_streams"]}
    for e in v["streams"]:
        assert e["agree"] and e["compared"] == ["packets", "lost"]
        assert e["ours"]["packets"] == e["wireshark"]["packets"] == ours[(e["flow"], int(e["ssrc"], 16))]["packets"]
        assert e["ours"]["lost"] == e["wireshark"]["lost"] == 0
        assert e["wireshark"]["max_jitter_ms"] is None and "jitter not compared" in e["reason"]
    assert "Verified against Wireshark (tshark" in err and "4 of 4 RTP streams agree" in err


@need_tshark
def test_table_ends_with_the_verify_line():
    res = cli(CLEAN, "--verify")
    assert res.exit_code == 0, res.output
    last = res.stdout.rstrip("\n").splitlines()[-1]
    assert last.startswith("Verified against Wireshark (tshark ") and last.endswith(": 4 of 4 RTP streams agree")


def test_normal_runs_do_not_verify(monkeypatch):
    monkeypatch.setattr(verify, "verify_analyses", lambda *a, **k: pytest.fail("verified without --verify"))
    res = cli(CLEAN, "--format", "json")
    assert res.exit_code == 0 and "verify" not in json.loads(res.stdout)


def test_without_tshark_one_line_and_the_same_exit_status(monkeypatch):
    monkeypatch.setattr(fallback, "find_tshark", lambda: None)
    res = cli(CLEAN, "--verify", "--fail-on", "throttled")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "Wireshark" in ln]
    assert lines == ["Verified against Wireshark: not done: --verify needs tshark (Wireshark's command-line tool: "
                     "apt-get install tshark), which was not found"]
    res = cli(CLEAN, "--verify", "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["verify"] == {"available": False, "reason": lines[0].split("not done: ")[1],
                                                "streams": []}
    assert [ln for ln in res.stderr.splitlines() if "Wireshark" in ln] == [f"throttledetect: note: {lines[0]}"]


@need_tshark
@need_corpus
def test_corpus_calls_agree_or_differ_for_the_known_reasons():
    import throttledetect
    report = throttledetect.analyze(*(str(EXTERNAL_DIR / n) for n in ("sip_rtp.pcap", "whatsappCall.pcapng",
                                                                      "Skype_06172024_rebuilt.pcap")))
    v = verify.verify_analyses(report.analyses)
    by = {(e["capture"], e["src"], e["ssrc"]): e for e in v["streams"]}
    sip = by[(0, "127.0.0.1:6001", "0xFEBD6340")]
    assert sip["agree"] and sip["compared"] == ["packets", "lost", "max_jitter_ms"]
    assert sip["ours"]["packets"] == sip["wireshark"]["packets"] == 501
    assert abs(sip["ours"]["max_jitter_ms"] - sip["wireshark"]["max_jitter_ms"]) < 0.001
    late = by[(1, "192.168.0.100:45945", "0x381C9F32")]      # its last packet arrives late
    assert not late["agree"] and late["explained"] and (late["ours"]["lost"], late["wireshark"]["lost"]) == (0, -1)
    assert late["reason"].startswith("lost: ours follows RFC 3550 A.3") and "it is -1 as in Wireshark" in late["reason"]
    noise = by[(1, "192.168.137.216:48447", "0x6E3987EE")]   # two STUN-port packets Wireshark's heuristic takes
    assert noise["ours"] is None and noise["explained"] and noise["reason"].startswith("not RTP to us")
    srtp = by[(2, "10.110.54.44:14225", "0x0000E7E0")]
    assert (srtp["ours"]["packets"], srtp["wireshark"]["packets"]) == (105, 94) and srtp["explained"]
    assert "11 of ours have the padding bit set" in srtp["reason"]
    assert v["unexplained"] == 0 and v["agree"] >= 1 + 2 + 1
    assert [c["capture"] for c in v["captures"]] == [0, 1, 2] and not any("error" in c for c in v["captures"])


@need_tshark
def test_compressed_input_is_given_to_tshark_decompressed(tmp_path):
    import throttledetect
    # tshark cannot read xz: the reader's decompressed bytes go to a temporary file
    xz = tmp_path / "call.pcap.xz"
    xz.write_bytes(lzma.compress(CLEAN.read_bytes()))
    report = throttledetect.analyze(str(xz))
    v = verify.verify_analyses(report.analyses)
    assert (v["total"], v["agree"]) == (4, 4), v


@need_tshark
def test_a_wifi_capture_read_through_the_fallback_verifies(tmp_path):
    """RTP over 802.11 (radiotap): our numbers come through the reader's Wireshark fallback,
    Wireshark's from its own dissectors; a static payload type, so jitter is compared too."""
    pytest.importorskip("scapy.all")
    import throttledetect
    from tests.test_fallback import dot11, rtp, write
    from scapy.all import IP, UDP, Raw
    seqs = [s for s in range(150) if s not in (30, 31, 90)]
    frames = [dot11(bytes(IP(src="192.168.1.20", dst="203.0.113.5") / UDP(sport=40000, dport=40002) / Raw(rtp(s))),
                    k, radiotap=True) for k, s in enumerate(seqs)]
    path = write(tmp_path / "wifi.pcap", frames, 127)
    report = throttledetect.analyze(path)
    v = verify.verify_analyses(report.analyses)
    (e,) = v["streams"]
    assert e["agree"] and e["compared"] == ["packets", "lost", "max_jitter_ms"], e
    assert (e["ours"]["packets"], e["ours"]["lost"]) == (147, 3)


def test_a_failing_tshark_is_said_per_capture(monkeypatch):
    import throttledetect
    report = throttledetect.analyze(str(CLEAN))
    monkeypatch.setattr(fallback, "find_tshark", lambda: "/bin/false")
    v = verify.verify_analyses(report.analyses)
    assert v["available"] and v["total"] == 0 and "no RTP stream table" in v["captures"][0]["error"]
    assert verify.summary_line(v).endswith("tshark failed on 1 capture(s) (--format json: 'verify')")


TABLE = 'Running as user "root" and group "root". This could be dangerous.\n' + SAMPLE_TABLE


def test_parse_and_summary():
    a, b, c = verify.parse_rtp_streams(TABLE)
    assert a.key == ("127.0.0.1", 6001, "127.0.0.1", 6000, 0xFEBD6340) and a.max_jitter_ms == 8.162
    assert (b.payload, b.lost, b.problem) == ("g711U, CN", -16, True)
    assert c.src == "2001:db8::1" and not c.jitter_computed
    with pytest.raises(ValueError, match="no RTP stream table"):
        verify.parse_rtp_streams("tshark: oops")
    sec = {"available": True, "tool": "tshark 4.0.17", "seconds": 0.31, "captures": [], "total": 5, "agree": 3,
           "explained": 1, "unexplained": 1}
    assert verify.summary_line(sec) == ("Verified against Wireshark (tshark 4.0.17, 0.3 s): 3 of 5 RTP streams agree; "
                                        "1 differ for a known reason, 1 differ unexplained (--format json: 'verify')")
    assert verify.summary_line(dict(sec, total=0, agree=0, explained=0, unexplained=0)).endswith(
        "no RTP stream, by us or by Wireshark")
