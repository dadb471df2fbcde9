"""Real builders for tests: an Ed25519 key, a real Merkle log on disk, real signed bundles.

Nothing here is a stand-in for the code under test: attestations are signed, appended to a
MerkleLog, and bundled with a real inclusion proof and signed checkpoint, exactly as a builder
node does; tests then tamper with the bytes where an attack needs it. The functions at the end
make deterministic keys and signed attestations of made-up items (the builder side's tests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nacl.signing

from p2pcache.guix import nix32
from p2pcache.trust.attestation import (
    Attestation,
    Evidence,
    SignedAttestation,
    render_attestation,
    sign_attestation,
)
from p2pcache.trust.attestation_bundle import AttestationBundle, render_bundle
from p2pcache.trust.attestation_verifier import ConsistencyProof
from p2pcache.trust.checkpoint import builder_origin
from p2pcache.trust.merkle_log import MerkleLog
from p2pcache.trust.policy import ItemClaim, TrustedKey

STORE = "/gnu/store"
ITEM = f"{STORE}/{'a' * 32}-hello-2.12"
OTHER_ITEM = f"{STORE}/{'b' * 32}-evil-1.0"
REFS = (f"{'c' * 32}-glibc-2.39", f"{'a' * 32}-hello-2.12")
NAR_HASH = hashlib.sha256(b"the true NAR").digest()
EVIL_HASH = hashlib.sha256(b"a backdoored NAR").digest()
CHUNK_ROOT = hashlib.sha256(b"the chunk root").digest()
DERIVER = f"{'d' * 32}-hello-2.12.drv"


def claim(**changes) -> ItemClaim:
    values = dict(
        store_path=ITEM,
        nar_hash=NAR_HASH,
        nar_size=4242,
        references=REFS,
        deriver=DERIVER,
        upstream_signed=False,
    )
    values.update(changes)
    return ItemClaim(**values)


class Builder:
    """A builder with a real log; `bundle()` attests, logs and bundles in one step."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.signing_key = nacl.signing.SigningKey(hashlib.sha256(name.encode()).digest())
        self.public = bytes(self.signing_key.verify_key)
        self.trusted = TrustedKey(name, self.public)
        self.origin = builder_origin(self.public)
        directory.mkdir(parents=True, exist_ok=True)
        self.log = MerkleLog(directory / f"{name}.log.sqlite", self.origin)

    def close(self) -> None:
        self.log.close()

    def attestation(self, store_path: str = ITEM, **changes) -> SignedAttestation:
        values = dict(
            builder=self.public,
            store_path=store_path,
            nar_hash=NAR_HASH,
            nar_size=4242,
            references=REFS,
            deriver=DERIVER,
            system="x86_64-linux",
            time=1_790_000_000,
            chunk_root=CHUNK_ROOT,
            evidence=Evidence.BUILD_LOG,
        )
        values.update(changes)
        return sign_attestation(Attestation(**values), self.signing_key)

    def log_bundle(self, signed: SignedAttestation) -> bytes:
        """Append `signed` to the log and return its bundle under the new checkpoint."""
        index = self.log.append(render_attestation(signed))
        return self.bundle_of(signed, index)

    def bundle_of(self, signed: SignedAttestation, index: int) -> bytes:
        proof = tuple(self.log.inclusion_proof(index))
        return render_bundle(
            AttestationBundle(signed, index, proof, self.log.checkpoint(self.signing_key))
        )

    def bundle(self, store_path: str = ITEM, **changes) -> bytes:
        return self.log_bundle(self.attestation(store_path, **changes))

    def filler(self, count: int) -> None:
        """Append `count` attestations of other items (the log grows)."""
        for i in range(count):
            path = f"{STORE}/{'f' * 31}{i % 10}-filler-{i}"
            self.log.append(render_attestation(self.attestation(path, time=1_790_000_000 + i)))


def proofs_from(builders: list[Builder], *, from_builder: bool = True):
    """A ConsistencyProofSource answering from the builders' real logs."""
    by_key = {b.public: b for b in builders}

    async def source(key: bytes, old: int, new: int) -> ConsistencyProof | None:
        builder = by_key.get(key)
        if builder is None or new > builder.log.size:
            return None
        return ConsistencyProof(tuple(builder.log.consistency_proof(old, new)), from_builder)

    return source


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
