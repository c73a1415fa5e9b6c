"""deploy/kserve (a KServe serving runtime, an InferenceService, its autoscaling) and
deploy/k8s, checked offline as far as the available schemas reach: the built-in kinds by
kubernetes-validate against Kubernetes' own JSON schemas, the KServe kinds field by field
against the kserve SDK's models (tests/deploy/strict_kserve.py), both from the `.tools/kube`
venv; then what ties the objects together: the runtime's flags are seqserve's own, its ports
are the ones it serves, the names that refer to each other match."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from seqserve.cli import build_parser
from serving.settings import Settings
from tests.conftest import tool
from tests.deploy.conftest import DEPLOY

KSERVE = DEPLOY / "kserve"
STRICT = Path(__file__).with_name("strict_kserve.py")
BUILT_IN = [DEPLOY / "k8s" / "seqserve.yaml", KSERVE / "autoscaling.yaml"]
CUSTOM = [KSERVE / "runtime.yaml", KSERVE / "inferenceservice.yaml"]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    docs = [
        d for path in sorted(KSERVE.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
    ]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs if d}


def test_every_file_is_checked_by_one_of_the_two_tools() -> None:
    assert sorted(KSERVE.glob("*.yaml")) == sorted([*CUSTOM, BUILT_IN[1]])


def test_built_in_kinds_pass_kubernetes_validate_strictly() -> None:
    run = subprocess.run(
        [str(tool("kube", "kubernetes-validate")), "--strict", *map(str, BUILT_IN)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = [line for line in run.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == 7, run.stdout  # 5 in deploy/k8s, the HPA and the adapter's ConfigMap


def test_kserve_kinds_have_only_fields_the_sdk_knows(tmp_path: Path) -> None:
    python = str(tool("kube"))
    run = subprocess.run(
        [python, str(STRICT), *map(str, CUSTOM)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split("\n")[:2] == [
        "ok ClusterServingRuntime kserve-seqserve",
        "ok InferenceService seqserve",
    ]
    # the check can fail: a misspelt field, one in the wrong place, a list where a map goes
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        CUSTOM[1]
        .read_text()
        .replace("storageUri:", "storageURI:")
        .replace("protocolVersion: v2", "protocolVersions: [v2]")
    )
    run = subprocess.run(
        [python, str(STRICT), str(bad)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "model.storageURI: no such field in V1beta1ModelSpec" in run.stdout
    assert "model.protocolVersions: no such field" in run.stdout


def test_the_runtime_serves_what_its_ports_and_probes_say(
    objects: dict[str, dict[str, Any]],
) -> None:
    spec = objects["ClusterServingRuntime/kserve-seqserve"]["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # KServe's name for the model server
    settings = Settings.from_args(build_parser().parse_args(container["args"]))  # our flags
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.http_port == ports["http1"] == 8080  # KServe's REST port
    assert settings.grpc_port == ports["h2c"]  # KServe's name for the gRPC port
    assert settings.http_address == settings.grpc_address == settings.metrics_address == "0.0.0.0"
    assert str(settings.model_repository) == "/mnt/models"  # where storageUri is copied
    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": settings.http_port}
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == settings.metrics_port
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}


def test_the_inference_service_uses_the_runtime_and_is_scaled_on_the_queue(
    objects: dict[str, dict[str, Any]],
) -> None:
    runtime = objects["ClusterServingRuntime/kserve-seqserve"]
    isvc = objects["InferenceService/seqserve"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["storageUri"].endswith("/model_repository")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"  # both ports
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # ours, below
    hpa = objects["HorizontalPodAutoscaler/seqserve-predictor"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == f"{isvc['metadata']['name']}-predictor"
    (metric,) = hpa["metrics"]
    adapter = yaml.safe_load(
        objects["ConfigMap/prometheus-adapter-seqserve"]["data"]["config.yaml"]
    )
    (rule,) = adapter["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = rule["name"]["matches"]
    assert rule["seriesQuery"].startswith(series + "{")
    assert series in (DEPLOY.parent / "serving" / "metrics.py").read_text()  # seqserve exports it
