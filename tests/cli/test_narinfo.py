"""`p2pcache narinfo sign|verify`: Guix's verdicts, exit 0 only for a valid signature."""

import json
import subprocess

from tests.cli.run import p2pcache


def test_verify_vectors(vectors_dir):
    cases = json.loads((vectors_dir / "narinfo-vectors.json").read_text())["cases"]
    for case in cases:
        key = vectors_dir / case.get("key_file", "test-signing-key.pub")
        r = p2pcache(
            "narinfo", "verify", str(vectors_dir / case["narinfo_file"]), "--key", str(key)
        )
        assert r.stdout.decode().strip() == case["expected"], case["name"]
        assert r.returncode == (0 if case["expected"] == "valid-signature" else 1)


def test_verify_against_an_acl(vectors_dir):
    r = p2pcache(
        "narinfo",
        "verify",
        str(vectors_dir / "tree.narinfo"),
        "--acl",
        str(vectors_dir / "test-acl"),
    )
    assert r.returncode == 0 and r.stdout == b"valid-signature\n"


def test_sign_reproduces_libgcrypt_byte_for_byte(vectors_dir):
    """RFC 6979 makes signing deterministic: re-signing a vector gives its exact bytes."""
    for name in ("tree.narinfo", "hello-synthetic.narinfo"):
        r = p2pcache(
            "narinfo",
            "sign",
            "--key",
            str(vectors_dir / "test-signing-key.sec"),
            "--host",
            "p2p-test-host",
            str(vectors_dir / name),
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == (vectors_dir / name).read_bytes()


def test_signed_by_us_verified_by_libgcrypt(vectors_dir, oracle, tmp_path):
    keys = tmp_path / "keys"
    assert p2pcache("keygen", str(keys)).returncode == 0
    unsigned = tmp_path / "unsigned.narinfo"
    unsigned.write_bytes((vectors_dir / "tree.narinfo").read_bytes())
    r = p2pcache("narinfo", "sign", "--key", str(keys / "signing-key.sec"), str(unsigned))
    assert r.returncode == 0, r.stderr
    signed = tmp_path / "signed.narinfo"
    signed.write_bytes(r.stdout)
    verdict = subprocess.run(
        [str(oracle), "verify", str(signed), str(keys / "signing-key.pub")], capture_output=True
    )
    assert verdict.stdout == b"valid-signature\n"


def test_errors_are_one_line(tmp_path, vectors_dir):
    r = p2pcache("narinfo", "verify", str(tmp_path / "nope"), "--key", str(tmp_path / "nokey"))
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("(public-key (rsa (n #00#)))")
    r = p2pcache("narinfo", "verify", str(vectors_dir / "tree.narinfo"), "--key", str(bad_key))
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr
