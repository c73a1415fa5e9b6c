"""The compose stack's monitoring, for real: a server over the default repository (tiny
preset), a real Prometheus with deploy/prometheus/ (targets rewritten to loopback, rule files as
they are), traffic, then the dashboard's own key queries through Prometheus' HTTP API."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import ServerProcess
from tests.deploy.conftest import Prometheus, Traffic, dashboard_targets

pytestmark = pytest.mark.slow  # a real Prometheus scraping a server

# The dashboard's key panels: the query whose answer an SRE reads first.
KEY_QUERIES = {
    "Requests/s": "rate(nv_inference_request_success",
    "Request latency p50 / p95 / p99": "histogram_quantile(0.99",
    "Average batch size": "rate(nv_inference_count",
    "Queue time": "histogram_quantile(0.99",
}


def grafana_to_promql(expr: str, rate_interval: str = "15s") -> str:
    """What Grafana sends for "All models": its variables substituted."""
    return expr.replace('"$model"', '".*"').replace("$__rate_interval", rate_interval)


def numbers(result: list[dict]) -> dict[str, float]:
    return {s["metric"].get("model", ""): float(s["value"][1]) for s in result}


def test_dashboard_queries_answer_through_prometheus(
    tiny_server: ServerProcess, prometheus_for: Callable[[ServerProcess], Prometheus]
) -> None:
    prom = prometheus_for(tiny_server)
    queries = {
        title: grafana_to_promql(
            next(e for t, e in dashboard_targets() if t == title and needle in e)
        )
        for title, needle in KEY_QUERIES.items()
    }
    traffic, stop = Traffic(tiny_server.target), threading.Event()
    worker = traffic.run_in_background(stop)
    answers: dict[str, dict[str, float]] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(answers) < len(queries):
            time.sleep(1)
            for title, query in queries.items():
                got = {m: v for m, v in numbers(prom.query(query)).items() if math.isfinite(v)}
                if {r.model_name for r in traffic.requests} <= set(got):
                    answers[title] = got
    finally:
        stop.set()
        worker.join(30)
        traffic.close()
    assert set(answers) == set(queries), (
        f"no numbers from {set(queries) - set(answers)}:\n" + prom.log.read_text()[-2000:]
    )
    for model in (r.model_name for r in traffic.requests):
        assert answers["Requests/s"][model] > 0
        assert 0 < answers["Request latency p50 / p95 / p99"][model] < 10
        assert answers["Average batch size"][model] >= 1
        assert 0 <= answers["Queue time"][model] < 10

    # The stack's rules loaded and evaluate on the live series.
    groups = {g["name"]: g for g in prom.api("rules")["groups"]}
    assert set(groups) == {"seqserve.recording", "seqserve.alerts"}
    assert all(r["health"] == "ok" for g in groups.values() for r in g["rules"]), groups
    targets = prom.api("targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "seqserve": "up",
        "prometheus": "up",
    }
    failures = numbers(prom.query('sum by (model) (nv_inference_request_failure{reason="OTHER"})'))
    assert sum(failures.values()) >= 1 and traffic.failures >= 1
    firing = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]]
    assert "SeqserveModelNotReady" not in firing and "SeqserveDown" not in firing
