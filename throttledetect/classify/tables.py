"""Address and port tables for the classifier, read from JSON model files.

Two files, both plain JSON (never pickles), each entry carrying where it came from and when:

``address_ranges.json``::

    {"schema": "throttledetect/address-ranges/1", "generated": "YYYY-MM-DD",
     "apps": {"<app key>": {"label": "<label>", "source": "...", "retrieved": "YYYY-MM-DD",
                            "ipv4": ["a.b.c.d/n", ...], "ipv6": ["x::/n", ...]}}}

App keys are nDPI-like names (``whatsapp``, ``facebook_meta``, ``zoom`` ...); ``label`` is the label the
classifier gives a flow to that app's addresses (:data:`ADDRESS_LABELS`). Several keys may share a label
(``whatsapp`` and ``facebook_meta``). A prefix may appear only once in the whole file; nested prefixes are
fine and the longest one wins.

``ports.json``::

    {"schema": "throttledetect/ports/1", "generated": "YYYY-MM-DD" (optional),
     "entries": [{"app": "...", "label": "...", "transport": "udp"|"tcp", "ports": [[lo, hi], ...],
                  "role": "media"|"relay"|"stun"|"signalling",
                  "media": "audio"|"video"|"screenshare" (optional),
                  "side": "server"|"client"|"any" (optional, default "any"),
                  "only_with_address_apps": ["<app key>", ...] (optional: the rule holds only when the
                                                                remote address is in one of these apps),
                  "source": "...", "retrieved": "YYYY-MM-DD"}]}

Where the files are found (``load_*(path=None)``), first match wins, file by file:

1. the directory named by the environment variable ``THROTTLEDETECT_MODELS`` (if it is set it must be a
   directory; a file missing there falls through to the next place);
2. ``models/`` at the root of the source tree (``Path(__file__).resolve().parents[2] / "models"``);
3. package data ``throttledetect/models_data/`` (for pip installs, where the build copies the files).

Every problem in a file raises :class:`ModelError` with one line ``"<file>: <json path>: <what is wrong>"``.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, NoReturn, Sequence

import numpy as np

ADDRESS_SCHEMA = "throttledetect/address-ranges/1"
PORTS_SCHEMA = "throttledetect/ports/1"
ADDRESS_FILE = "address_ranges.json"
PORTS_FILE = "ports.json"
ENV_VAR = "THROTTLEDETECT_MODELS"
REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
PACKAGE_DATA_DIR = "models_data"  # inside the throttledetect package
MAX_MODEL_BYTES = 64 << 20      # the real files are a few hundred kB

# Labels an address range may carry: the app (its chat label for apps that also chat) or a call label.
ADDRESS_LABELS = frozenset({
    "whatsapp", "telegram", "signal", "zoom", "teams", "google_meet", "discord", "facetime",
    "viber_call", "line_call", "webex", "snapchat_call", "kakaotalk_call", "other",
    "imo_call", "mumble", "tencent_meeting", "wechat_call", "feishu_call", "jitsi", "bigbluebutton",
    "messenger_call", "instagram_call",
})
PORT_LABELS = ADDRESS_LABELS | {"sip"}
TRANSPORTS = {"udp": 17, "tcp": 6}
ROLES = frozenset({"media", "relay", "stun", "signalling"})
MEDIA_KINDS = frozenset({"audio", "video", "screenshare"})
SIDES = frozenset({"server", "client", "any"})

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_U64 = np.uint64


class ModelError(ValueError):
    """A model file is missing, unreadable or not what its schema says. The message is one line."""


# --------------------------------------------------------------------------------------------
# Reading and checking JSON


def _fail(name: str, where: str, what: str) -> NoReturn:
    msg = f"{name}: {where}: {what}"
    raise ModelError(" ".join(msg.split()))  # one line whatever the parts contain


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _read_json(source: Any, name: str) -> Any:
    """Bytes of `source` (a Path or importlib Traversable) -> JSON value; only JSON is accepted."""
    try:
        with source.open("rb") as f:
            raw = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        _fail(name, "$", f"cannot read the file ({exc.strerror or exc})")
    if len(raw) > MAX_MODEL_BYTES:
        _fail(name, "$", f"too large for a model file (over {MAX_MODEL_BYTES >> 20} MiB)")
    if raw[:1] == b"\x80":
        _fail(name, "$", "this is a pickle (starts with byte 0x80); model files must be JSON, pickles are never loaded")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(name, "$", f"not UTF-8 text (byte {exc.start}); model files must be JSON")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        _fail(name, "$", f"duplicate key {exc.args[0]!r}")
    except json.JSONDecodeError as exc:
        _fail(name, "$", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except ValueError as exc:  # NaN / Infinity
        _fail(name, "$", f"not valid JSON: {exc}")
    except RecursionError:
        _fail(name, "$", "nested too deeply for a model file")


def _object(value: Any, name: str, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    if not isinstance(value, dict):
        _fail(name, where, f"expected an object, got {type(value).__name__}")
    required = tuple(required)
    for key in required:
        if key not in value:
            _fail(name, where, f"missing key {key!r}")
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            _fail(name, where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    return value


def _string(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(name, where, f"expected a non-empty string, got {_short(value)}")
    return value


def _choice(value: Any, name: str, where: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    if not isinstance(value, str) or value not in allowed:
        _fail(name, where, f"{_short(value)} is not one of {', '.join(allowed)}")
    return value


def _date(value: Any, name: str, where: str) -> str:
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            datetime.date.fromisoformat(value)
            return value
        except ValueError:
            pass
    _fail(name, where, f"expected a date YYYY-MM-DD, got {_short(value)}")


def _list(value: Any, name: str, where: str) -> list:
    if not isinstance(value, list):
        _fail(name, where, f"expected a list, got {type(value).__name__}")
    return value


def _int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, where, f"expected an integer, got {_short(value)}")
    return value


def _check_schema(doc: dict, name: str, expected: str) -> None:
    if doc["schema"] != expected:
        _fail(name, "$.schema", f"expected {expected!r}, got {_short(doc['schema'])}")


# --------------------------------------------------------------------------------------------
# Finding the files


def model_file(filename: str) -> Any:
    """Where `filename` is found, in the order the module docstring gives (a Path or a Traversable)."""
    env = os.environ.get(ENV_VAR)
    if env:
        directory = Path(env).expanduser()
        if not directory.is_dir():
            _fail(env, "$", f"{ENV_VAR} is set but names no directory")
        if (directory / filename).is_file():
            return directory / filename
    # Only inside a source checkout: an installed package's parents[2] is site-packages.
    if (REPO_MODELS_DIR.parent / "setup.cfg").is_file() and (REPO_MODELS_DIR / filename).is_file():
        return REPO_MODELS_DIR / filename
    try:
        packaged = resources.files("throttledetect").joinpath(PACKAGE_DATA_DIR, filename)
        if packaged.is_file():
            return packaged
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    places = ([f"${ENV_VAR}"] if env else []) + [str(REPO_MODELS_DIR), f"throttledetect/{PACKAGE_DATA_DIR}"]
    _fail(filename, "$", f"model file not found (looked in {', '.join(places)})")


def _resolve(path: str | os.PathLike | None, filename: str) -> tuple[Any, str]:
    if path is None:
        source = model_file(filename)
    else:
        source = Path(path)
    return source, str(source)


# --------------------------------------------------------------------------------------------
# Address ranges


@dataclass(frozen=True)
class AppRanges:
    """One app's prefixes, with where they came from."""

    key: str
    label: str
    source: str
    retrieved: str
    ipv4: tuple[ipaddress.IPv4Network, ...]
    ipv6: tuple[ipaddress.IPv6Network, ...]


