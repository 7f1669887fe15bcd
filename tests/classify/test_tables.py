"""Address and port tables: the committed model files, longest-prefix lookup, strict loading."""
from __future__ import annotations

import copy
import ipaddress
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from throttledetect.classify import tables
from throttledetect.classify.tables import (
    ADDRESS_LABELS,
    AddressTable,
    AppRanges,
    ModelError,
    load_address_ranges,
    load_ports,
)
from throttledetect.read.table import address_to_halves

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def addresses() -> AddressTable:
    return load_address_ranges()


@pytest.fixture(scope="module")
def ports():
    return load_ports()


# ---------------------------------------------------------------------------------------------
# The committed files


def test_default_files_are_the_repo_models(addresses, ports):
    assert Path(addresses.path) == MODELS / "address_ranges.json"
    assert Path(ports.path) == MODELS / "ports.json"


def test_every_entry_says_where_it_came_from(addresses, ports):
    assert addresses.generated == "2026-11-23"
    for app in addresses.apps:
        assert app.source.strip() and app.retrieved == "2026-11-23", app.key
    for entry in ports.entries:
        assert entry.source.strip() and entry.retrieved == "2026-11-23", entry.app
    assert addresses.n_prefixes > 800


def test_labels_belong_to_the_project_vocabulary(addresses, ports):
    from throttledetect.classify import labels
    assert ADDRESS_LABELS <= set(labels.ALL_LABELS)
    assert {e.label for e in ports.entries} <= set(labels.ALL_LABELS)


def test_port_rules_name_only_known_address_apps(addresses, ports):
    ports.check_against(addresses)


@pytest.mark.parametrize("address, keys, label", [
    ("91.108.56.130", {"telegram"}, "telegram"),
    ("149.154.167.51", {"telegram"}, "telegram"),
    ("157.240.1.1", {"whatsapp", "facebook_meta"}, "whatsapp"),
    ("31.13.86.51", {"whatsapp"}, "whatsapp"),
    ("52.112.1.1", {"microsoft_teams"}, "teams"),
    ("52.123.200.9", {"microsoft_teams"}, "teams"),
    ("17.1.2.3", {"apple"}, "facetime"),
    ("170.114.10.20", {"zoom"}, "zoom"),
    ("206.247.1.2", {"zoom"}, "zoom"),
    ("66.22.196.5", {"discord"}, "discord"),
    ("74.125.250.129", {"google_meet"}, "google_meet"),
    ("142.250.82.33", {"google_meet"}, "google_meet"),
    ("147.92.130.1", {"line"}, "line_call"),
    ("170.72.1.1", {"webex"}, "webex"),
    ("52.0.253.1", {"viber"}, "viber_call"),
    ("1.201.9.9", {"kakaotalk"}, "kakaotalk_call"),
])
def test_known_addresses(addresses, address, keys, label):
    app = addresses.app_of(address)
    assert app is not None and app.key in keys and app.label == label


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "2001:db8::1"])
def test_private_and_documentation_addresses_match_nothing(addresses, address):
    assert addresses.app_of(address) is None


def test_longest_prefix_wins_where_lists_overlap(addresses):
    # whatsapp lists 157.240.1.60/31 inside facebook_meta's 157.240.0.0/17
    assert addresses.app_of("157.240.1.60").key == "whatsapp"
    assert addresses.app_of("157.240.1.62").key == "facebook_meta"
    # google_meet's 74.125.250.0/24 inside google's 74.125.0.0/16
    assert addresses.app_of("74.125.250.1").key == "google_meet"
    assert addresses.app_of("74.125.251.1").key == "google"
    assert addresses.app_of("2001:4860:4864:6::8").key == "google_meet"


@pytest.mark.parametrize("address, key", [
    ("2001:67c:4e8::5", "telegram"),
    ("2001:b28:f23d:1::1", "telegram"),
    ("2603:1063:1::1", "microsoft_teams"),
    ("2620:1ec:40::9", "microsoft_teams"),
    ("2001:4860:4864:5:8000::1", "google_meet"),
])
def test_ipv6(addresses, address, key):
    assert addresses.app_of(address).key == key


def test_ipv4_mapped_and_plain_ipv6_are_not_confused(addresses):
    # ::91.108.56.130 (IPv4-compatible, not mapped) must not hit the IPv4 lists
    value = int(ipaddress.IPv6Address("::91.108.56.130"))
    assert addresses.lookup(np.array([value >> 64], np.uint64), np.array([value & (2**64 - 1)], np.uint64))[0] == -1


