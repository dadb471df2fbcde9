"""Loading protocol/vectors/attestation-*.json (conventions: make_attestation_vectors.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"attestation-{name}.json").read_text())


def data_of(case: dict[str, Any]) -> bytes:
    """A case's bytes: its text (or base64), then `repeat.string` times `repeat.count`."""
    data = base64.b64decode(case["base64"]) if "base64" in case else case["text"].encode()
    if "repeat" in case:
        data += case["repeat"]["string"].encode() * case["repeat"]["count"]
    return data


def names(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]