def _parse_address_ranges(doc: Any, name: str) -> tuple[str, list[AppRanges]]:
    doc = _object(doc, name, "$", required=("schema", "generated", "apps"))
    _check_schema(doc, name, ADDRESS_SCHEMA)
    generated = _date(doc["generated"], name, "$.generated")
    apps_obj = doc["apps"]
    if not isinstance(apps_obj, dict):
        _fail(name, "$.apps", f"expected an object, got {type(apps_obj).__name__}")
    if not apps_obj:
        _fail(name, "$.apps", "no apps")
    seen: dict = {}  # network -> where it was first listed
    apps = []
    for key, entry in apps_obj.items():
        where = f"$.apps.{key}"
        if not _KEY_RE.match(key):
            _fail(name, where, "app key must be lower-case letters, digits and '_', starting with a letter")
        entry = _object(entry, name, where, required=("label", "source", "retrieved", "ipv4", "ipv6"))
        label = _choice(entry["label"], name, f"{where}.label", ADDRESS_LABELS)
        source = _string(entry["source"], name, f"{where}.source")
        retrieved = _date(entry["retrieved"], name, f"{where}.retrieved")
        nets: dict[int, list] = {4: [], 6: []}
        for family in (4, 6):
            field = f"ipv{family}"
            for i, text in enumerate(_list(entry[field], name, f"{where}.{field}")):
                at = f"{where}.{field}[{i}]"
                if not isinstance(text, str):
                    _fail(name, at, f"expected a prefix string, got {_short(text)}")
                try:
                    net = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    _fail(name, at, f"{text!r} is not an IP prefix")
                if net.version != family:
                    _fail(name, at, f"{text!r} is an IPv{net.version} prefix in the {field} list")
                if family == 6 and net.overlaps(_IPV4_MAPPED):
                    _fail(name, at, f"{text!r} overlaps the IPv4-mapped space {_IPV4_MAPPED}; list IPv4 prefixes under ipv4")
                if net in seen:
                    _fail(name, at, f"{net} is already listed at {seen[net]}")
                seen[net] = at
                nets[family].append(net)
        apps.append(AppRanges(key, label, source, retrieved, tuple(nets[4]), tuple(nets[6])))
    return generated, apps