def test_lookup_keeps_shape_and_handles_empty_input(addresses):
    hi, lo = address_to_halves("91.108.56.130")
    out = addresses.lookup(np.full((2, 3), hi, np.uint64), np.full((2, 3), lo, np.uint64))
    assert out.shape == (2, 3) and (out == addresses.index("telegram")).all()
    assert addresses.lookup(np.array([], np.uint64), np.array([], np.uint64)).shape == (0,)
    labels = addresses.labels_of(np.array([addresses.index("zoom"), -1]))
    assert list(labels) == ["zoom", None]


# ---------------------------------------------------------------------------------------------
# Vectorised lookup against a slow ipaddress reference


def reference_lookup(apps: list[AppRanges], address: str) -> int:
    ip = ipaddress.ip_address(address)
    # The packet table stores IPv4 as IPv4-mapped IPv6: ::ffff:a.b.c.d *is* a.b.c.d to it.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    best, best_len = -1, -1
    for i, app in enumerate(apps):
        for net in (app.ipv4 if ip.version == 4 else app.ipv6):
            if ip in net and net.prefixlen > best_len:
                best, best_len = i, net.prefixlen
    return best


def address_near(draw, nets) -> str:
    """A random address: inside one of `nets` (random host bits) or anywhere."""
    if nets and draw(st.booleans()):
        net = draw(st.sampled_from(nets))
        offset = draw(st.integers(0, net.num_addresses - 1))
        return str(net.network_address + offset)
    if draw(st.booleans()):
        return str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
    return str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))))


@st.composite
def real_table_addresses(draw):
    table = load_address_ranges()
    nets = [n for a in table.apps for n in a.ipv4 + a.ipv6]
    return [address_near(draw, nets) for _ in range(draw(st.integers(1, 40)))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(real_table_addresses())
def test_vectorised_lookup_matches_reference_on_real_table(addresses, sample):
    got = addresses.lookup_addresses(sample)
    want = [reference_lookup(list(addresses.apps), a) for a in sample]
    assert got.tolist() == want


@st.composite
def synthetic_table(draw):
    """A few apps with random, often nested, prefixes of every length, IPv4 and IPv6 (incl. /65../128)."""
    seen, apps = set(), []
    for k in range(draw(st.integers(1, 4))):
        v4, v6 = [], []
        for _ in range(draw(st.integers(0, 8))):
            if draw(st.booleans()):
                net = ipaddress.ip_network((draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 32))), strict=False)
            else:
                # share the top bits often so that prefixes nest
                top = draw(st.sampled_from([0x2001_0db8, 0x2a0a_f280, 0x2603_1063]))
                value = (top << 96) | draw(st.integers(0, 2**96 - 1))
                net = ipaddress.ip_network((value, draw(st.integers(0, 128))), strict=False)
                if net.overlaps(ipaddress.ip_network("::ffff:0:0/96")):
                    continue
            if net in seen:
                continue
            seen.add(net)
            (v4 if net.version == 4 else v6).append(net)
        apps.append(AppRanges(f"app{k}", "other", "test", "2026-11-23", tuple(v4), tuple(v6)))
    return apps


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_vectorised_lookup_matches_reference_on_random_tables(data):
    apps = data.draw(synthetic_table())
    table = AddressTable(apps)
    nets = [n for a in apps for n in a.ipv4 + a.ipv6]
    sample = [address_near(data.draw, nets) for _ in range(data.draw(st.integers(1, 30)))]
    assert table.lookup_addresses(sample).tolist() == [reference_lookup(apps, a) for a in sample]


def test_prefixes_longer_than_64_bits():
    apps = [
        AppRanges("wide", "other", "t", "2026-11-23", (), (ipaddress.ip_network("2001:db8::/32"),)),
        AppRanges("narrow", "zoom", "t", "2026-11-23", (), (ipaddress.ip_network("2001:db8:0:1:ffff::/80"),
                                                             ipaddress.ip_network("2001:db8::7/128"))),
    ]
    table = AddressTable(apps)
    got = table.lookup_addresses(["2001:db8:0:1:ffff::1", "2001:db8:0:1:fffe::1", "2001:db8::7", "2001:db8::8",
                                  "2001:db9::1"]).tolist()
    assert got == [1, 0, 1, 0, -1]


# ---------------------------------------------------------------------------------------------
# Ports


