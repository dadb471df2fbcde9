"""The `p2pcache` command line: one module per command group, errors as one clear line."""

from p2pcache.cli.main import main

__all__ = ["main"]
