"""deploy/k8s: valid YAML, and the manifests agree with each other and with the image (no
cluster here, so no server-side validation)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CPU, DEPLOY, stage_of

MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    docs = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), doc
    by_key = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    assert len(by_key) == len(docs), "duplicate kind/name"
    return by_key


def test_the_example_holds_a_deployment_services_and_an_hpa(
    objects: dict[str, dict[str, Any]],
) -> None:
    assert MANIFESTS, "no manifests under deploy/k8s"
    assert {
        "Deployment/seqserve",
        "Service/seqserve",
        "Service/seqserve-headless",
        "HorizontalPodAutoscaler/seqserve",
        "PodDisruptionBudget/seqserve",
    } <= set(objects)


def test_selectors_ports_and_probes_line_up(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment/seqserve"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--"))
    for name in ports:  # the server listens, on all interfaces, where the pod says it does
        assert int(args[f"--{name}-port"]) == ports[name], name
        assert args[f"--{name}-address"] == "0.0.0.0", name
    for name in ("Service/seqserve", "Service/seqserve-headless"):
        service = objects[name]["spec"]
        assert service["selector"].items() <= labels.items(), name
        assert {p["targetPort"] for p in service["ports"]} <= set(ports), name
    assert objects["Service/seqserve-headless"]["spec"]["clusterIP"] == "None"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe  # grpc.health.v1
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    hpa = objects["HorizontalPodAutoscaler/seqserve"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "seqserve",
    }
    assert 1 < hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = objects["PodDisruptionBudget/seqserve"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_pods_match_the_image(objects: dict[str, dict[str, Any]]) -> None:
    """Same user, command and drain time as the Dockerfile's serving stages."""
    pod = objects["Deployment/seqserve"]["spec"]["template"]["spec"]
    steps = stage_of(CPU, "baked")
    uid, gid = [a for k, a in steps if k == "USER"][-1].split(":")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    cmd = json.loads([a for k, a in steps if k == "CMD"][-1])
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert container["args"] == [cmd[0], *(f"{k}={v}" for k, v in flags.items())]
    # SIGTERM drains for --grace-period-secs (default 30 s) before the pod may be killed.
    assert pod["terminationGracePeriodSeconds"] > 30
