"""JSON text kept on disk until it is written (issue 15: bounded memory).

`analyze --format json` used to hold every flow's metrics as objects (an RTP stream's holding its
packets' columns) from the moment they were measured until the document was written, then as
dicts beside them: about 1 GB of a 10 M-packet capture's 3 GB. Now each flow's metrics are
turned into their JSON text as they are measured, a batch of flows at a time, and that text goes
to an unlinked temporary file (the page cache holds it, not the process); the document carries a
SpilledJson in their place and report.jsonout.dumps_pieces copies the text back in when it
writes the flow. The text is report.jsonout.indented's, so the output is the same byte for byte.
"""
from __future__ import annotations

import json
import os
import tempfile
from array import array

# jsonout.indented(metrics) as the value of a flow's "metrics" key, in the document's
# "flows" list (dumps_pieces indents a flow by four spaces, its keys by two more)
METRICS_INDENT = "\n" + " " * 6
_WRITE_BUFFER = 1 << 22


class JsonSpill:
    """Texts numbered 0, 1, 2 ... in the order they were added, kept in a temporary file."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="throttledetect-")
        self._ends = array("q")
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, text: str) -> int:
        """Keep `text`; returns its number."""
        data = text.encode("utf-8")
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._size += len(data)
        self._ends.append(self._size)
        if self._pending_bytes >= _WRITE_BUFFER:
            self._flush()
        return len(self._ends) - 1

    def add_metrics(self, value) -> int:
        """Keep the JSON of a flow's metrics (a FlowMetrics.to_json() dict), as it stands in a flow
        of the document that dumps_pieces writes."""
        from throttledetect.report.jsonout import indented
        return self.add(indented(value).replace("\n", METRICS_INDENT))

    def text(self, i: int) -> str:
        if self._pending:
            self._flush()
        start = self._ends[i - 1] if i else 0
        return os.pread(self._file.fileno(), self._ends[i] - start, start).decode("utf-8")

    def value(self, i: int):
        """Text i parsed again (a reader of the document that wants the values, not the text)."""
        return json.loads(self.text(i))

    def _flush(self) -> None:
        self._file.write(b"".join(self._pending))
        self._file.flush()
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        self._file.close()


class SpilledJson:
    """A value of the document that is JSON text in a JsonSpill (see the module docstring)."""

    __slots__ = ("spill", "index")

    def __init__(self, spill: JsonSpill, index: int):
        self.spill, self.index = spill, index

    def text(self) -> str:
        return self.spill.text(self.index)

    def value(self):
        return self.spill.value(self.index)
