"""The system type read from a derivation's ATerm text, and hostile derivations refused."""

import pytest

from p2pcache.guix.derivation import DerivationFormatError, parse_derivation_system
from p2pcache.testing.derivation import Derivation, render_derivation


def drv(system: str, **fields) -> bytes:
    base = dict(outputs=(), input_drvs=(), input_srcs=(), builder="/b", args=(), env=())
    return render_derivation(Derivation(system=system, **(base | fields))).encode()


def test_system_of_a_derivation_with_every_kind_of_field():
    data = drv(
        "aarch64-linux",
        outputs=(("out", "/gnu/store/a-x"), ("lib", '/gnu/store/b-"y"')),
        input_drvs=(("/gnu/store/c-z.drv", ("lib", "out")),),
        input_srcs=("/gnu/store/d-\\weird\n\t",),
        env=(("script", "line\nline\\"),),
    )
    assert parse_derivation_system(data) == "aarch64-linux"


def test_system_of_an_empty_derivation_and_an_escaped_system():
    assert parse_derivation_system(drv("x86_64-linux")) == "x86_64-linux"
    assert parse_derivation_system(drv('we"ird\\')) == 'we"ird\\'


def test_generated_store_derivations_say_their_system(small_test_store):
    for info in small_test_store.derivations():
        data = small_test_store.real_path(info.path).read_bytes()
        assert parse_derivation_system(data) == "x86_64-linux"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Derive(",
        b"Derive([",
        b'Derive(["a"',
        b'Derive(["a"],[],[],',
        b'Derive([],[],[],"unterminated',
        b'Derive([],[],[],"bad \\q escape")',
        b'Derive([],[],[],"\xff")',
        b"Derive(" + b"[" * 20 + b"]" * 20 + b',[],[],"s")',
        b'Derive([],[],"not a list","s")',
        b'Derive([],[],[]"s")',
        b'Derive([1],[],[],"s")',
        b"Derive([],[],[],s)",
        b'derive([],[],[],"s")',
    ],
)
def test_malformed_derivations_are_refused(data):
    with pytest.raises(DerivationFormatError):
        parse_derivation_system(data)
