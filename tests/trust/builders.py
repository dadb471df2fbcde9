"""Builders for tests: deterministic keys and real signed attestations of made-up items."""

from __future__ import annotations

import hashlib

import nacl.signing

from p2pcache.guix import nix32
from p2pcache.trust.attestation import Attestation, Evidence, SignedAttestation, sign_attestation


def builder_key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


def store_path(n: int, name: str = "hello-2.12") -> str:
    digest = hashlib.sha256(b"item %d" % n).digest()[:20]
    return f"/gnu/store/{nix32.encode(digest)}-{name}"


def hash_part(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


def signed_attestation(
    key: nacl.signing.SigningKey,
    path: str,
    *,
    nar_hash: bytes | None = None,
    evidence: Evidence = Evidence.BUILD_LOG,
    time: int = 1_790_000_000,
) -> SignedAttestation:
    return sign_attestation(
        Attestation(
            builder=bytes(key.verify_key),
            store_path=path,
            nar_hash=nar_hash or hashlib.sha256(path.encode()).digest(),
            nar_size=1234,
            references=(path.rsplit("/", 1)[-1],),
            deriver=None,
            system="x86_64-linux",
            time=time,
            chunk_root=hashlib.sha256(b"chunks of " + path.encode()).digest(),
            evidence=evidence,
        ),
        key,
    )
