"""JSON for results that carry numpy scalars and arrays."""
from __future__ import annotations

import numpy as np


def json_default(x):
    """`default=` for json.dump: numpy integers, floats and arrays as plain Python values."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


_LIST_HOLE = "\x00items\x00"


def dumps_pieces(doc: dict, key: str, items, *, keys=None):
    """json.dumps(doc, indent=2) with doc[key] = the list of `items` (an iterable of dicts, or of their
    text as an item of that list when the caller has it already), as text
    pieces: the items are rendered one at a time, so a document of a million flows is never held as
    a list of dicts nor as one string. Byte for byte what json.dumps of the whole gives."""
    import json
    whole = dict(doc, **{key: _LIST_HOLE})
    if keys is not None:            # the key order of the document being reproduced
        whole = {k: whole[k] for k in keys}
    head, tail = json.dumps(whole, indent=2).split(json.dumps(_LIST_HOLE), 1)
    yield head
    first = True
    batch = []
    for item in items:
        text = item if isinstance(item, str) else _flat_item(item)
        if text is None:
            text = _item_text(item)
        batch.append(("[\n    " if first else ",\n    ") + text)
        first = False
        if len(batch) >= 4096:
            yield "".join(batch)
            batch = []
    yield "".join(batch) + ("[]" if first else "\n  ]") + tail


_SPILLED_HOLE = "\x00spilled\x00"


def _item_text(item) -> str:
    """json.dumps(item, indent=2) as an element of the list; a flow's metrics kept on disk
    (report.spill.SpilledJson) are copied in as the text they were spilled as."""
    import json
    from throttledetect.report.spill import SpilledJson
    spilled = item.get("metrics") if type(item) is dict else None
    if type(spilled) is not SpilledJson:
        return json.dumps(item, indent=2).replace("\n", "\n    ")
    text = json.dumps(dict(item, metrics=_SPILLED_HOLE), indent=2).replace("\n", "\n    ")
    return text.replace(json.dumps(_SPILLED_HOLE), spilled.text(), 1)


def _flat_item(item: dict) -> str | None:
    """json.dumps(item, indent=2) as an element of a list at the second level, for a dict of plain
    scalars (a flow entry): about ten times faster than the encoder's general path. None when a
    value is not a plain scalar (the caller then uses json.dumps)."""
    from json.encoder import encode_basestring_ascii as quote
    parts = []
    for k, v in item.items():
        t = type(v)
        if t is str:
            text = quote(v)
        elif t is int:
            text = int.__repr__(v)
        elif t is float:
            if v != v or v in (float("inf"), float("-inf")):
                return None
            text = float.__repr__(v)
        elif v is None:
            text = "null"
        elif t is bool:
            text = "true" if v else "false"
        else:
            return None
        if type(k) is not str:
            return None
        parts.append(f"{quote(k)}: {text}")
    if not parts:
        return None
    return "{\n      " + ",\n      ".join(parts) + "\n    }"
