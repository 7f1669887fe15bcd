"""Reading captures: container framing, link/IP/transport decoding, into a columnar PacketTable."""
from throttledetect.read.capture import Capture, CaptureError, ReadWarning, read_capture
from throttledetect.read.table import PacketTable

__all__ = ["Capture", "CaptureError", "ReadWarning", "read_capture", "PacketTable"]
