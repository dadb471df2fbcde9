"""The bundle list container of GET /p2p/v1/attestations/<hash>: framing, bounds, hostility."""

import pytest

from p2pcache.trust.attestation_bundle import MAX_BUNDLE_SIZE
from p2pcache.trust.bundle_list import (
    MAX_BUNDLE_LIST_SIZE,
    MAX_BUNDLES,
    BundleListFormatError,
    bundle_list_size,
    parse_bundle_list,
    render_bundle_list,
)


def test_bundles_round_trip_byte_for_byte_in_order():
    bundles = [b"p2pcache-bundle/v1\nfirst\n", b"second, with\nnewlines\n\n", b"x"]
    data = render_bundle_list(bundles)
    assert data.startswith(b"p2pcache-bundles/v1 3\n")
    assert parse_bundle_list(data) == bundles
    assert bundle_list_size([len(b) for b in bundles]) == len(data)


def test_the_documented_layout():
    assert render_bundle_list([b"ab", b"c\n"]) == b"p2pcache-bundles/v1 2\n2\nab2\nc\n"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"p2pcache-bundles/v2 1\n1\nx", "version"),
        (b"p2pcache-bundles/v1 0\n", "no bundles"),
        (b"p2pcache-bundles/v1 01\n1\nx", "leading zero count"),
        (b"p2pcache-bundles/v1 %d\n" % (MAX_BUNDLES + 1) + b"1\nx" * (MAX_BUNDLES + 1), "many"),
        (b"p2pcache-bundles/v1 1\n0\n", "empty bundle"),
        (b"p2pcache-bundles/v1 1\n05\nabcde", "leading zero length"),
        (b"p2pcache-bundles/v1 1\n-1\nx", "sign"),
        (b"p2pcache-bundles/v1 1\n10\nshort", "truncated"),
        (b"p2pcache-bundles/v1 1\n1\nxy", "trailing bytes"),
        (b"p2pcache-bundles/v1 2\n1\nx", "missing bundle"),
        (b"p2pcache-bundles/v1 1\n%d\n" % (MAX_BUNDLE_SIZE + 1), "oversized bundle"),
        (b"p2pcache-bundles/v1 1\n" + b"9" * 100, "no line end"),
        (b"p2pcache-bundles/v1 1\n\xd9\xa1\nx", "non-ascii digit"),
    ],
)
def test_malformed_lists_are_refused(data, why):
    with pytest.raises(BundleListFormatError):
        parse_bundle_list(data)


def test_an_oversized_list_is_refused_before_parsing():
    with pytest.raises(BundleListFormatError, match="over"):
        parse_bundle_list(b"p2pcache-bundles/v1 1\n" + b"x" * MAX_BUNDLE_LIST_SIZE)


def test_rendering_refuses_what_parsing_would():
    with pytest.raises(ValueError):
        render_bundle_list([])
    with pytest.raises(ValueError):
        render_bundle_list([b"x"] * (MAX_BUNDLES + 1))
    with pytest.raises(ValueError):
        render_bundle_list([b""])
