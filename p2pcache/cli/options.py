"""Options shared by the commands that work on a node's data (serve, publish, cache)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pcache.config import Config, load_config


def add_node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--data-dir", metavar="DIR", help="where the node keeps its files")
    parser.add_argument("--store-dir", metavar="DIR", help="logical store (default /gnu/store)")
    parser.add_argument("--store-root", metavar="DIR", help="where the store's files are on disk")
    parser.add_argument("--db", metavar="FILE", help="the Guix store database")
    parser.add_argument("--log-format", choices=("text", "json"), help="log as text or JSON")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    """The configuration file, overridden by whatever flags were given."""
    overrides = {
        "node.data_dir": args.data_dir,
        "store.store_dir": args.store_dir,
        "store.store_root": args.store_root,
        "store.db": args.db,
        "logging.format": args.log_format,
        "logging.level": args.log_level,
    } | extra
    return load_config(args.config, overrides)
