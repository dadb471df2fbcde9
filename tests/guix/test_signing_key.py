"""Guix key files and ACLs, byte for byte as Guix writes them (spec §3.2, §3.3)."""

import base64
import os
import stat

import pytest

from p2pcache.errors import KeyFormatError
from p2pcache.guix import ed25519_ecdsa
from p2pcache.guix.sexp import parse_sexp, to_canonical
from p2pcache.guix.signing_key import (
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    GuixPublicKey,
    GuixSecretKey,
    SigningKeyExistsError,
    acl_entries,
    generate_key_pair,
    load_key_pair,
    parse_acl,
    parse_public_key,
    parse_secret_key,
    render_acl,
    render_public_key,
    render_secret_key,
    write_key_pair,
)

TEST_Q = bytes.fromhex("CC5962088D224F93CCD495810A1AF61F6C347595E2FF6BB7B12C221DCA0681C9")


@pytest.fixture(scope="module")
def test_key(vectors_dir):
    return parse_secret_key((vectors_dir / "test-signing-key.sec").read_bytes())


def test_reads_the_test_key_pair(vectors_dir, test_key):
    public = parse_public_key((vectors_dir / "test-signing-key.pub").read_bytes())
    assert public == GuixPublicKey(TEST_Q)
    assert test_key.public == public


def test_renders_key_files_byte_for_byte(vectors_dir, test_key):
    assert render_public_key(test_key.public) == (vectors_dir / "test-signing-key.pub").read_bytes()
    assert render_secret_key(test_key) == (vectors_dir / "test-signing-key.sec").read_bytes()


def test_public_key_file_layout():
    text = render_public_key(GuixPublicKey(TEST_Q))
    hex_q = TEST_Q.hex().upper().encode()
    assert text == b"(public-key \n (ecc \n  (curve Ed25519)\n  (q #" + hex_q + b"#)\n  )\n )\n"


def test_secret_key_repr_does_not_show_the_secret(test_key):
    assert test_key.d.hex() not in repr(test_key).lower()
    assert test_key.d.hex().upper() not in repr(test_key)


def test_generated_keys_follow_libgcrypts_convention():
    for _ in range(50):
        key = generate_key_pair()
        d = int.from_bytes(key.d, "big")
        assert 2**254 <= d < 2**255
        assert d % 8 == 0
        assert key.public.q == ed25519_ecdsa.public_point(key.d)


def test_generated_keys_differ():
    assert len({generate_key_pair().d for _ in range(20)}) == 20


def test_rendered_keys_read_back():
    key = generate_key_pair()
    assert parse_secret_key(render_secret_key(key)) == key
    assert parse_public_key(render_public_key(key.public)) == key.public


def test_accepts_any_libgcrypt_syntax(test_key):
    canonical = to_canonical(test_key.public.to_sexp())
    assert parse_public_key(canonical) == test_key.public
    assert parse_secret_key(to_canonical(test_key.to_sexp())) == test_key
    one_line = f'(public-key(ecc(curve "Ed25519")(q |{base64.b64encode(TEST_Q).decode()}|)))'
    assert parse_public_key(one_line) == test_key.public


def test_accepts_the_0x40_prefixed_point(test_key):
    text = f"(public-key (ecc (curve Ed25519) (q #40{TEST_Q.hex()}#)))"
    assert parse_public_key(text) == test_key.public


def test_secret_key_without_q_is_accepted(test_key):
    text = f"(private-key (ecc (curve Ed25519) (d #{test_key.d.hex()}#)))"
    assert parse_secret_key(text) == test_key


