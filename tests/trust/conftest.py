"""Fixtures shared by the checkpoint, witness and gossip tests: one builder key, two histories."""

from __future__ import annotations

import pytest

from tests.trust.test_checkpoint_store import Builder


@pytest.fixture
def builder(tmp_path):
    """An honest builder whose log holds 40 entries."""
    b = Builder(tmp_path, "builder one")
    b.grow(40)
    yield b
    b.log.close()


@pytest.fixture
def forked(tmp_path):
    """The same key, another history: the first 10 entries agree, the rest were rewritten."""
    other = Builder(tmp_path, "builder one", history="rewritten")
    other.log.append_many(b"entry %d" % i if i < 10 else b"rewritten %d" % i for i in range(40))
    yield other
    other.log.close()
