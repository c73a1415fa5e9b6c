"""Deployment tests: the real tools (docker-compose v1, hadolint, promtool, prometheus) on the
files under deploy/, and a real Prometheus scraping a real server. No container engine runs
here; `make image-test` builds and runs the image with podman (opt-in)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from tests.conftest import ROOT, ServerProcess, free_port, missing
from tests.serving import v2

DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "seqserve.json"
CPU, GPU = ROOT / "Dockerfile", DEPLOY / "Dockerfile.gpu"


def system_tool(name: str) -> str:
    """A Debian tool that tests/tools/setup.sh installs; skip outside `make test`, fail in CI."""
    exe = shutil.which(name)
    if exe is None:
        missing(name, "run `make tools` (tests/tools/setup.sh)")
    return exe


def run(
    *cmd: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def instructions(path: Path) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) in order; stage "" before the first FROM."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out, stage = [], ""
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append((stage, keyword.upper(), args.strip()))
    return out


def stage_of(path: Path, stage: str) -> list[tuple[str, str]]:
    """A stage's instructions, its parents' included (FROM <an earlier stage>)."""
    steps = [(k, a) for s, k, a in instructions(path) if s == stage]
    parent = steps[0][1].split(" AS ")[0].strip()
    names = {s for s, _, _ in instructions(path)}
    return (stage_of(path, parent) if parent in names else []) + steps


# PromQL: everything that is not a metric name, in the expressions deploy/ writes.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, label names,
    strings, ranges and Grafana variables left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, Grafana variables inside them
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors ([5m], [$__rate_interval])
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end() :].lstrip().startswith("(") or m[0] in _KEYWORDS:
            continue  # a function or aggregation, or an operator keyword
        names.add(m[0])
    return names


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the seqserve dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> dict[str, str]:
    """{record or alert name: expr} of deploy/prometheus/rules.yml."""
    import yaml

    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
    return {r.get("record") or r["alert"]: r["expr"] for g in groups for r in g["rules"]}


class Traffic:
    """V2 inference against every FP32 model of a server (the forecasters of the default
    repository) from a few threads, so the dynamic batcher forms batches, plus one invalid
    request per round so the failure series move too. Bounded: `rounds` rounds at most."""

    def __init__(self, target: str, concurrency: int = 6) -> None:
        self.target = target
        self.channel, self.stub = v2.stub(target)
        self.requests = []
        for model in self.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models:
            meta = self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model.name))
            if any(t.datatype != "FP32" for t in meta.inputs):
                continue
            rng = np.random.default_rng(0)
            inputs = {
                t.name: rng.standard_normal([1 if d == -1 else d for d in t.shape]).astype(
                    np.float32
                )
                for t in meta.inputs
            }
            self.requests.append(v2.request(model.name, **inputs))
        assert self.requests, "no FP32 model to send traffic to"
        self.pool = ThreadPoolExecutor(concurrency)
        self.failures = 0

    def round(self, per_model: int = 30) -> None:
        calls = [
            self.pool.submit(self.stub.ModelInfer, r, timeout=30)
            for _ in range(per_model)
            for r in self.requests
        ]
        for call in calls:
            call.result()
        bad = pb.ModelInferRequest(model_name=self.requests[0].model_name)  # no inputs
        try:
            self.stub.ModelInfer(bad, timeout=10)
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
            self.failures += 1

    def run_in_background(self, stop: threading.Event, rounds: int = 200) -> threading.Thread:
        def loop() -> None:
            for _ in range(rounds):
                if stop.is_set():
                    return
                self.round()
                time.sleep(0.2)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.pool.shutdown()
        self.channel.close()


@pytest.fixture(scope="module")
def served(tiny_server: ServerProcess) -> ServerProcess:
    """The default repository (tiny preset) served, after one round of traffic: every series
    the server exports, histograms and failures included, is in its /metrics."""
    traffic = Traffic(tiny_server.target)
    try:
        traffic.round()
    finally:
        traffic.close()
    return tiny_server


class Prometheus:
    """A real Prometheus (Debian's) on a loopback port, its database in a temporary folder."""

    def __init__(self, config: Path, data: Path, port: int) -> None:
        exe = system_tool("prometheus")
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / "prometheus.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("prometheus not ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


def loopback_config(
    folder: Path, metrics_port: int, prometheus_port: int, interval: str = "1s"
) -> Path:
    """deploy/prometheus/ copied into `folder` with the compose service names rewritten to
    loopback ports and the intervals shortened; everything else (rule files, jobs) as is."""
    import yaml

    shutil.copytree(PROMETHEUS_DIR, folder, dirs_exist_ok=True)
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    rewrite = {
        "seqserve:8002": f"127.0.0.1:{metrics_port}",
        "localhost:9090": f"127.0.0.1:{prometheus_port}",
    }
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            assert all(t in rewrite for t in static["targets"]), static["targets"]
            static["targets"] = [rewrite[t] for t in static["targets"]]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Any:
    """prometheus_for(server): the compose stack's Prometheus scraping `server` on loopback."""
    started: list[Prometheus] = []

    def start(server: ServerProcess) -> Prometheus:
        port = free_port()
        config = loopback_config(tmp_path / "etc", server.metrics_port, port)
        prom = Prometheus(config, tmp_path / "db", port)
        started.append(prom)
        prom.wait_ready()
        return prom

    yield start
    for prom in started:
        prom.stop()