def test_secret_key_d_in_libgcrypts_signed_format():
    # %m writes a leading zero byte before a first byte >= 0x80; reading strips it.
    key = GuixSecretKey(b"\x80" + bytes(30) + b"\x08")
    d_atom = parse_sexp(render_secret_key(key))[1][3][1]
    assert d_atom == b"\x00" + key.d
    assert parse_secret_key(render_secret_key(key)) == key
    short = GuixSecretKey(bytes(31) + b"\x08")
    assert parse_sexp(render_secret_key(short))[1][3][1] == b"\x08"
    assert parse_secret_key(render_secret_key(short)) == short


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("(public-key (ecc (curve Ed448) (q #00#)))", "not on the Ed25519 curve"),
        ("(public-key (rsa (n #00#) (e #01#)))", "not an ECC key"),
        ("(private-key (ecc (curve Ed25519) (q #00#)))", "not of the form \\(public-key"),
        ("(public-key (ecc (curve Ed25519) (q #0102#)))", "not a 32-byte"),
        ("(public-key (ecc (curve Ed25519) (q (x))))", "not a 32-byte"),
        ("(public-key (ecc (curve Ed25519) (q #" + "00" * 32 + "#)))", "prime-order group"),
        ("(public-key (ecc (curve Ed25519) (flags eddsa) (q #00#)))", "exactly"),
        ("(public-key (ecc (curve Ed25519) (q #00#) (q #00#)))", "appears twice"),
        ("(public-key (ecc (curve Ed25519) q))", "unexpected element"),
        ("(public-key (ecc (curve Ed25519) (q #00#)) extra)", "not of the form"),
        ("(public-key", "not a valid s-expression"),
        ("", "not a valid s-expression"),
    ],
)
def test_bad_public_keys_are_refused(text, match):
    with pytest.raises(KeyFormatError, match=match):
        parse_public_key(text)


@pytest.mark.parametrize(
    ("d_hex", "match"),
    [
        ("00", "non-zero integer"),
        ("01" * 33, "at most 32 bytes"),
        (ed25519_ecdsa.N.to_bytes(32, "big").hex(), "multiple of the group order"),
    ],
)
def test_bad_secret_scalars_are_refused(d_hex, match):
    with pytest.raises(KeyFormatError, match=match):
        parse_secret_key(f"(private-key (ecc (curve Ed25519) (d #{d_hex}#)))")


def test_secret_key_with_a_foreign_q_is_refused(test_key):
    other = generate_key_pair().public.q.hex()
    text = f"(private-key (ecc (curve Ed25519) (q #{other}#) (d #{test_key.d.hex()}#)))"
    with pytest.raises(KeyFormatError, match="does not match d"):
        parse_secret_key(text)


def test_public_key_must_be_32_bytes():
    with pytest.raises(KeyFormatError):
        GuixPublicKey(bytes(33))


# --- ACL -----------------------------------------------------------------------------------------


def test_reads_and_renders_the_test_acl(vectors_dir):
    data = (vectors_dir / "test-acl").read_bytes()
    keys = parse_acl(data)
    assert keys == [GuixPublicKey(TEST_Q)]
    assert render_acl(keys) == data


def test_empty_acl():
    assert render_acl([]) == b"(acl)\n"
    assert parse_acl(b"(acl)\n") == []


def test_acl_with_several_keys_round_trips():
    keys = [generate_key_pair().public for _ in range(3)]
    assert parse_acl(render_acl(keys)) == keys


def test_a_single_public_key_is_read_as_an_acl(vectors_dir):
    assert parse_acl((vectors_dir / "test-signing-key.pub").read_bytes()) == [GuixPublicKey(TEST_Q)]


def test_acl_entries_of_other_shapes_are_kept_by_acl_entries_but_authorize_nothing():
    other = generate_key_pair().public
    odd = [
        f"(public-key (ecc (curve Ed25519) (q #40{TEST_Q.hex()}#)))",
        f"(public-key (ecc (curve Ed25519) (flags eddsa) (q #{TEST_Q.hex()}#)))",
        "(public-key (rsa (n #00C0#) (e #010001#)))",
    ]
    entries = "".join(f"(entry {key} (tag (guix import)))" for key in odd)
    canonical = f"(public-key (ecc (curve Ed25519) (q #{other.q.hex()}#)))"
    text = f"(acl {entries} (entry {canonical} (tag (guix import))))"
    assert parse_acl(text) == [other]
    assert len(acl_entries(text)) == 4


