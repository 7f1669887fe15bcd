"""The label vocabulary (docs/DESIGN.md) and which labels are calls."""
from __future__ import annotations

# Calls: the apps' media and the generic call protocols.
APP_CALLS = ("whatsapp_call", "telegram_call", "signal_call", "facetime", "zoom", "teams", "google_meet",
             "discord", "viber_call", "line_call", "webex", "snapchat_call", "kakaotalk_call",
             # Added for issue 12: apps named from their own framings, STUN realms, names and ranges.
             "imo_call", "mumble", "tencent_meeting", "wechat_call", "feishu_call", "jitsi", "bigbluebutton",
             "messenger_call", "instagram_call")
GENERIC_CALLS = ("rtp", "webrtc", "sip")
# Finer call labels for telephony and voice protocols outside the contract's list (nDPI files them
# under its VoIP category), and media recognised only by its packet pattern.
OTHER_CALLS = ("iax", "h323", "mgcp", "megaco", "skinny", "agora", "teamspeak", "unknown_call")
CALL_LABELS = frozenset(APP_CALLS + GENERIC_CALLS + OTHER_CALLS)

# The same apps' non-call traffic: the natural controls (in 2025, chat kept working while calls did not).
APP_CHAT = ("whatsapp", "telegram", "signal")
OTHER_LABELS = ("quic", "tls", "dtls", "dns", "http", "stun", "other")

ALL_LABELS = tuple(APP_CALLS + GENERIC_CALLS + OTHER_CALLS + APP_CHAT + OTHER_LABELS)

# An app's chat label <-> its call label.
CHAT_OF_CALL = {"whatsapp_call": "whatsapp", "telegram_call": "telegram", "signal_call": "signal"}
CALL_OF_CHAT = {v: k for k, v in CHAT_OF_CALL.items()}


def is_call(label: str) -> bool:
    return label in CALL_LABELS
