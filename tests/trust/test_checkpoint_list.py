"""The framed list of checkpoint notes a node gossips: one form, bounded, hostile input refused."""

from __future__ import annotations

import pytest

from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE
from p2pcache.trust.checkpoint_list import (
    MAX_CHECKPOINT_LIST_SIZE,
    MAX_LISTED_CHECKPOINTS,
    CheckpointListFormatError,
    parse_checkpoint_list,
    render_checkpoint_list,
)

NOTES = [b"origin/a\n1\nroot\n\n- sig\n", b"x", b"another note\n" * 10]


def test_a_list_reads_back_as_the_notes_it_was_made_of():
    data = render_checkpoint_list(NOTES)
    assert data.startswith(b"p2pcache-checkpoints/v1 3\n")
    assert parse_checkpoint_list(data) == NOTES


def test_rendering_keeps_to_the_bounds_by_listing_fewer():
    many = [b"n%d" % i for i in range(MAX_LISTED_CHECKPOINTS + 50)]
    assert len(parse_checkpoint_list(render_checkpoint_list(many))) == MAX_LISTED_CHECKPOINTS
    big = [b"x" * MAX_CHECKPOINT_SIZE] * 20
    data = render_checkpoint_list(big)
    assert len(data) <= MAX_CHECKPOINT_LIST_SIZE
    assert len(parse_checkpoint_list(data)) == 15
    with pytest.raises(ValueError):
        render_checkpoint_list([])
    with pytest.raises(ValueError):
        render_checkpoint_list([b"x" * (MAX_CHECKPOINT_SIZE + 1)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"p2pcache-checkpoints/v1 0\n",
        b"p2pcache-checkpoints/v1 01\n1\nx",
        b"p2pcache-checkpoints/v2 1\n1\nx",
        b"p2pcache-checkpoints/v1 1\r\n1\nx",
        b"p2pcache-checkpoints/v1 257\n" + b"1\nx" * 257,
        b"p2pcache-checkpoints/v1 1\n01\nx",
        b"p2pcache-checkpoints/v1 1\n0\n",
        b"p2pcache-checkpoints/v1 1\n65537\n" + b"x" * 65537,
        b"p2pcache-checkpoints/v1 2\n1\nx",
        b"p2pcache-checkpoints/v1 1\n5\nx",
        b"p2pcache-checkpoints/v1 1\n1\nxy",
        b"p2pcache-checkpoints/v1 1\n-1\nx",
        b"p2pcache-checkpoints/v1 1\n" + b"9" * 30 + b"\nx",
    ],
)
def test_malformed_lists_are_refused(data):
    with pytest.raises(CheckpointListFormatError):
        parse_checkpoint_list(data)


def test_an_oversized_list_is_refused_before_it_is_read():
    data = render_checkpoint_list([b"x"]) + b"y" * MAX_CHECKPOINT_LIST_SIZE
    with pytest.raises(CheckpointListFormatError, match="over"):
        parse_checkpoint_list(data)