def _mask(bits: int, width: int) -> np.uint64:
    """The top `bits` of a `width`-bit word set."""
    return _U64(((1 << bits) - 1) << (width - bits))


class AddressTable:
    """Longest-prefix match of many addresses at once.

    Addresses are 128-bit values split into (hi, lo) uint64 halves, IPv4 stored IPv4-mapped
    (::ffff:a.b.c.d), as in :mod:`throttledetect.read.table`. IPv4-mapped addresses are matched
    against the ipv4 lists only, everything else against the ipv6 lists.
    """

    def __init__(self, apps: Sequence[AppRanges], path: str = "<memory>", generated: str | None = None):
        self.apps: tuple[AppRanges, ...] = tuple(apps)
        self.path = path
        self.generated = generated
        self.keys = tuple(a.key for a in self.apps)
        self.labels = tuple(a.label for a in self.apps)
        self._index = {a.key: i for i, a in enumerate(self.apps)}
        # One level per prefix length, longest first: (length, mask, sorted network values, app index).
        self._v4: list[tuple[int, np.uint64, np.ndarray, np.ndarray]] = []
        # IPv6 up to /64 compare the high half only; longer ones compare the high half exactly and the
        # low half masked, grouped by high half: (length, mask, {hi: (sorted lo values, app index)}).
        self._v6_short: list[tuple[int, np.uint64, np.ndarray, np.ndarray]] = []
        self._v6_long: list[tuple[int, np.uint64, dict[int, tuple[np.ndarray, np.ndarray]]]] = []
        self._build()

    # -- construction

    def _build(self) -> None:
        v4: dict[int, list[tuple[int, int]]] = {}
        v6: dict[int, list[tuple[int, int]]] = {}
        for i, app in enumerate(self.apps):
            for net in app.ipv4:
                v4.setdefault(net.prefixlen, []).append((int(net.network_address), i))
            for net in app.ipv6:
                v6.setdefault(net.prefixlen, []).append((int(net.network_address), i))
        for length in sorted(v4, reverse=True):
            values, idx = self._sorted(v4[length])
            self._v4.append((length, _mask(length, 32), values, idx))
        for length in sorted(v6, reverse=True):
            if length <= 64:
                values, idx = self._sorted([(value >> 64, i) for value, i in v6[length]])
                self._v6_short.append((length, _mask(length, 64), values, idx))
            else:
                groups: dict[int, list[tuple[int, int]]] = {}
                for value, i in v6[length]:
                    groups.setdefault(value >> 64, []).append((value & 0xFFFFFFFFFFFFFFFF, i))
                self._v6_long.append((length, _mask(length - 64, 64),
                                      {hi: self._sorted(rows) for hi, rows in groups.items()}))

    @staticmethod
    def _sorted(rows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        rows = sorted(rows)
        values = np.array([v for v, _ in rows], dtype=np.uint64)
        idx = np.array([i for _, i in rows], dtype=np.int32)
        return values, idx

    # -- queries

    def __len__(self) -> int:
        return len(self.apps)

    @property
    def n_prefixes(self) -> int:
        return sum(len(a.ipv4) + len(a.ipv6) for a in self.apps)

    def index(self, key: str) -> int:
        """Position of app `key` in :attr:`apps` (KeyError if absent)."""
        return self._index[key]

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Index into :attr:`apps` of the longest prefix holding each address, or -1 (int32, same shape)."""
        hi = _as_u64(hi, "hi")
        lo = _as_u64(lo, "lo")
        if hi.shape != lo.shape:
            raise ValueError(f"hi and lo differ in shape: {hi.shape} vs {lo.shape}")
        shape = hi.shape
        hi = hi.ravel()
        lo = lo.ravel()
        out = np.full(hi.shape, -1, dtype=np.int32)
        is_v4 = (hi == 0) & ((lo >> _U64(32)) == _U64(0xFFFF))

        rows = np.flatnonzero(is_v4)
        if rows.size and self._v4:
            values = lo[rows] & _U64(0xFFFFFFFF)
            pending = np.arange(rows.size)
            for _length, mask, nets, idx in self._v4:
                if not pending.size:
                    break
                hit, app = _find(values[pending] & mask, nets, idx)
                out[rows[pending[hit]]] = app
                pending = pending[~hit]

        rows = np.flatnonzero(~is_v4)
        if rows.size and (self._v6_short or self._v6_long):
            his, los = hi[rows], lo[rows]
            pending = np.arange(rows.size)
            # Every /65../128 is longer than every /0../64, so the long levels go first.
            for _length, mask, groups in self._v6_long:
                if not pending.size:
                    break
                hit = np.zeros(pending.size, dtype=bool)
                for group_hi, (nets, idx) in groups.items():
                    sel = np.flatnonzero(his[pending] == _U64(group_hi))
                    if not sel.size:
                        continue
                    found, app = _find(los[pending[sel]] & mask, nets, idx)
                    out[rows[pending[sel[found]]]] = app
                    hit[sel[found]] = True
                pending = pending[~hit]
            for _length, mask, nets, idx in self._v6_short:
                if not pending.size:
                    break
                hit, app = _find(his[pending] & mask, nets, idx)
                out[rows[pending[hit]]] = app
                pending = pending[~hit]
        return out.reshape(shape)

    def lookup_addresses(self, addresses: Iterable[str]) -> np.ndarray:
        """:meth:`lookup` for address strings ('1.2.3.4', '2001:db8::1')."""
        from throttledetect.read.table import address_to_halves

        halves = [address_to_halves(a) for a in addresses]
        hi = np.array([h for h, _ in halves], dtype=np.uint64)
        lo = np.array([l for _, l in halves], dtype=np.uint64)
        return self.lookup(hi, lo)

    def app_of(self, address: str) -> AppRanges | None:
        """The app whose longest prefix holds `address`, or None."""
        i = int(self.lookup_addresses([address])[0])
        return self.apps[i] if i >= 0 else None

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        """Labels (object array) for lookup results; None where the index is -1."""
        table = np.array(list(self.labels) + [None], dtype=object)
        indices = np.asarray(indices)
        return table[np.where(indices < 0, len(self.labels), indices)]


def _as_u64(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype == object or arr.dtype.kind in "iu":
        return np.asarray(values, dtype=np.uint64)
    raise TypeError(f"{what} must be unsigned 64-bit integers, got {arr.dtype}")


def _find(keys: np.ndarray, nets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which `keys` are in the sorted `nets`, and the app index of those that are."""
    pos = np.searchsorted(nets, keys)
    pos = np.minimum(pos, nets.size - 1)
    hit = nets[pos] == keys
    return hit, idx[pos[hit]]


def load_address_ranges(path: str | os.PathLike | None = None) -> AddressTable:
    """Read and check ``address_ranges.json`` (see the module docstring for where it is looked for)."""
    source, name = _resolve(path, ADDRESS_FILE)
    generated, apps = _parse_address_ranges(_read_json(source, name), name)
    return AddressTable(apps, path=name, generated=generated)


# --------------------------------------------------------------------------------------------
# Ports


@dataclass(frozen=True)
class PortEntry:
    """One port rule: these ports, on this transport, suggest this app in this role."""

    app: str
    label: str
    transport: str
    ranges: tuple[tuple[int, int], ...]
    role: str
    media: str | None
    side: str
    only_with_address_apps: tuple[str, ...]
    source: str
    retrieved: str

    def contains(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ranges)


def _parse_ports(doc: Any, name: str) -> tuple[str | None, list[PortEntry]]:
    doc = _object(doc, name, "$", required=("schema", "entries"), optional=("generated",))
    _check_schema(doc, name, PORTS_SCHEMA)
    generated = _date(doc["generated"], name, "$.generated") if "generated" in doc else None
    entries = []
    raw_entries = _list(doc["entries"], name, "$.entries")
    if not raw_entries:
        _fail(name, "$.entries", "no entries")
    for i, entry in enumerate(raw_entries):
        where = f"$.entries[{i}]"
        entry = _object(entry, name, where,
                        required=("app", "label", "transport", "ports", "role", "source", "retrieved"),
                        optional=("media", "side", "only_with_address_apps"))
        app = _string(entry["app"], name, f"{where}.app")
        if not _KEY_RE.match(app):
            _fail(name, f"{where}.app", "app key must be lower-case letters, digits and '_', starting with a letter")
        label = _choice(entry["label"], name, f"{where}.label", PORT_LABELS)
        transport = _choice(entry["transport"], name, f"{where}.transport", TRANSPORTS)
        role = _choice(entry["role"], name, f"{where}.role", ROLES)
        media = _choice(entry["media"], name, f"{where}.media", MEDIA_KINDS) if "media" in entry else None
        side = _choice(entry["side"], name, f"{where}.side", SIDES) if "side" in entry else "any"
        only_with: tuple[str, ...] = ()
        if "only_with_address_apps" in entry:
            items = _list(entry["only_with_address_apps"], name, f"{where}.only_with_address_apps")
            if not items:
                _fail(name, f"{where}.only_with_address_apps", "empty list (leave the key out instead)")
            only_with = tuple(_string(v, name, f"{where}.only_with_address_apps[{j}]") for j, v in enumerate(items))
        source = _string(entry["source"], name, f"{where}.source")
        retrieved = _date(entry["retrieved"], name, f"{where}.retrieved")
        ranges = []
        raw_ranges = _list(entry["ports"], name, f"{where}.ports")
        if not raw_ranges:
            _fail(name, f"{where}.ports", "no port ranges")
        for j, pair in enumerate(raw_ranges):
            at = f"{where}.ports[{j}]"
            if not isinstance(pair, list) or len(pair) != 2:
                _fail(name, at, f"expected a pair [lo, hi], got {_short(pair)}")
            lo = _int(pair[0], name, f"{at}[0]")
            hi = _int(pair[1], name, f"{at}[1]")
            for k, port in ((0, lo), (1, hi)):
                if not 0 <= port <= 65535:
                    _fail(name, f"{at}[{k}]", f"port {port} is outside 0..65535")
            if lo > hi:
                _fail(name, at, f"lo {lo} is greater than hi {hi}")
            ranges.append((lo, hi))
        entries.append(PortEntry(app, label, transport, tuple(ranges), role, media, side, only_with, source, retrieved))
    return generated, entries


class PortTable:
    """Port rules, matched against many ports at once through a 65536-row lookup table per transport."""

    def __init__(self, entries: Sequence[PortEntry], path: str = "<memory>", generated: str | None = None):
        self.entries: tuple[PortEntry, ...] = tuple(entries)
        self.path = path
        self.generated = generated
        self._table: dict[str, np.ndarray] = {}
        for transport in TRANSPORTS:
            table = np.zeros((65536, len(self.entries)), dtype=bool)
            for i, entry in enumerate(self.entries):
                if entry.transport == transport:
                    for lo, hi in entry.ranges:
                        table[lo:hi + 1, i] = True
            self._table[transport] = table

    def __len__(self) -> int:
        return len(self.entries)

    def _transport(self, transport: str | int) -> str:
        if isinstance(transport, str) and transport.lower() in TRANSPORTS:
            return transport.lower()
        for name_, number in TRANSPORTS.items():
            if not isinstance(transport, (str, bool)) and transport == number:
                return name_
        raise ValueError(f"transport must be 'udp', 'tcp', 17 or 6, got {transport!r}")

    def mask(self, transport: str | int, ports: Any) -> np.ndarray:
        """bool[..., len(entries)]: which entries hold each port (vectorised)."""
        ports = np.asarray(ports)
        if ports.dtype.kind not in "iu":
            raise TypeError(f"ports must be integers, got {ports.dtype}")
        if ports.size and (ports.min() < 0 or ports.max() > 65535):
            raise ValueError("ports must lie in 0..65535")
        return self._table[self._transport(transport)][ports.astype(np.intp)]

    def match(self, transport: str | int, ports: Any) -> np.ndarray | list[np.ndarray]:
        """Indices into :attr:`entries` matching the port: an int array for one port, a list of them for many."""
        mask = self.mask(transport, ports)
        if mask.ndim == 1:
            return np.flatnonzero(mask)
        return [np.flatnonzero(row) for row in mask.reshape(-1, len(self.entries))]

    def check_against(self, addresses: AddressTable) -> None:
        """ModelError if an entry's ``only_with_address_apps`` names an app the address table lacks."""
        for i, entry in enumerate(self.entries):
            for j, key in enumerate(entry.only_with_address_apps):
                if key not in addresses.keys:
                    _fail(self.path, f"$.entries[{i}].only_with_address_apps[{j}]",
                          f"{key!r} is not an app of {addresses.path}")


def load_ports(path: str | os.PathLike | None = None) -> PortTable:
    """Read and check ``ports.json`` (see the module docstring for where it is looked for)."""
    source, name = _resolve(path, PORTS_FILE)
    generated, entries = _parse_ports(_read_json(source, name), name)
    return PortTable(entries, path=name, generated=generated)
