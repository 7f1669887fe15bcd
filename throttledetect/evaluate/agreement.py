"""How far our classification agrees with nDPI's labels on the corpus.

nDPI names a flow `Master.App` (STUN.WhatsAppCall, TLS.Teams, Zoom). Mapping to our vocabulary:
the app decides for media and call-signalling masters (STUN, DTLS, RTP, SRTP, or none); under
content masters (TLS, QUIC, DNS, HTTP) the flow is that content protocol, except that the chat
apps keep their chat label (the controls, except for DNS lookups of their names, which are DNS)
and Snapchat calls run over QUIC on the media 5-tuple.

Run `python -m throttledetect.evaluate.agreement [CORPUS]` for the per-file table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from throttledetect.classify import classify
from throttledetect.classify.labels import APP_CALLS, is_call
from throttledetect.evaluate.ndpi_labels import NdpiFlow, flow_key, ndpi_ip_text, parse_ndpi_out
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.read.table import halves_to_address

NDPI_APP_LABEL = {
    "WhatsAppCall": "whatsapp_call", "WhatsApp": "whatsapp", "WhatsAppFiles": "whatsapp",
    "TelegramVoip": "telegram_call", "Telegram": "telegram",
    "SignalVoip": "signal_call", "Signal": "signal",
    "Zoom": "zoom", "Skype_TeamsCall": "teams", "GoogleCall": "google_meet", "Discord": "discord",
    "ViberVoip": "viber_call", "Viber": "viber_call", "LineCall": "line_call", "Webex": "webex",
    "SnapchatCall": "snapchat_call", "KakaoTalk_Voice": "kakaotalk_call", "FaceTime": "facetime",
    "FacebookVoip": "messenger_call", "IMO": "imo_call", "Mumble": "mumble", "DiscordCall": "discord",
    "WeChat": "wechat_call", "TencentMeeting": "tencent_meeting", "Lark": "feishu_call", "Feishu": "feishu_call",
    "Jitsi": "jitsi", "SkypeCall": "teams", "Skype": "teams",
    "RTP": "rtp", "SRTP": "rtp", "RTCP": "rtp", "SIP": "sip",
    "IAX": "iax", "H323": "h323", "MGCP": "mgcp", "CiscoSkinny": "skinny", "Megaco": "megaco",
    "SD-RTN": "agora", "TeamSpeak": "teamspeak",
    "STUN": "stun", "DTLS": "dtls", "QUIC": "quic", "TLS": "tls", "DNS": "dns", "MDNS": "dns",
    "HTTP": "http", "DoH_DoT": "tls",
}
CONTENT_MASTERS = {"TLS": "tls", "QUIC": "quic", "DNS": "dns", "HTTP": "http", "MDNS": "dns"}
CHAT_APPS = {"WhatsApp": "whatsapp", "WhatsAppFiles": "whatsapp", "Telegram": "telegram", "Signal": "signal"}


def ndpi_to_ours(f: NdpiFlow) -> str | None:
    """Our label for nDPI's, or None where nDPI did not decide (Unknown)."""
    if f.app == "Unknown" and not f.master:
        return None
    if f.master in CONTENT_MASTERS:
        # A DNS lookup of an app's name is DNS, not the app's traffic (nDPI files it under the app).
        if f.app in CHAT_APPS and f.master not in ("DNS", "MDNS"):
            return CHAT_APPS[f.app]
        if f.app == "SnapchatCall":
            return "snapchat_call"
        return CONTENT_MASTERS[f.master]
    if f.app in NDPI_APP_LABEL:
        return NDPI_APP_LABEL[f.app]
    if f.app == "Unknown" and f.master in NDPI_APP_LABEL:
        return NDPI_APP_LABEL[f.master]
    return "other"


@dataclass
class FlowPair:
    key: tuple
    ndpi: str            # nDPI's label as printed
    theirs: str | None   # mapped to our vocabulary
    ours: str
    reason: str


