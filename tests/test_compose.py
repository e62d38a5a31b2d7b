"""docker-compose.yml keeps the promises the README makes of it.

CI has no Docker engine, so the compose files are checked as data here; they were run end to
end by hand (README, "Running on a cluster").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


class _ComposeLoader(yaml.SafeLoader):
    """Compose's own `!reset` tag (drop a key inherited from an earlier file) as a marker."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def _compose(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return _compose("docker-compose.yml")["services"]


def test_the_cluster_has_its_four_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "ray-head", "ray-worker", "dashboard"}


def test_every_published_port_binds_to_localhost(services: dict[str, Any]) -> None:
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert len(published) == 4  # database, Ray head, Ray's dashboard, optuna-dashboard
    for port in published:
        assert port.startswith("127.0.0.1:"), f"{port} is reachable from other machines"


def test_the_database_keeps_its_data_in_a_volume(services: dict[str, Any]) -> None:
    volumes = services["postgres"]["volumes"]
    assert "postgres:/var/lib/postgresql/data" in volumes
    assert "postgres" in _compose("docker-compose.yml")["volumes"]
    assert "healthcheck" in services["postgres"]


def test_no_password_is_written_in_the_file(services: dict[str, Any]) -> None:
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{TUNER_DB_PASSWORD:\?[^}]+\}", password)
    for name in ("ray-head", "ray-worker", "dashboard"):
        storage = services[name]["environment"]["TUNER_STORAGE"]
        assert ":${TUNER_DB_PASSWORD:?" in storage, f"{name} has a literal password"


def test_the_worker_reserves_nvidia_gpus_and_the_cpu_overlay_drops_them(
    services: dict[str, Any],
) -> None:
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    overlay = _compose("docker-compose.cpu.yml")["services"]
    assert overlay == {"ray-worker": {"deploy": "!reset"}}


def test_workers_join_the_head_over_the_compose_network(services: dict[str, Any]) -> None:
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert "--port=6379" in services["ray-head"]["command"]


def test_workers_and_the_dashboard_wait_for_a_healthy_ray_head(services: dict[str, Any]) -> None:
    check = services["ray-head"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "ray", "status"] and "--address=127.0.0.1:6379" in check
    assert services["ray-worker"]["depends_on"]["ray-head"] == {"condition": "service_healthy"}


def _dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), flags=re.MULTILINE))


def test_the_image_pins_python_and_ray_as_the_readme_says(services: dict[str, Any]) -> None:
    build = services["ray-head"]["build"]
    assert build == {"context": ".", "dockerfile": "Dockerfile"}
    pinned = _dockerfile_args(ROOT / "Dockerfile")
    assert re.fullmatch(r"3\.\d+", pinned["PYTHON_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned["RAY_VERSION"])
    readme = (ROOT / "README.md").read_text()
    assert f"Python {pinned['PYTHON_VERSION']} and Ray {pinned['RAY_VERSION']}" in readme
    dependencies = (ROOT / "pyproject.toml").read_text()
    lower = re.search(r'"ray\[default\]>=([\d.]+),<(\d+)"', dependencies)
    major = int(pinned["RAY_VERSION"].split(".")[0])
    assert lower is not None and major < int(lower.group(2))
    floor = tuple(int(part) for part in lower.group(1).split("."))
    assert tuple(int(part) for part in pinned["RAY_VERSION"].split(".")[:2]) >= floor


def test_a_project_image_extends_tuner_s(services: dict[str, Any]) -> None:
    recipe = (ROOT / "docker" / "project.Dockerfile").read_text()
    assert re.search(r"^FROM tuner:latest$", recipe, flags=re.MULTILINE)
    assert "pip install" in recipe
    assert services["ray-worker"]["image"] == "${TUNER_IMAGE:-tuner:latest}"