def test_port_matches(ports):
    def apps(transport, port):
        return {(ports.entries[i].app, ports.entries[i].media) for i in ports.match(transport, port)}

    assert ("microsoft_teams", "video") in apps("udp", 50025)
    assert ("microsoft_teams", "screenshare") in apps("udp", 3481)
    assert {a for a, _ in apps("udp", 3478)} >= {"microsoft_teams", "whatsapp", "google_meet", "apple"}
    assert {a for a, _ in apps("udp", 8805)} == {"zoom"}
    assert {a for a, _ in apps("udp", 597)} == {"telegram"}
    assert {a for a, _ in apps("udp", 19305)} == {"google_meet"}
    assert {a for a, _ in apps("udp", 7985)} == {"viber"}
    assert {a for a, _ in apps("tcp", 5061)} == {"sip"}
    assert {a for a, _ in apps(17, 16395)} == {"apple"}
    assert apps("tcp", 8805) == set()
    assert apps("udp", 443) == set()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 65535), max_size=50), st.sampled_from(["udp", "tcp"]))
def test_port_mask_matches_entry_ranges(ports, port_list, transport):
    mask = ports.mask(transport, np.array(port_list, dtype=np.uint16))
    for row, port in zip(mask, port_list):
        want = [e.transport == transport and e.contains(port) for e in ports.entries]
        assert row.tolist() == want
    lists = ports.match(transport, np.array(port_list, dtype=np.int64))
    assert [x.tolist() for x in lists] == [np.flatnonzero(r).tolist() for r in mask]


def test_port_queries_reject_bad_input(ports):
    with pytest.raises(ValueError):
        ports.match("sctp", 5060)
    with pytest.raises(ValueError):
        ports.match("udp", [70000])


# ---------------------------------------------------------------------------------------------
# Strict loading


def real_doc(name: str) -> dict:
    return json.loads((MODELS / name).read_text())


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def addr_doc(edit):
    doc = copy.deepcopy(real_doc("address_ranges.json"))
    edit(doc)
    return doc


def ports_doc(edit):
    doc = copy.deepcopy(real_doc("ports.json"))
    edit(doc)
    return doc


