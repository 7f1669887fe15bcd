"""JSON for results that carry numpy scalars and arrays."""
from __future__ import annotations

import numpy as np

from throttledetect.report.spill import SpilledJson


def json_default(x):
    """`default=` for json.dump: numpy integers, floats and arrays as plain Python values."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


try:
    import orjson as _orjson
except ImportError:                # a source tree run without its dependencies installed
    _orjson = None


def indented(value) -> str:
    """JSON text of value indented by two spaces, as json.dumps(value, indent=2, default=json_default)
    writes it, but by orjson's encoder (C, several times faster: the standard library's indenting
    encoder is pure Python and took a third of `analyze --format json` on a big capture, issue 15).
    The text differs from json.dumps's only where JSON allows: floats in their shortest form
    (0.00001 for 1e-05), non-ASCII characters as themselves, and NaN or infinity as null (json.dumps
    writes NaN, which is not JSON)."""
    if _orjson is None:
        import json
        return json.dumps(value, indent=2, default=json_default)
    return _orjson.dumps(value, default=json_default, option=_orjson.OPT_INDENT_2 | _orjson.OPT_SERIALIZE_NUMPY
                         | _orjson.OPT_NON_STR_KEYS).decode()


_LIST_HOLE = "\x00items\x00"


def dumps_pieces(doc: dict, key: str, items, *, keys=None):
    """indented(doc) with doc[key] = the list of `items` (an iterable of dicts, or of their
    text as an item of that list when the caller has it already), as text
    pieces: the items are rendered one at a time, so a document of a million flows is never held as
    a list of dicts nor as one string. Byte for byte what indented() of the whole gives."""
    whole = dict(doc, **{key: _LIST_HOLE})
    if keys is not None:            # the key order of the document being reproduced
        whole = {k: whole[k] for k in keys}
    head, tail = indented(whole).split(indented(_LIST_HOLE), 1)
    yield head
    first = True
    batch = []
    for item in items:
        text = item if isinstance(item, str) else _item_text(item)
        batch.append(("[\n    " if first else ",\n    ") + text)
        first = False
        if len(batch) >= 4096:
            yield "".join(batch)
            batch = []
    yield "".join(batch) + ("[]" if first else "\n  ]") + tail


_SPILLED_HOLE = "\x00spilled\x00"


def _item_text(item) -> str:
    """indented(item) as an element of the list; a flow's metrics kept on disk
    (report.spill.SpilledJson) are copied in as the text they were spilled as."""
    spilled = item.get("metrics") if type(item) is dict else None
    if type(spilled) is not SpilledJson:
        # orjson's encoder, one item at a time: three times faster than a hand-written
        # writer of flat dicts that stood here, and byte for byte indented()'s text
        return indented(item).replace("\n", "\n    ")
    text = indented(dict(item, metrics=_SPILLED_HOLE)).replace("\n", "\n    ")
    return text.replace(indented(_SPILLED_HOLE), spilled.text(), 1)