@pytest.mark.parametrize(
    "text",
    [
        "(acl (entry (public-key (ecc (curve Ed25519) (q #00#))) (tag (guix export))))",
        "(acl (entry (public-key (ecc (curve Ed25519) (q #00#)))))",
        "(acl (entry (public-key (ecc (curve Ed25519) (q #00#))) (tag (guix import)) x))",
        "(acl (something))",
        "(acl x)",
        "(not-an-acl)",
        "()",
    ],
)
def test_invalid_acls_are_refused_like_guix(text):
    with pytest.raises(KeyFormatError, match="invalid access-control list"):
        parse_acl(text)


def test_unparseable_acl_is_refused():
    with pytest.raises(KeyFormatError, match="not a valid s-expression"):
        parse_acl("")


# --- writing key files ---------------------------------------------------------------------------


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_write_key_pair_uses_guix_modes_whatever_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        key = write_key_pair(tmp_path / "keys")
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "keys" / SECRET_KEY_FILE) == 0o400
    assert mode_of(tmp_path / "keys" / PUBLIC_KEY_FILE) == 0o444
    assert load_key_pair(tmp_path / "keys") == key
    assert sorted(os.listdir(tmp_path / "keys")) == [PUBLIC_KEY_FILE, SECRET_KEY_FILE]


def test_write_key_pair_writes_guix_bytes(tmp_path, test_key):
    write_key_pair(tmp_path, key=test_key)
    assert (tmp_path / SECRET_KEY_FILE).read_bytes() == render_secret_key(test_key)
    assert (tmp_path / PUBLIC_KEY_FILE).read_bytes() == render_public_key(test_key.public)


def test_secret_file_is_created_private_from_the_start(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    write_key_pair(tmp_path)
    assert [mode for path, mode in created if SECRET_KEY_FILE in path] == [0o400]
    assert [mode for path, mode in created if PUBLIC_KEY_FILE in path] == [0o444]


def test_existing_keys_are_not_replaced_without_force(tmp_path):
    first = write_key_pair(tmp_path)
    with pytest.raises(SigningKeyExistsError, match=r"already exists.*--force"):
        write_key_pair(tmp_path)
    assert load_key_pair(tmp_path) == first
    assert sorted(os.listdir(tmp_path)) == [PUBLIC_KEY_FILE, SECRET_KEY_FILE]


def test_a_lone_public_key_also_blocks_writing(tmp_path):
    (tmp_path / PUBLIC_KEY_FILE).write_bytes(b"x")
    with pytest.raises(SigningKeyExistsError):
        write_key_pair(tmp_path)
    assert not (tmp_path / SECRET_KEY_FILE).exists()


def test_force_replaces_the_key_pair(tmp_path):
    first = write_key_pair(tmp_path)
    second = write_key_pair(tmp_path, force=True)
    assert second != first
    assert load_key_pair(tmp_path) == second
    assert mode_of(tmp_path / SECRET_KEY_FILE) == 0o400
    assert sorted(os.listdir(tmp_path)) == [PUBLIC_KEY_FILE, SECRET_KEY_FILE]


def test_load_key_pair_detects_a_mismatched_public_key(tmp_path):
    write_key_pair(tmp_path)
    public = tmp_path / PUBLIC_KEY_FILE
    os.chmod(public, 0o644)
    public.write_bytes(render_public_key(generate_key_pair().public))
    with pytest.raises(KeyFormatError, match="is not the public key of"):
        load_key_pair(tmp_path)


def test_load_key_pair_refuses_huge_files(tmp_path):
    (tmp_path / SECRET_KEY_FILE).write_bytes(b"(" * 70000)
    (tmp_path / PUBLIC_KEY_FILE).write_bytes(b"x")
    with pytest.raises(KeyFormatError, match="larger than any Guix key file"):
        load_key_pair(tmp_path)
