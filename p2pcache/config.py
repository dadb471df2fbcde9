"""Node configuration: one TOML file (every option in config/p2pcache.toml), overridden by flags.

A node with no file runs: every option has a default (DESIGN.md "Listeners and files"). Values
are checked when loaded, and a bad value is one error that names its key, e.g.
`cache.max_size: expected a size such as "20GiB", got "lots"`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pcache.errors import P2PCacheError
from p2pcache.guix.check_build import DEFAULT_CHECK_TIMEOUT, DEFAULT_GUIX_COMMAND
from p2pcache.guix.store_path import DEFAULT_STORE_DIR, check_store_dir
from p2pcache.paths import default_data_dir
from p2pcache.trust.build_log import DEFAULT_BUILD_LOG_DIR
from p2pcache.trust.witness import WatchedLog, parse_watched_log

# A configuration file is a few KiB; anything much larger is a mistake, not a config.
MAX_CONFIG_SIZE = 1 << 20


class ConfigError(P2PCacheError):
    """A configuration value is missing, malformed or out of range."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """`HOST:PORT` or `[IPV6]:PORT`; port 0 means "any free port" (tests)."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        raise ValueError(f'expected HOST:PORT such as "127.0.0.1:8080", got {text!r}')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if match.group(1):
        ipaddress.IPv6Address(host)
    return ListenAddress(host, port)


_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6}
_SIZE_UNITS |= {"MIB": 1 << 20, "G": 10**9, "GB": 10**9, "GIB": 1 << 30}
_SIZE_UNITS |= {"T": 10**12, "TB": 10**12, "TIB": 1 << 40}