def _set(path, value):
    def edit(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


BAD_ADDRESS_FILES = {
    "bad json": '{"schema": "throttledetect/address-ranges/1", "apps": {',
    "pickle bytes": pickle.dumps({"schema": tables.ADDRESS_SCHEMA, "apps": {}}),
    "not utf-8": b'{"schema": "\xff\xfe"}',
    "not an object": "[1, 2, 3]",
    "wrong schema": lambda: addr_doc(_set(["schema"], "throttledetect/address-ranges/2")),
    "missing key": lambda: addr_doc(lambda d: d["apps"]["zoom"].pop("source")),
    "unknown key": lambda: addr_doc(_set(["apps", "zoom", "asn"], 30103)),
    "bad prefix": lambda: addr_doc(lambda d: d["apps"]["zoom"]["ipv4"].append("300.1.2.0/24")),
    "prefix not a string": lambda: addr_doc(lambda d: d["apps"]["zoom"]["ipv4"].append(167772160)),
    "ipv6 in ipv4 list": lambda: addr_doc(lambda d: d["apps"]["zoom"]["ipv4"].append("2001:db8::/32")),
    "ipv4-mapped ipv6": lambda: addr_doc(lambda d: d["apps"]["zoom"]["ipv6"].append("::ffff:1.2.3.0/120")),
    "same prefix twice": lambda: addr_doc(lambda d: d["apps"]["zoom"]["ipv4"].append("91.108.4.0/22")),
    "unknown label": lambda: addr_doc(_set(["apps", "zoom", "label"], "zoom_call")),
    "bad date": lambda: addr_doc(_set(["apps", "zoom", "retrieved"], "2026-13-01")),
    "empty source": lambda: addr_doc(_set(["apps", "zoom", "source"], " ")),
    "bad app key": lambda: addr_doc(lambda d: d["apps"].__setitem__("Zoom!", d["apps"].pop("zoom"))),
    "duplicate key": '{"schema": "a", "schema": "b", "generated": "2026-11-23", "apps": {}}',
    "nan": '{"schema": NaN, "generated": "2026-11-23", "apps": {}}',
}

BAD_PORT_FILES = {
    "bad json": "{'schema': 'throttledetect/ports/1'}",
    "pickle bytes": pickle.dumps({"schema": tables.PORTS_SCHEMA, "entries": []}, protocol=4),
    "wrong schema": lambda: ports_doc(_set(["schema"], "throttledetect/address-ranges/1")),
    "port out of range": lambda: ports_doc(_set(["entries", 0, "ports"], [[3478, 70000]])),
    "negative port": lambda: ports_doc(_set(["entries", 0, "ports"], [[-1, 10]])),
    "lo above hi": lambda: ports_doc(_set(["entries", 0, "ports"], [[3481, 3478]])),
    "port not an integer": lambda: ports_doc(_set(["entries", 0, "ports"], [[3478.0, 3479]])),
    "port is a bool": lambda: ports_doc(_set(["entries", 0, "ports"], [[True, 3479]])),
    "not a pair": lambda: ports_doc(_set(["entries", 0, "ports"], [[3478]])),
    "no ranges": lambda: ports_doc(_set(["entries", 0, "ports"], [])),
    "bad transport": lambda: ports_doc(_set(["entries", 0, "transport"], "sctp")),
    "bad role": lambda: ports_doc(_set(["entries", 0, "role"], "control")),
    "bad media": lambda: ports_doc(_set(["entries", 0, "media"], "voice")),
    "unknown key": lambda: ports_doc(_set(["entries", 0, "comment"], "x")),
}


def _content(value):
    return value() if callable(value) else value


@pytest.mark.parametrize("case", sorted(BAD_ADDRESS_FILES))
def test_malformed_address_file_raises_one_line_model_error(tmp_path, case):
    path = write(tmp_path, "broken_ranges.json", _content(BAD_ADDRESS_FILES[case]))
    with pytest.raises(ModelError) as err:
        load_address_ranges(path)
    message = str(err.value)
    assert message.startswith(str(path) + ": ") and "broken_ranges.json" in message
    assert "\n" not in message


@pytest.mark.parametrize("case", sorted(BAD_PORT_FILES))
def test_malformed_ports_file_raises_one_line_model_error(tmp_path, case):
    path = write(tmp_path, "broken_ports.json", _content(BAD_PORT_FILES[case]))
    with pytest.raises(ModelError) as err:
        load_ports(path)
    message = str(err.value)
    assert message.startswith(str(path) + ": ") and "broken_ports.json" in message
    assert "\n" not in message


def test_error_names_the_json_path(tmp_path):
    path = write(tmp_path, "a.json", addr_doc(lambda d: d["apps"]["zoom"]["ipv4"].insert(3, "1.2.3")))
    with pytest.raises(ModelError, match=r"a\.json: \$\.apps\.zoom\.ipv4\[3\]: '1\.2\.3' is not an IP prefix"):
        load_address_ranges(path)
    path = write(tmp_path, "p.json", ports_doc(_set(["entries", 2, "ports"], [[1, 2], [3478, 65536]])))
    with pytest.raises(ModelError, match=r"p\.json: \$\.entries\[2\]\.ports\[1\]\[1\]: port 65536 is outside 0\.\.65535"):
        load_ports(path)


def test_pickle_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    path = write(tmp_path, "model.json", pickle.dumps({"schema": tables.ADDRESS_SCHEMA}))
    with pytest.raises(ModelError, match="pickle"):
        load_address_ranges(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="absent.json"):
        load_ports(tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------
# Where the files are looked for


def test_env_var_directory_comes_first(tmp_path, monkeypatch):
    doc = {"schema": tables.ADDRESS_SCHEMA, "generated": "2026-11-23",
           "apps": {"mine": {"label": "other", "source": "test", "retrieved": "2026-11-23",
                             "ipv4": ["198.51.100.0/24"], "ipv6": []}}}
    write(tmp_path, "address_ranges.json", doc)
    monkeypatch.setenv("THROTTLEDETECT_MODELS", str(tmp_path))
    table = load_address_ranges()
    assert table.keys == ("mine",) and Path(table.path) == tmp_path / "address_ranges.json"
    # ports.json is not in that directory: falls through to the repo's models/
    assert Path(load_ports().path) == MODELS / "ports.json"


def test_env_var_naming_no_directory_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("THROTTLEDETECT_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="THROTTLEDETECT_MODELS"):
        load_address_ranges()


def test_package_data_is_the_last_resort(tmp_path, monkeypatch):
    monkeypatch.delenv("THROTTLEDETECT_MODELS", raising=False)
    monkeypatch.setattr(tables, "REPO_MODELS_DIR", tmp_path / "no-repo-models")
    try:
        found = tables.model_file("ports.json")
    except ModelError as err:  # no package data in a source checkout: the error lists where it looked
        assert "models_data" in str(err) and "no-repo-models" in str(err)
    else:
        assert "models_data" in str(found)