@dataclass
class CaptureScore:
    name: str
    pairs: list = field(default_factory=list)

    def _counts(self):
        tp = fp = fn = tn = 0
        for p in self.pairs:
            if p.theirs is None:
                continue
            t, o = is_call(p.theirs), is_call(p.ours)
            tp += t and o
            fp += o and not t
            fn += t and not o
            tn += not t and not o
        return tp, fp, fn, tn

    @property
    def app_pairs(self) -> list:
        return [p for p in self.pairs if p.theirs in APP_CALLS or p.theirs in ("whatsapp", "telegram", "signal")]

    def disagreements(self) -> list:
        return [p for p in self.pairs if p.theirs is not None and (is_call(p.theirs) != is_call(p.ours)
                                                                    or (p in self.app_pairs and p.ours != p.theirs))]


def f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def score_capture(pcap: Path, label_file: Path) -> CaptureScore:
    cap = read_capture(pcap)
    ft = build_flows(cap, idle_timeout=None)   # nDPI never expires flows when reading files
    cl = classify(cap, ft)
    ours = {}
    for i in range(len(ft)):
        a = ndpi_ip_text(halves_to_address(ft.a_hi[i], ft.a_lo[i]))
        b = ndpi_ip_text(halves_to_address(ft.b_hi[i], ft.b_lo[i]))
        ours[flow_key(int(ft.proto[i]), a, int(ft.a_port[i]), b, int(ft.b_port[i]))] = i
    score = CaptureScore(pcap.name)
    for f in parse_ndpi_out(label_file):
        i = ours.get(f.key)
        if i is None:
            continue
        score.pairs.append(FlowPair(f.key, f.label, ndpi_to_ours(f), cl.labels[i], cl.reasons[i]))
    return score


def score_corpus(corpus: Path) -> list:
    pcap_dir, label_dir = corpus / "ndpi" / "pcap", corpus / "ndpi" / "labels"
    return [score_capture(p, label_dir / (p.name + ".out")) for p in sorted(pcap_dir.iterdir())
            if (label_dir / (p.name + ".out")).is_file()]


def totals(scores: list) -> dict:
    tp = fp = fn = tn = 0
    for s in scores:
        a, b, c, d = s._counts()
        tp, fp, fn, tn = tp + a, fp + b, fn + c, tn + d
    app = [p for s in scores for p in s.app_pairs]
    right = sum(p.ours == p.theirs for p in app)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "call_f1": f1(tp, fp, fn),
            "app_flows": len(app), "app_right": right, "app_accuracy": right / len(app) if app else 1.0}


def report(scores: list) -> str:
    lines = [f"{'capture':44s} {'flows':>5s} {'calls':>5s} {'F1':>6s} {'app':>7s}  disagreements"]
    for s in scores:
        tp, fp, fn, _ = s._counts()
        app = s.app_pairs
        acc = f"{sum(p.ours == p.theirs for p in app)}/{len(app)}" if app else "-"
        lines.append(f"{s.name[:44]:44s} {len(s.pairs):5d} {tp + fn:5d} {f1(tp, fp, fn):6.3f} {acc:>7s}  "
                     f"{len(s.disagreements())}")
    t = totals(scores)
    lines.append(f"TOTAL call-vs-not F1 {t['call_f1']:.4f} (tp {t['tp']} fp {t['fp']} fn {t['fn']} tn {t['tn']}); "
                 f"app accuracy {t['app_accuracy']:.4f} ({t['app_right']}/{t['app_flows']})")
    lines.append("")
    lines.append("Disagreements (nDPI label -> ours: our reason):")
    for s in scores:
        for p in s.disagreements():
            lines.append(f"  {s.name}: {p.key[1]}-{p.key[2]} {p.ndpi} ({p.theirs}) -> {p.ours}: {p.reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
    print(report(score_corpus(corpus)))
