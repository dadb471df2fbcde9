"""Generated Guix-like stores for tests (see p2pcache.testing.store_generator).

`test_store` is shared by the whole session: read it, never change it (no `add_items`, no
writes under its root). Tests that add items or damage files use `small_test_store`, which is
new for every test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pcache.testing import TestStore, generate_test_store, remove_test_store


@pytest.fixture(scope="session")
def test_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStore]:
    """About 300 items (a few of 1-20 MB) under a temporary directory, logically /gnu/store."""
    root = tmp_path_factory.mktemp("test-store") / "root"
    store = generate_test_store(root, items=300, seed=0)
    yield store
    remove_test_store(root)


@pytest.fixture
def small_test_store(tmp_path: Path) -> Iterator[TestStore]:
    """20 small items, new for each test: free to add to or to damage."""
    root = tmp_path / "small-store"
    store = generate_test_store(root, items=20, seed=1)
    yield store
    remove_test_store(root)
