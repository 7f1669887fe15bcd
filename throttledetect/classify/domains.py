"""models/domains.json: DNS/SNI name suffixes per app, loaded as data and checked strictly."""
from __future__ import annotations

from pathlib import Path

from throttledetect.classify.labels import ALL_LABELS
from throttledetect.classify.tables import ModelError, _read_json, model_file

SCHEMA = "throttledetect/domains/1"


def load_domains(path=None) -> dict:
    source = model_file("domains.json") if path is None else path
    name = str(source)
    doc = _read_json(source if hasattr(source, "open") else Path(source), name)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ModelError(f"{name}: $.schema: expected {SCHEMA!r}")
    apps = doc.get("apps")
    if not isinstance(apps, dict):
        raise ModelError(f"{name}: $.apps: expected an object")
    for app, entry in apps.items():
        where = f"$.apps.{app}"
        if not isinstance(entry, dict):
            raise ModelError(f"{name}: {where}: expected an object")
        for key in ("call", "chat"):
            if entry.get(key) is not None and entry[key] not in ALL_LABELS:
                raise ModelError(f"{name}: {where}.{key}: unknown label {entry[key]!r}")
        if not isinstance(entry.get("not_call", False), bool):
            raise ModelError(f"{name}: {where}.not_call: expected true or false")
        if entry.get("not_call") and entry.get("call") is not None:
            raise ModelError(f"{name}: {where}: an app marked not_call cannot have a call label")
        if "source" in entry and not isinstance(entry["source"], str):
            raise ModelError(f"{name}: {where}.source: expected a string")
        sfx = entry.get("suffixes")
        if not isinstance(sfx, list) or not sfx or not all(isinstance(s, str) and "." in s for s in sfx):
            raise ModelError(f"{name}: {where}.suffixes: expected a list of domain names")
    return apps
