"""Where the shared captures are, for every corpus test of the project.

The corpus lives beside the repository (../shared/corpus from the repo root) and is read in
place, never copied. Set THROTTLEDETECT_CORPUS to use another copy. Tests that need it carry
``@need_corpus`` so that they skip, with the reason shown, when it is absent; CI always has it
(.ci/run fails without it), so a skip there cannot hide a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
CORPUS = Path(os.environ["THROTTLEDETECT_CORPUS"]) if os.environ.get("THROTTLEDETECT_CORPUS") else _DEFAULT
HAVE_CORPUS = CORPUS.is_dir()

need_corpus = pytest.mark.skipif(
    not HAVE_CORPUS,
    reason="../shared/corpus not found: corpus tests need the shared captures beside the repo (CI provides them)",
)

NDPI_PCAP_DIR = CORPUS / "ndpi" / "pcap"
NDPI_LABEL_DIR = CORPUS / "ndpi" / "labels"
NDPI_MALFORMED_DIR = CORPUS / "ndpi" / "malformed"
EXTERNAL_DIR = CORPUS / "external"
POLICING_DIR = CORPUS / "policing"


def _files(directory: Path) -> list[Path]:
    # Sorted, so that parametrised test ids are stable; [] when the corpus is absent.
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file())


def ndpi_pcaps() -> list[Path]:
    """The 57 well-formed captures of nDPI's test suite (each has a label file)."""
    return _files(NDPI_PCAP_DIR)


def ndpi_label_for(pcap_path: str | Path) -> Path:
    """The nDPI `.out` label file of a capture (ndpi/pcap or ndpi/malformed): labels/<name>.out."""
    return NDPI_LABEL_DIR / (Path(pcap_path).name + ".out")


def malformed_pcaps() -> list[Path]:
    """The 12 damaged or fuzzed captures the reader must survive."""
    return _files(NDPI_MALFORMED_DIR)


def external_pcaps() -> list[Path]:
    """Longer call captures from outside nDPI's suite (Wehe, WhatsApp, SIP/RTP)."""
    return _files(EXTERNAL_DIR)


def policing_traces() -> list[Path]:
    """The SIGCOMM'16 policing-study TCP traces (.pcap.xz); the file name is the ground truth."""
    return _files(POLICING_DIR)
