"""Regenerate protocol/vectors/attestation-*.json (run from the repository root).

    python3 protocol/make_attestation_vectors.py

Keys come from fixed seeds and Ed25519 is deterministic, so the output is reproducible. The
valid cases are made with p2pcache's own code; tests/trust/test_attestation_vectors.py checks
them against from-the-spec computations (signed message, key IDs, leaf hashes, proofs), and
every invalid case against the reason it must fail with.

JSON conventions: binary values are lowercase hex; protocol texts are strings. A case whose
bytes are not UTF-8 gives them as "base64"; a case with a "repeat" object means its bytes are
the text followed by repeat.string repeated repeat.count times (for oversized inputs).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing

from p2pcache.guix.store_path import make_store_path
from p2pcache.trust.attestation import (
    Attestation,
    Evidence,
    SignedAttestation,
    parse_attestation,
    render_attestation,
    render_statement,
    sign_attestation,
)
from p2pcache.trust.attestation_bundle import AttestationBundle, render_bundle
from p2pcache.trust.checkpoint import (
    Checkpoint,
    builder_origin,
    cosign_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.merkle_hash import leaf_hash, merkle_root
from p2pcache.trust.merkle_log import MerkleLog
from p2pcache.trust.signed_note import (
    ED25519_SIGNATURE_TYPE,
    format_verifier_key,
    key_id,
)

OUT = Path("protocol/vectors")
TIME = 1_732_000_000  # 2024-11-19, a fixed statement time
COSIGN_TIME = 1_732_000_600

Case = dict[str, Any]


def seed(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(
        hashlib.sha256(b"p2pcache attestation vector " + label.encode()).digest()
    )


BUILDER_A = seed("builder A")
BUILDER_B = seed("builder B")
WITNESS_1 = Cosigner("witness.example/w1", seed("witness 1"))
WITNESS_2 = Cosigner("witness.example/w2", seed("witness 2"))


def pub(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def basename(name: str) -> str:
    return make_store_path("output:out", digest("drv " + name), name).basename


def store_path(name: str) -> str:
    return make_store_path("output:out", digest("drv " + name), name).path


def attestation(builder: nacl.signing.SigningKey, name: str, **fields: Any) -> Attestation:
    defaults: dict[str, Any] = {
        "builder": pub(builder),
        "store_path": store_path(name),
        "nar_hash": digest("nar " + name),
        "nar_size": 1088 + 8 * len(name),
        "references": (basename("glibc-2.39"), basename("gcc-14.2.0-lib")),
        "deriver": make_store_path("text", digest("drv text " + name), name + ".drv").basename,
        "system": "x86_64-linux",
        "time": TIME,
        "chunk_root": leaf_hash(digest("chunk " + name)),
        "evidence": Evidence.BUILD_LOG,
    }
    defaults.update(fields)
    return Attestation(**defaults)


def data_of(case: Case) -> bytes:
    data = base64.b64decode(case["base64"]) if "base64" in case else case["text"].encode()
    if "repeat" in case:
        data += case["repeat"]["string"].encode() * case["repeat"]["count"]
    return data


def text_case(name: str, data: bytes, **expect: Any) -> Case:
    try:
        case: Case = {"name": name, "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        case = {"name": name, "base64": base64.b64encode(data).decode()}
    case.update(expect)
    return case


def fields_of(a: Attestation) -> dict[str, Any]:
    return {
        "builder": a.builder.hex(),
        "store_path": a.store_path,
        "nar_hash": a.nar_hash.hex(),
        "nar_size": a.nar_size,
        "references": list(a.references),
        "deriver": a.deriver,
        "system": a.system,
        "time": a.time,
        "chunk_root": a.chunk_root.hex(),
        "evidence": a.evidence.value,
    }


def replace_line(text: bytes, field: str, line: str | None) -> bytes:
    """Replace (or drop, with None) the line starting with `field:` in an attestation."""
    lines = text.decode().split("\n")
    out = []
    for current in lines:
        if current.startswith(field + ":"):
            if line is not None:
                out.append(line)
        else:
            out.append(current)
    return "\n".join(out).encode()


def swap_lines(text: bytes, i: int, j: int) -> bytes:
    lines = text.split(b"\n")
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def flip_first_proof_hash(proof_line: str) -> str:
    items = proof_line.split(" ")
    raw = bytearray(base64.b64decode(items[1]))
    raw[0] ^= 0x08
    items[1] = base64.b64encode(bytes(raw)).decode()
    return " ".join(items)


def resign(statement: bytes, key: nacl.signing.SigningKey) -> bytes:
    """A statement (11 lines) with a real signature by `key`: bad content, valid signature."""
    signature = base64.b64encode(key.sign(statement).signature).decode()
    return statement + f"Signature: {signature}\n".encode()


def statements() -> dict[str, Any]:
    typical = sign_attestation(attestation(BUILDER_A, "hello-2.12.1"), BUILDER_A)
    bare = sign_attestation(
        attestation(
            BUILDER_A,
            "tzdata-2024a",
            references=(),
            deriver=None,
            evidence=Evidence.FORCED,
            system="aarch64-linux",
            time=0,
        ),
        BUILDER_A,
    )
    self_ref = sign_attestation(
        attestation(
            BUILDER_B,
            "coreutils-9.1",
            references=tuple(
                sorted([basename("coreutils-9.1"), basename("acl-2.3.1"), basename("gmp-6.3.0")])
            ),
            evidence=Evidence.CHECK,
            nar_size=(1 << 63) - 1,
            time=(1 << 63) - 1,
        ),
        BUILDER_B,
    )
    valid = []
    for name, signed in (("typical", typical), ("bare", bare), ("self-reference", self_ref)):
        text = render_attestation(signed)
        valid.append(
            {
                "name": name,
                "fields": fields_of(signed.attestation),
                "signed_message": render_statement(signed.attestation).decode(),
                "signature": signed.signature.hex(),
                "text": text.decode(),
                "leaf_hash": leaf_hash(text).hex(),
            }
        )

    t = render_attestation(typical)
    statement = render_statement(typical.attestation)
    refs = typical.attestation.references
    sig_b64 = base64.b64encode(typical.signature).decode()
    # The last base64 character of a 64-byte value carries 4 unused bits; set one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig_b64[-3]
    odd_sig = sig_b64[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="

    def parse(name: str, data: bytes, reason: str) -> Case:
        return text_case(name, data, reason=reason)

    invalid = [
        {
            "name": "oversized",
            "text": t.decode(),
            "repeat": {"string": "x", "count": 1 << 20},
            "reason": "oversized",
        },
        parse("crlf-line-ends", t.replace(b"\n", b"\r\n"), "encoding"),
        parse("tab-in-value", t.replace(b"NarSize: ", b"NarSize:\t"), "encoding"),
        parse("nul-byte", t.replace(b"x86_64-linux", b"x86_64-linux\0"), "encoding"),
        parse("utf8-in-name", t.replace(b"hello-2.12.1", "hëllo-2.12.1".encode()), "encoding"),
        parse("no-final-newline", t[:-1], "structure"),
        parse("missing-field", replace_line(t, "Deriver", None), "structure"),
        parse("fields-swapped", swap_lines(t, 3, 4), "structure"),
        parse("unknown-field", t.replace(b"System:", b"Comment: hi\nSystem:"), "structure"),
        parse(
            "duplicate-field", t.replace(b"System:", b"System: x86_64-linux\nSystem:"), "structure"
        ),
        parse("trailing-data", t + b"Extra: 1\n", "structure"),
        parse("blank-line-after", t + b"\n", "structure"),
        parse("empty", b"", "structure"),
        parse("other-version", t.replace(b"attestation/v1", b"attestation/v2"), "version"),
        parse(
            "narinfo-instead",
            b"StorePath: " + typical.attestation.store_path.encode() + b"\n",
            "version",
        ),
        parse("double-space", t.replace(b"NarSize: ", b"NarSize:  "), "whitespace"),
        parse("no-space", t.replace(b"NarSize: ", b"NarSize:"), "whitespace"),
        parse(
            "trailing-space",
            t.replace(b"\nSystem: x86_64-linux", b"\nSystem: x86_64-linux "),
            "whitespace",
        ),
        parse(
            "empty-references-with-space",
            replace_line(t, "References", "References: "),
            "whitespace",
        ),
        parse(
            "double-space-between-references",
            t.replace(refs[0].encode() + b" ", refs[0].encode() + b"  "),
            "whitespace",
        ),
        parse("empty-system", replace_line(t, "System", "System:"), "value"),
        parse("system-without-kernel", replace_line(t, "System", "System: x86_64"), "value"),
        parse("nar-size-zero", replace_line(t, "NarSize", "NarSize: 0"), "value"),
        parse("nar-size-not-a-number", replace_line(t, "NarSize", "NarSize: 1e3"), "value"),
        parse(
            "nar-size-too-big", replace_line(t, "NarSize", "NarSize: 9223372036854775808"), "value"
        ),
        parse("nar-size-negative", replace_line(t, "NarSize", "NarSize: -1"), "value"),
        parse("time-too-big", replace_line(t, "Time", "Time: 99999999999999999999"), "value"),
        parse(
            "nar-hash-base16",
            replace_line(t, "NarHash", "NarHash: sha256:" + typical.attestation.nar_hash.hex()),
            "value",
        ),
        parse("nar-hash-sha1", replace_line(t, "NarHash", "NarHash: sha1:" + "0" * 32), "value"),
        parse("store-path-bad-hash", t.replace(b"/gnu/store/", b"/gnu/store/e", 1), "value"),
        parse(
            "store-path-not-absolute",
            replace_line(
                t,
                "StorePath",
                "StorePath: gnu/store/" + typical.attestation.store_path.rsplit("/", 1)[1],
            ),
            "value",
        ),
        parse(
            "reference-is-full-path",
            t.replace(b"References: ", b"References: /gnu/store/"),
            "value",
        ),
        parse("deriver-not-drv", replace_line(t, "Deriver", "Deriver: " + refs[0]), "value"),
        parse(
            "builder-short",
            replace_line(t, "Builder", "Builder: " + typical.attestation.builder.hex()[:62]),
            "value",
        ),
        parse(
            "chunk-root-not-hex", replace_line(t, "ChunkRoot", "ChunkRoot: " + "g" * 64), "value"
        ),
        parse("unknown-evidence", replace_line(t, "Evidence", "Evidence: trust-me"), "value"),
        parse(
            "signature-short",
            replace_line(
                t, "Signature", "Signature: " + base64.b64encode(typical.signature[:63]).decode()
            ),
            "value",
        ),
        parse(
            "signature-not-base64", replace_line(t, "Signature", "Signature: " + "!" * 88), "value"
        ),
        parse(
            "nar-size-leading-zero",
            replace_line(t, "NarSize", f"NarSize: 0{typical.attestation.nar_size}"),
            "non-canonical",
        ),
        parse("time-leading-zero", replace_line(t, "Time", f"Time: 0{TIME}"), "non-canonical"),
        parse(
            "references-unsorted",
            replace_line(t, "References", f"References: {refs[1]} {refs[0]}"),
            "non-canonical",
        ),
        parse(
            "references-repeated",
            replace_line(t, "References", f"References: {refs[0]} {refs[0]} {refs[1]}"),
            "non-canonical",
        ),
        parse(
            "builder-uppercase-hex",
            replace_line(t, "Builder", "Builder: " + typical.attestation.builder.hex().upper()),
            "non-canonical",
        ),
        parse(
            "chunk-root-uppercase-hex",
            replace_line(
                t, "ChunkRoot", "ChunkRoot: " + typical.attestation.chunk_root.hex().upper()
            ),
            "non-canonical",
        ),
        parse(
            "signature-non-canonical-base64",
            replace_line(t, "Signature", "Signature: " + odd_sig),
            "non-canonical",
        ),
    ]

    other_path = resign(
        replace_line(statement, "StorePath", "StorePath: " + store_path("hello-2.12.2")), BUILDER_B
    )
    flipped = bytearray(typical.signature)
    flipped[10] ^= 1
    unverifiable = [
        {
            "name": "store-path-edited-after-signing",
            "text": replace_line(
                t, "StorePath", "StorePath: " + store_path("hello-2.12.2")
            ).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "reason": "bad-signature",
        },
        {
            "name": "nar-hash-edited-after-signing",
            "text": render_attestation(
                SignedAttestation(
                    attestation(BUILDER_A, "hello-2.12.1", nar_hash=digest("evil")),
                    typical.signature,
                )
            ).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "reason": "bad-signature",
        },
        {
            "name": "signature-bit-flipped",
            "text": render_attestation(
                SignedAttestation(typical.attestation, bytes(flipped))
            ).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "reason": "bad-signature",
        },
        {
            "name": "forged-by-another-key",
            "text": resign(statement, BUILDER_B).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "reason": "bad-signature",
        },
        {
            "name": "names-another-builder",
            "text": other_path.decode(),
            "builder_key": pub(BUILDER_B).hex(),
            "reason": "wrong-builder",
        },
        {
            "name": "untrusted-builder-checked-against-trusted-key",
            "text": render_attestation(self_ref).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "reason": "wrong-builder",
        },
    ]
    return {
        "comment": "protocol/attestation.md v1, section 2; see make_attestation_vectors.py",
        "builders": {
            "A": {"seed": bytes(BUILDER_A).hex(), "public_key": pub(BUILDER_A).hex()},
            "B": {"seed": bytes(BUILDER_B).hex(), "public_key": pub(BUILDER_B).hex()},
        },
        "valid": valid,
        "invalid": invalid,
        "unverifiable": unverifiable,
    }


def log_attestations() -> list[bytes]:
    names = [
        "hello-2.12.1",
        "tzdata-2024a",
        "coreutils-9.1",
        "bash-5.2.21",
        "grep-3.11",
        "sed-4.9",
        "gzip-1.13",
    ]
    out = []
    for i, name in enumerate(names):
        a = attestation(BUILDER_A, name, time=TIME + i)
        out.append(render_attestation(sign_attestation(a, BUILDER_A)))
    return out


def memory_log(leaves: list[bytes]) -> MerkleLog:
    log = MerkleLog(":memory:", "example.org/vector-log")
    log.append_many(leaves)
    return log


def checkpoints() -> dict[str, Any]:
    leaves = log_attestations()
    origin = builder_origin(pub(BUILDER_A))
    notes = {}
    for size in (1, 3, 7):
        cp = Checkpoint(origin, size, merkle_root(leaves[:size]))
        notes[size] = sign_checkpoint(cp, BUILDER_A)
    verified7 = verify_checkpoint(notes[7], pub(BUILDER_A))
    cosigned = cosign_checkpoint(verified7, WITNESS_1, COSIGN_TIME)
    cosigned = cosign_checkpoint(
        verify_checkpoint(cosigned, pub(BUILDER_A)), WITNESS_2, COSIGN_TIME + 1
    )
    witnesses = [
        {
            "name": w.name,
            "seed": bytes(s).hex(),
            "public_key": w.verifier.public_key.hex(),
            "key_id": w.key_id.hex(),
            "vkey": format_verifier_key(w.name, 0x04, w.verifier.public_key),
        }
        for w, s in ((WITNESS_1, seed("witness 1")), (WITNESS_2, seed("witness 2")))
    ]
    tree = memory_log(leaves)
    log = {
        "origin": origin,
        "key_id": key_id(origin, ED25519_SIGNATURE_TYPE, pub(BUILDER_A)).hex(),
        "vkey": format_verifier_key(origin, ED25519_SIGNATURE_TYPE, pub(BUILDER_A)),
        "leaves": [leaf.decode() for leaf in leaves],
        "roots": [merkle_root(leaves[:n]).hex() for n in range(1, len(leaves) + 1)],
        "inclusion": [
            {"index": i, "size": n, "proof": [h.hex() for h in tree.inclusion_proof(i, n)]}
            for n in (1, 3, 7)
            for i in range(n)
        ],
        "consistency": [
            {"old": m, "new": n, "proof": [h.hex() for h in tree.consistency_proof(m, n)]}
            for m, n in ((1, 3), (1, 7), (3, 7), (6, 7), (4, 7), (7, 7))
        ],
    }
    valid = [
        {"name": "size-1", "note": notes[1].decode(), "size": 1, "required_cosignatures": 0},
        {"name": "size-3", "note": notes[3].decode(), "size": 3, "required_cosignatures": 0},
        {"name": "size-7", "note": notes[7].decode(), "size": 7, "required_cosignatures": 0},
        {
            "name": "size-7-cosigned",
            "note": cosigned.decode(),
            "size": 7,
            "required_cosignatures": 2,
            "cosignature_times": [COSIGN_TIME, COSIGN_TIME + 1],
        },
        {
            "name": "unknown-signature-ignored",
            "note": (notes[3] + "\u2014 someone.else/key AAAAAAAAAAAA\n".encode()).decode(),
            "size": 3,
            "required_cosignatures": 0,
        },
    ]
    n3 = notes[3].decode()
    text3, _, sigline3 = n3.partition("\n\n")
    root3 = text3.split("\n")[2]
    other_key_sig = sign_checkpoint(Checkpoint(origin, 3, merkle_root(leaves[:3])), BUILDER_B)
    c = cosigned.decode()
    w1_line = next(line for line in c.split("\n") if line.startswith("\u2014 witness.example/w1"))
    w1_blob = base64.b64decode(w1_line.split(" ")[2])
    w1_bad = bytearray(w1_blob)
    w1_bad[-1] ^= 1
    w1_bad_line = "\u2014 witness.example/w1 " + base64.b64encode(bytes(w1_bad)).decode()
    b_origin = builder_origin(pub(BUILDER_B))
    invalid: list[Case] = [
        {
            "name": "oversized",
            "text": n3,
            "repeat": {"string": "x", "count": 1 << 16},
            "stage": "parse",
            "reason": "oversized",
        },
        {
            "name": "too-many-signatures",
            "text": n3 + ("\u2014 someone.else/key AAAAAAAAAAAA\n" * 32),
            "stage": "parse",
            "reason": "oversized",
        },
        {
            "name": "no-blank-line",
            "text": text3 + "\n" + sigline3,
            "stage": "parse",
            "reason": "note-malformed",
        },
        {
            "name": "no-signature",
            "text": text3 + "\n\n",
            "stage": "parse",
            "reason": "note-malformed",
        },
        {
            "name": "no-em-dash",
            "text": text3 + "\n\n- " + sigline3[2:],
            "stage": "parse",
            "reason": "note-malformed",
        },
        {"name": "crlf", "text": n3.replace("\n", "\r\n"), "stage": "parse", "reason": "encoding"},
        {
            "name": "key-name-with-plus",
            "text": n3 + "\u2014 a+b AAAAAAAAAAAA\n",
            "stage": "parse",
            "reason": "key-name",
        },
        {
            "name": "signature-not-base64",
            "text": n3 + "\u2014 someone.else/key !!!!\n",
            "stage": "parse",
            "reason": "base64",
        },
        {
            "name": "signature-non-canonical-base64",
            "text": n3 + "\u2014 someone.else/key AAAAAAAAAAB=\n",
            "stage": "parse",
            "reason": "base64-non-canonical",
        },
        {
            "name": "extension-line",
            "text": text3 + "\nextension\n\n" + sigline3,
            "stage": "parse",
            "reason": "checkpoint-extension",
        },
        {
            "name": "two-lines",
            "text": "\n".join(text3.split("\n")[:2]) + "\n\n" + sigline3,
            "stage": "parse",
            "reason": "checkpoint-malformed",
        },
        {
            "name": "size-leading-zero",
            "text": n3.replace("\n3\n", "\n03\n", 1),
            "stage": "parse",
            "reason": "checkpoint-malformed",
        },
        {
            "name": "size-negative",
            "text": n3.replace("\n3\n", "\n-3\n", 1),
            "stage": "parse",
            "reason": "checkpoint-malformed",
        },
        {
            "name": "size-too-big",
            "text": n3.replace("\n3\n", "\n9223372036854775808\n", 1),
            "stage": "parse",
            "reason": "checkpoint-malformed",
        },
        {
            "name": "root-short",
            "text": n3.replace(root3, base64.b64encode(bytes(31)).decode()),
            "stage": "parse",
            "reason": "checkpoint-malformed",
        },
        {
            "name": "size-edited",
            "text": n3.replace("\n3\n", "\n4\n", 1),
            "stage": "verify",
            "reason": "bad-signature",
        },
        {
            "name": "root-edited",
            "text": n3.replace(root3, base64.b64encode(merkle_root(leaves[:4])).decode()),
            "stage": "verify",
            "reason": "bad-signature",
        },
        {
            "name": "signed-by-another-key",
            "text": other_key_sig.decode(),
            "stage": "verify",
            "reason": "no-known-signature",
        },
        {
            "name": "another-builders-log",
            "text": n3,
            "builder_key": pub(BUILDER_B).hex(),
            "stage": "verify",
            "reason": "wrong-origin",
        },
        {
            "name": "another-origin",
            "text": sign_checkpoint(
                Checkpoint(b_origin, 3, merkle_root(leaves[:3])), BUILDER_A
            ).decode(),
            "stage": "verify",
            "reason": "wrong-origin",
        },
        {
            "name": "witnesses-only",
            "text": "\n".join(
                line for line in c.split("\n") if not line.startswith("\u2014 " + origin)
            ),
            "stage": "verify",
            "reason": "checkpoint-unsigned",
            "required_cosignatures": 2,
        },
        {
            "name": "one-cosignature-of-two",
            "text": "\n".join(
                line for line in c.split("\n") if not line.startswith("\u2014 witness.example/w2")
            ),
            "stage": "verify",
            "reason": "too-few-cosignatures",
            "required_cosignatures": 2,
        },
        {
            "name": "cosignature-bit-flipped",
            "text": c.replace(w1_line, w1_bad_line),
            "stage": "verify",
            "reason": "bad-cosignature",
            "required_cosignatures": 1,
        },
    ]
    return {
        "comment": "protocol/attestation.md v1, sections 3-5; see make_attestation_vectors.py",
        "builder": {"seed": bytes(BUILDER_A).hex(), "public_key": pub(BUILDER_A).hex()},
        "witnesses": witnesses,
        "log": log,
        "valid": valid,
        "invalid": invalid,
    }


def bundles() -> dict[str, Any]:
    leaves = log_attestations()
    origin = builder_origin(pub(BUILDER_A))
    note7 = sign_checkpoint(Checkpoint(origin, 7, merkle_root(leaves)), BUILDER_A)
    cosigned = cosign_checkpoint(verify_checkpoint(note7, pub(BUILDER_A)), WITNESS_1, COSIGN_TIME)
    tree = memory_log(leaves)

    def bundle(
        index: int, note: bytes, proof_size: int = 7, proof_index: int | None = None
    ) -> bytes:
        pi = index if proof_index is None else proof_index
        proof = tuple(tree.inclusion_proof(pi, proof_size))
        return render_bundle(
            AttestationBundle(parse_attestation(leaves[index]), index, proof, note)
        )

    hello = parse_attestation(leaves[0]).attestation.store_path
    grep = parse_attestation(leaves[4]).attestation.store_path
    # A one-leaf log of builder B, for the empty proof.
    b_att = render_attestation(sign_attestation(attestation(BUILDER_B, "hello-2.12.1"), BUILDER_B))
    b_note = sign_checkpoint(
        Checkpoint(builder_origin(pub(BUILDER_B)), 1, leaf_hash(b_att)), BUILDER_B
    )
    b_bundle = b"p2pcache-bundle/v1\nIndex: 0\nProof:\n" + b_att + b_note
    # A log of A whose leaf 1 is an attestation naming A but signed by B: logged, not signed.
    forged = resign(render_statement(parse_attestation(leaves[1]).attestation), BUILDER_B)
    forged_leaves = [leaves[0], forged, leaves[2]]
    forged_note = sign_checkpoint(Checkpoint(origin, 3, merkle_root(forged_leaves)), BUILDER_A)
    forged_proof = memory_log(forged_leaves).inclusion_proof(1, 3)
    forged_bundle = (
        b"p2pcache-bundle/v1\nIndex: 1\nProof: "
        + b" ".join(base64.b64encode(h) for h in forged_proof)
        + b"\n"
        + forged
        + forged_note
    )

    good = bundle(4, cosigned)
    g = good.decode()
    valid = [
        {
            "name": "cosigned",
            "text": g,
            "builder_key": pub(BUILDER_A).hex(),
            "store_path": grep,
            "index": 4,
            "size": 7,
            "required_cosignatures": 1,
        },
        {
            "name": "first-leaf",
            "text": bundle(0, note7).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "store_path": hello,
            "index": 0,
            "size": 7,
            "required_cosignatures": 0,
        },
        {
            "name": "last-leaf",
            "text": bundle(6, note7).decode(),
            "builder_key": pub(BUILDER_A).hex(),
            "store_path": parse_attestation(leaves[6]).attestation.store_path,
            "index": 6,
            "size": 7,
            "required_cosignatures": 0,
        },
        {
            "name": "one-leaf-log-empty-proof",
            "text": b_bundle.decode(),
            "builder_key": pub(BUILDER_B).hex(),
            "store_path": hello,
            "index": 0,
            "size": 1,
            "required_cosignatures": 0,
        },
    ]
    a_key = pub(BUILDER_A).hex()
    lines = g.split("\n")

    def with_line(i: int, line: str) -> str:
        return "\n".join([*lines[:i], line, *lines[i + 1 :]])

    def invalid_case(name: str, text: str, stage: str, reason: str, **extra: Any) -> Case:
        case: Case = {
            "name": name,
            "text": text,
            "builder_key": a_key,
            "store_path": grep,
            "required_cosignatures": 0,
            "stage": stage,
            "reason": reason,
        }
        case.update(extra)
        return case

    invalid = [
        {
            **invalid_case("oversized", g, "parse", "oversized"),
            "repeat": {"string": "x", "count": (1 << 20) + (68 << 10)},
        },
        invalid_case(
            "other-version",
            g.replace("p2pcache-bundle/v1", "p2pcache-bundle/v2"),
            "parse",
            "version",
        ),
        invalid_case("truncated", "\n".join(lines[:8]) + "\n", "parse", "structure"),
        invalid_case("empty", "", "parse", "structure"),
        invalid_case("index-leading-zero", with_line(1, "Index: 04"), "parse", "index"),
        invalid_case("index-not-a-number", with_line(1, "Index: four"), "parse", "index"),
        invalid_case("index-missing", with_line(1, "Leaf: 4"), "parse", "index"),
        invalid_case("proof-not-base64", with_line(2, "Proof: !!!"), "parse", "proof"),
        invalid_case(
            "proof-hash-short",
            with_line(2, "Proof: " + base64.b64encode(bytes(31)).decode()),
            "parse",
            "proof",
        ),
        invalid_case(
            "proof-double-space",
            with_line(2, "Proof: " + lines[2][7:].replace(" ", "  ", 1)),
            "parse",
            "proof",
        ),
        invalid_case(
            "proof-too-long",
            with_line(2, "Proof: " + " ".join([base64.b64encode(bytes(32)).decode()] * 65)),
            "parse",
            "proof",
        ),
        invalid_case(
            "attestation-non-canonical",
            g.replace("NarSize: ", "NarSize: 0", 1),
            "parse",
            "attestation",
        ),
        invalid_case(
            "attestation-line-missing",
            g.replace("System: x86_64-linux\n", "", 1),
            "parse",
            "attestation",
        ),
        invalid_case(
            "checkpoint-missing",
            "\n".join(lines[:15]) + "\n",  # the header lines and the attestation, no more
            "parse",
            "checkpoint",
        ),
        invalid_case(
            "checkpoint-extension-line",
            g.replace("\n7\n", "\n7\nextra\n", 1),
            "parse",
            "checkpoint",
        ),
        invalid_case(
            "replayed-for-another-item", g, "verify", "wrong-store-path", store_path=hello
        ),
        invalid_case(
            "other-builder-expected", g, "verify", "wrong-builder", builder_key=pub(BUILDER_B).hex()
        ),
        invalid_case("index-changed", with_line(1, "Index: 5"), "verify", "root-mismatch"),
        invalid_case(
            "proof-for-another-index",
            bundle(4, cosigned, proof_index=5).decode(),
            "verify",
            "root-mismatch",
        ),
        invalid_case(
            "proof-for-another-size",
            bundle(4, cosigned, proof_size=5).decode(),
            "verify",
            "proof-length",
        ),
        invalid_case(
            "proof-hash-flipped",
            with_line(2, flip_first_proof_hash(lines[2])),
            "verify",
            "root-mismatch",
        ),
        invalid_case("index-beyond-tree", with_line(1, "Index: 7"), "verify", "proof-parameters"),
        invalid_case(
            "checkpoint-signature-bad", flip_log_signature(g, origin), "verify", "bad-signature"
        ),
        invalid_case(
            "cosignature-required",
            bundle(4, note7).decode(),
            "verify",
            "too-few-cosignatures",
            required_cosignatures=1,
        ),
        {
            "name": "logged-forgery",
            "text": forged_bundle.decode(),
            "builder_key": a_key,
            "store_path": parse_attestation(leaves[1]).attestation.store_path,
            "required_cosignatures": 0,
            "stage": "verify",
            "reason": "bad-signature",
        },
    ]
    return {
        "comment": "protocol/attestation.md v1, section 6; see make_attestation_vectors.py",
        "witnesses": [
            {"name": WITNESS_1.name, "public_key": WITNESS_1.verifier.public_key.hex()},
        ],
        "valid": valid,
        "invalid": invalid,
    }


def flip_log_signature(text: str, origin: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("\u2014 " + origin + " "):
            blob = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
            blob[20] ^= 1
            lines[i] = f"\u2014 {origin} {base64.b64encode(bytes(blob)).decode()}"
    return "\n".join(lines)


def write(name: str, make: Callable[[], dict[str, Any]]) -> None:
    path = OUT / name
    path.write_text(json.dumps(make(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def main() -> None:
    write("attestation-statements.json", statements)
    write("attestation-checkpoints.json", checkpoints)
    write("attestation-bundles.json", bundles)


if __name__ == "__main__":
    main()
