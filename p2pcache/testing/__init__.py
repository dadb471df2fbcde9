"""Helpers for tests and demos that ship with the package (the `p2pcache demo` command uses them).

`generate_test_store` builds a realistic Guix-like store (files plus the daemon's database)
anywhere on disk, for code that reads a store without a Guix installation.
"""

from p2pcache.testing.store_generator import (
    TestStore,
    add_items,
    generate_test_store,
    remove_test_store,
)

__all__ = ["TestStore", "add_items", "generate_test_store", "remove_test_store"]
