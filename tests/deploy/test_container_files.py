"""deploy/container/: what can be checked without a container runtime.

The image and the compose setup cannot be built or run here. These tests check that every
file they name exists, that paths inside the containers line up with the mounts, and that
the node's container configuration loads and matches what Prometheus scrapes.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from p2pcache.config import load_config
from tests.deploy.conftest import DEPLOY, REPOSITORY

CONTAINER = DEPLOY / "container"
COMPOSE = CONTAINER / "compose.yml"
DOCKERFILE = CONTAINER / "Dockerfile"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def host_path(mounts: dict[str, Path], container_path: str) -> Path | None:
    """The host file behind `container_path`, through a mount of it or of a parent."""
    path = PurePosixPath(posixpath.normpath(container_path))
    for target, source in mounts.items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return source / path.relative_to(target)
    return None


def test_every_bind_mount_names_an_existing_file():
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_the_node_image_is_built_from_the_repository():
    build = compose()["services"]["p2pcache"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPOSITORY
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            for source in sources:
                assert (context / source).exists(), line


def test_prometheus_finds_its_config_and_rules_through_the_mounts():
    service = compose()["services"]["prometheus"]
    mounts = bind_mounts(service)
    (flag,) = [arg for arg in service["command"] if arg.startswith("--config.file=")]
    config_path = flag.removeprefix("--config.file=")
    config_file = host_path(mounts, config_path)
    assert config_file == CONTAINER / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        in_container = posixpath.join(posixpath.dirname(config_path), rule_file)
        assert host_path(mounts, in_container) == DEPLOY / "prometheus" / "p2pcache-rules.yml"


def test_grafana_finds_its_provisioning_and_the_dashboard():
    service = compose()["services"]["grafana"]
    mounts = bind_mounts(service)
    provisioning = host_path(mounts, service["environment"]["GF_PATHS_PROVISIONING"])
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "p2pcache.yml").read_text())
    (dashboards,) = [p["options"]["path"] for p in provider["providers"]]
    dashboard = host_path(mounts, posixpath.join(dashboards, "p2pcache.json"))
    assert dashboard == DEPLOY / "grafana" / "p2pcache.json"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]


def test_node_config_in_the_image_loads_and_is_what_prometheus_scrapes():
    config = load_config(CONTAINER / "p2pcache.toml")
    assert config.data_dir == Path("/var/lib/p2pcache")
    assert config.admin_listen.host == "127.0.0.1"  # the admin listener stays inside
    assert config.metrics_listen is not None
    scrape = yaml.safe_load((CONTAINER / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"p2pcache:{config.metrics_listen.port}"]
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1).split()
    for port, proto in [
        (config.listen.port, "tcp"),
        (config.peer_listen.port, "tcp"),
        (config.dht_listen.port, "udp"),
        (config.metrics_listen.port, "tcp"),
    ]:
        assert f"{port}/{proto}" in exposed