def parse_size(value: int | str) -> int:
    """A byte count: an integer, or a string such as "20GiB", "500 MB", "1.5TiB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f'expected a size such as "20GiB", got {value!r}')
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class Config:
    """Everything a node needs to run; see config/p2pcache.toml for what each option means."""

    data_dir: Path = field(default_factory=default_data_dir)
    store_dir: str = DEFAULT_STORE_DIR
    store_root: Path = Path(DEFAULT_STORE_DIR)
    db: Path = Path("/var/guix/db/db.sqlite")

    listen: ListenAddress = ListenAddress("127.0.0.1", 8080)
    admin_listen: ListenAddress = ListenAddress("127.0.0.1", 8082)
    metrics_listen: ListenAddress | None = None
    host_name: str = field(default_factory=socket.gethostname)

    peer_listen: ListenAddress = ListenAddress("127.0.0.1", 8081)
    advertise_url: str | None = None
    dht_listen: ListenAddress | None = ListenAddress("127.0.0.1", 8083)
    bootstrap: tuple[ListenAddress, ...] = ()
    upstreams: tuple[str, ...] = ()
    guix_acl: Path = Path("/etc/guix/acl")
    trust_file: Path | None = None
    """None: `trust/trusted-keys` in the data directory."""
    trust_mode: str = "either"
    trust_quorum: int = 2
    trust_require_log_proofs: bool = True
    trust_witnesses_required: int = 0
    trust_accept_forced: bool = False
    attestation_timeout: float = 3.0
    miss_timeout: float = 8.0
    miss_check_processes: int = 2
    miss_recent_providers: int = 2
    dht_rpc_timeout: float = 1.5
    dht_max_per_ip: int = 2
    dht_max_per_subnet: int = 8
    # net/dht_protocol.REQUESTS_PER_SECOND_PER_IP and REQUEST_BURST_PER_IP say why.
    dht_requests_per_second_per_ip: float = 500.0
    dht_request_burst_per_ip: float = 2000.0
    announce_keys_per_second: float = 40.0
    fetch_parallel: int = 2

    narinfo_ttl: int = 86400
    negative_ttl: int = 60
    undecided_ttl: int = 0
    max_connections: int = 256
    max_pipeline: int = 1024
    max_request_head: int = 16384
    idle_timeout: float = 60.0
    request_timeout: float = 30.0
    hot_narinfos: int = 16384
    rendered_narinfos: bool = True

    cache_max_size: int = 20 << 30
    promise_ttl: int = 86400
    """How long an item found for a miss is offered without being fetched, before it is
    forgotten (and looked up afresh if asked for again)."""
    zstd_level: int = 3
    zstd_threads: int = 0
    bake_new_items: bool = True
    db_poll_interval: float = 10.0

    build_log_dir: Path = DEFAULT_BUILD_LOG_DIR
    guix_command: str = DEFAULT_GUIX_COMMAND
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    builder_witnesses: tuple[str, ...] = ()
    cosignature_interval: float = 60.0

    witness_enabled: bool = False
    witness_logs: tuple[WatchedLog, ...] = ()
    witness_interval: float = 60.0

    gossip_interval: float = 300.0
    gossip_fanout: int = 3
    gossip_peers: tuple[str, ...] = ()
    gossip_builders: tuple[bytes, ...] = ()

    log_level: str = "info"
    log_format: str = "text"

    lan_advertise: bool = False

    def effective_zstd_threads(self) -> int:
        return self.zstd_threads or max(1, os.cpu_count() or 1)

    def effective_trust_file(self) -> Path:
        return self.trust_file or self.data_dir / "trust" / "trusted-keys"


# TOML key -> (Config field, converter). The converter raises ValueError with a message.
def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path, got {value!r}")
    return Path(value).expanduser()


def _command(value: Any) -> str:
    """A program name looked up on PATH, or a path to it (no arguments, no shell)."""
    if not isinstance(value, str) or not value.strip() or value != value.strip() or "\0" in value:
        raise ValueError(f"expected a command name or path, got {value!r}")
    return value


def _optional_path(value: Any) -> Path | None:
    return None if value == "" else _path(value)


def _store_dir(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an absolute directory, got {value!r}")
    try:
        check_store_dir(value)
    except P2PCacheError as e:
        raise ValueError(str(e)) from None
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value!r}")
        return value

    return convert


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number per second, got {value!r}")
    return float(value)


def _burst(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ValueError(f"expected a number of requests of at least 1, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return convert


def _listen(value: Any) -> ListenAddress:
    if not isinstance(value, str):
        raise ValueError(f'expected "HOST:PORT", got {value!r}')
    return parse_listen_address(value)


def _optional_listen(value: Any) -> ListenAddress | None:
    return None if value in ("", "off", None) else _listen(value)


def _listen_list(value: Any) -> tuple[ListenAddress, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f'expected a list of "HOST:PORT", got {value!r}')
    return tuple(_listen(v) for v in value)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _optional_url(value: Any) -> str | None:
    return None if value in ("", None) else _url(value)


def _url_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of URLs, got {value!r}")
    return tuple(_url(v) for v in value)


def _watched_logs(value: Any) -> tuple[WatchedLog, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f'expected a list of "<builder key> <peer URL>", got {value!r}')
    return tuple(parse_watched_log(v if isinstance(v, str) else repr(v)) for v in value)


def _keys(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in value
    ):
        raise ValueError(f"expected a list of 64 lowercase hex digit keys, got {value!r}")
    return tuple(bytes.fromhex(v) for v in value)


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not value or ";" in value or value != value.strip():
        raise ValueError(f"expected a host name without ';' or spaces, got {value!r}")
    return value


OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "node.data_dir": ("data_dir", _path),
    "node.host_name": ("host_name", _host_name),
    "store.store_dir": ("store_dir", _store_dir),
    "store.store_root": ("store_root", _path),
    "store.db": ("db", _path),
    "store.bake_new_items": ("bake_new_items", _bool),
    "store.db_poll_interval": ("db_poll_interval", _seconds),
    "guix_endpoint.listen": ("listen", _listen),
    "guix_endpoint.narinfo_ttl": ("narinfo_ttl", _int_range(0, 365 * 86400)),
    "guix_endpoint.negative_ttl": ("negative_ttl", _int_range(0, 86400)),
    "guix_endpoint.undecided_ttl": ("undecided_ttl", _int_range(0, 3600)),
    "guix_endpoint.max_connections": ("max_connections", _int_range(1, 1_000_000)),
    "guix_endpoint.max_pipeline": ("max_pipeline", _int_range(1, 100_000)),
    "guix_endpoint.max_request_head": ("max_request_head", _int_range(1024, 1 << 20)),
    "guix_endpoint.idle_timeout": ("idle_timeout", _seconds),
    "guix_endpoint.request_timeout": ("request_timeout", _seconds),
    "guix_endpoint.hot_narinfos": ("hot_narinfos", _int_range(0, 10_000_000)),
    "guix_endpoint.rendered_narinfos": ("rendered_narinfos", _bool),
    "peer.listen": ("peer_listen", _listen),
    "peer.advertise_url": ("advertise_url", _optional_url),
    "peer.fetch_parallel": ("fetch_parallel", _int_range(1, 16)),
    "dht.listen": ("dht_listen", _optional_listen),
    "dht.bootstrap": ("bootstrap", _listen_list),
    "dht.rpc_timeout": ("dht_rpc_timeout", _seconds),
    "dht.max_per_ip": ("dht_max_per_ip", _int_range(1, 1000)),
    "dht.max_per_subnet": ("dht_max_per_subnet", _int_range(1, 10000)),
    "dht.requests_per_second_per_ip": ("dht_requests_per_second_per_ip", _rate),
    "dht.request_burst_per_ip": ("dht_request_burst_per_ip", _burst),
    "dht.announce_keys_per_second": ("announce_keys_per_second", _rate),
    "upstream.urls": ("upstreams", _url_list),
    "trust.guix_acl": ("guix_acl", _path),
    "trust.file": ("trust_file", _optional_path),
    "trust.mode": ("trust_mode", _choice("either", "upstream", "quorum", "both")),
    "trust.quorum": ("trust_quorum", _int_range(1, 64)),
    "trust.require_log_proofs": ("trust_require_log_proofs", _bool),
    "trust.witnesses_required": ("trust_witnesses_required", _int_range(0, 32)),
    "trust.accept_forced": ("trust_accept_forced", _bool),
    "trust.attestation_timeout": ("attestation_timeout", _seconds),
    "guix_endpoint.miss_timeout": ("miss_timeout", _seconds),
    "guix_endpoint.miss_check_processes": ("miss_check_processes", _int_range(0, 64)),
    "guix_endpoint.miss_recent_providers": ("miss_recent_providers", _int_range(0, 8)),
    "admin.listen": ("admin_listen", _listen),
    "admin.metrics_listen": ("metrics_listen", _optional_listen),
    "cache.max_size": ("cache_max_size", parse_size),
    "cache.promise_ttl": ("promise_ttl", _int_range(60, 365 * 86400)),
    "cache.zstd_level": ("zstd_level", _int_range(1, 19)),
    "cache.zstd_threads": ("zstd_threads", _int_range(0, 256)),
    "builder.build_log_dir": ("build_log_dir", _path),
    "builder.guix": ("guix_command", _command),
    "builder.check_timeout": ("check_timeout", _seconds),
    "builder.witnesses": ("builder_witnesses", _url_list),
    "builder.cosignature_interval": ("cosignature_interval", _seconds),
    "witness.enabled": ("witness_enabled", _bool),
    "witness.logs": ("witness_logs", _watched_logs),
    "witness.interval": ("witness_interval", _seconds),
    "trust.gossip_interval": ("gossip_interval", _seconds),
    "trust.gossip_fanout": ("gossip_fanout", _int_range(0, 16)),
    "trust.gossip_peers": ("gossip_peers", _url_list),
    "trust.gossip_builders": ("gossip_builders", _keys),
    "logging.level": ("log_level", _choice("debug", "info", "warning", "error")),
    "logging.format": ("log_format", _choice("text", "json")),
    "lan.advertise": ("lan_advertise", _bool),
}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def config_from_mapping(table: Mapping[str, Any], base: Config | None = None) -> Config:
    """Apply a parsed TOML document (nested tables) onto `base` (default: all defaults)."""
    changes: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        if key not in OPTIONS:
            raise ConfigError(f"{key}: unknown option (see config/p2pcache.toml for the list)")
        name, convert = OPTIONS[key]
        try:
            changes[name] = convert(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    return replace(base or Config(), **changes)


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the TOML file (if any), then apply `overrides` given by TOML key (CLI flags)."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_SIZE + 1)
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        if len(raw) > MAX_CONFIG_SIZE:
            raise ConfigError(f"configuration file {path} is larger than 1 MiB")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"configuration file {path} is not valid TOML: {e}") from None
        config = config_from_mapping(document, config)
    if overrides:
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, option = key.partition(".")
            nested.setdefault(section, {})[option] = value
        config = config_from_mapping(nested, config)
    return config
