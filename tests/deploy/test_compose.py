"""docker-compose.yml and its GPU override, validated by Debian's docker-compose v1 (which
rejects Compose-v2-only keys) and read back resolved: what `up` would really run."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, run, system_tool

GPU_OVERRIDE = DEPLOY / "docker-compose.gpu.yml"


def resolved(*files: str, **env: str) -> dict[str, Any]:
    """`docker-compose config` of `files`: validated (rc 1 on any error), merged, variables
    substituted."""
    exe = system_tool("docker-compose")
    args = [a for f in files for a in ("-f", f)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SEQSERVE_", "GRAFANA_"))}
    out = run(exe, *args, "config", env={**environ, **env})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return resolved("docker-compose.yml")


def test_services_ports_and_images(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == {"seqserve", "models", "prometheus", "grafana"}
    seqserve = services["seqserve"]
    assert {p.split("/")[0] for p in seqserve["ports"]} == {
        "127.0.0.1:8000:8000",
        "127.0.0.1:8001:8001",
        "127.0.0.1:8002:8002",
    }
    assert seqserve["build"]["target"] == "runtime" and seqserve["image"] == "seqserve:cpu"
    assert seqserve["volumes"] == ["models:/models:ro"]
    assert services["models"]["profiles"] == ["build"]
    assert services["models"]["build"]["target"] == "repository-builder"
    for name in ("prometheus", "grafana"):  # pulled images: exact tags, never `latest`
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", services[name]["image"]), name


def test_healthchecks_and_start_order(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert services["seqserve"]["healthcheck"]["test"][:4] == [
        "CMD",
        "seqserve",
        "health",
        "-u",
    ]
    for name in ("seqserve", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"] == {"seqserve": {"condition": "service_started"}}
    # SIGTERM drains for --grace-period-secs (30 s); compose must wait longer than that.
    assert services["seqserve"]["stop_grace_period"] == "40s"


def test_prometheus_runs_the_tested_version(stack: dict[str, Any]) -> None:
    """The stack's Prometheus is the version whose promtool checks the rules here."""
    promtool = system_tool("promtool")
    version = re.search(r"version (\d+\.\d+\.\d+)", run(promtool, "--version").stdout)
    assert version, "promtool --version"
    assert stack["services"]["prometheus"]["image"] == f"prom/prometheus:v{version[1]}"


def test_mounted_configuration_exists(stack: dict[str, Any]) -> None:
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in stack["services"][name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                mounts[target] = source
    assert mounts == {
        "/etc/prometheus": str(DEPLOY / "prometheus"),
        "/etc/grafana/provisioning": str(DEPLOY / "grafana" / "provisioning"),
        "/var/lib/grafana/dashboards": str(DEPLOY / "grafana" / "dashboards"),
    }
    assert (DEPLOY / "prometheus" / "prometheus.yml").is_file()
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/seqserve.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"


def test_host_repository_instead_of_the_volume() -> None:
    stack = resolved("docker-compose.yml", SEQSERVE_MODELS="./model_repository")
    assert stack["services"]["seqserve"]["volumes"] == [f"{ROOT}/model_repository:/models:ro"]


def test_gpu_override_requests_an_nvidia_device() -> None:
    seqserve = resolved("docker-compose.yml", str(GPU_OVERRIDE))["services"]["seqserve"]
    assert seqserve["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert seqserve["build"]["context"] == str(ROOT)
    assert seqserve["image"] == "seqserve:gpu"
    devices = seqserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert seqserve["ports"] and seqserve["healthcheck"]["test"][1:3] == ["seqserve", "health"]


def test_v1_rejects_what_it_cannot_run(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a v2-only key and an undefined dependency fail."""
    exe = system_tool("docker-compose")
    for bad in (
        "name: seqserve\nservices:\n  a:\n    image: x:1\n",
        "services:\n  a:\n    image: x:1\n    depends_on: [b]\n",
    ):
        path = tmp_path / "bad.yml"
        path.write_text(bad)
        out = subprocess.run(
            [exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode != 0, bad
