"""Text for a terminal: bytes from a capture made harmless, lines fitted to the width.

A capture is hostile input: a STUN realm, an SNI, a SIP header or a file name may carry an
escape sequence that a terminal would obey (recolour, retitle, move the cursor, hide text, or on
some terminals write files). Every string that reaches the terminal goes through `sanitize`,
which shows control characters, bidirectional overrides and undecodable bytes as visible escapes
instead of passing them on.
"""
from __future__ import annotations

import os
import re
import shutil
import sys

DEFAULT_WIDTH = 120          # when the output is not a terminal and COLUMNS is unset (files, pipes)
MIN_WIDTH = 40

# C0 and C1 controls, DEL, the Unicode bidirectional controls (Trojan Source), line/paragraph
# separators, and lone surrogates (bytes that were not UTF-8, kept by surrogateescape).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_KEEP_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                                  "\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group(0))
    if 0xDC80 <= c <= 0xDCFF:               # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def sanitize(value, *, keep_newlines: bool = False) -> str:
    """`value` as text that a terminal shows but never obeys."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_KEEP_NEWLINE if keep_newlines else _UNSAFE).sub(_escape, text)


def output_width(*, to_terminal: bool = True) -> int:
    """Columns to fit: the terminal's when stdout is one (and is where the text goes), else
    $COLUMNS, else DEFAULT_WIDTH."""
    try:
        if to_terminal and sys.stdout.isatty():
            return max(MIN_WIDTH, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    cols = os.environ.get("COLUMNS", "")
    return max(MIN_WIDTH, int(cols)) if cols.isdigit() else DEFAULT_WIDTH
