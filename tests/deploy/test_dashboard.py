"""The provisioned Grafana dashboard: well-formed, the panels the issue asks for, and every
PromQL query selecting only series a live server exports."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, ServerProcess
from tests.deploy.conftest import DASHBOARD, dashboard_targets, metric_names
from tests.serving.v2 import scrape

# What an SRE must see without building anything (issue 8), by panel title.
PANELS = {
    "Requests/s",
    "Request latency p50 / p95 / p99",
    "Queue time",
    "Average batch size",
    "Failures by reason",
    "Error ratio",
    "Models ready",
    "CPU",
    "Memory",
}


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{model=~"$model",'
        'x="y{z}"}[$__rate_interval]))) / on(model) group_left b offset 5m '
        "and sum without (le) (c) > bool 1e-3"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "seqserve" and dash["title"] == "seqserve"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert PANELS <= {p["title"] for p in dash["panels"]}
    (variable,) = dash["templating"]["list"]
    assert variable["name"] == "model" and variable["includeAll"]


@pytest.mark.parametrize(
    "title,needle",
    [
        ("Requests/s", "rate(nv_inference_request_success"),
        (
            "Request latency p50 / p95 / p99",
            "histogram_quantile(0.99, sum by (model, le) (rate("
            "seqserve_request_duration_seconds_bucket",
        ),
        ("Queue time", "seqserve_queue_duration_seconds"),
        ("Average batch size", "rate(nv_inference_count"),
        ("Failures by reason", "sum by (model, reason) (rate(nv_inference_request_failure"),
        ("CPU", "process_cpu_seconds_total"),
        ("Memory", "process_resident_memory_bytes"),
    ],
)
def test_panel_queries(title: str, needle: str) -> None:
    exprs = [e for t, e in dashboard_targets() if t == title]
    assert any(needle in e for e in exprs), exprs
    if title not in ("CPU", "Memory"):  # per model, filtered by the $model variable
        assert all('{model=~"$model"}' in e and "by (model" in e for e in exprs), exprs


def test_dashboard_selects_only_exported_series(served: ServerProcess) -> None:
    exported = {name for name, _ in scrape(served.metrics_url)}
    used = set()
    for title, expr in dashboard_targets():
        names = metric_names(expr)
        assert names, (title, expr)
        used |= names
        assert not names - exported, f"panel {title!r} selects {names - exported}: not exported"
    # Each series documented in docs/serving.md's Metrics section is on the dashboard somewhere.
    assert {
        "seqserve_request_duration_seconds_bucket",
        "seqserve_queue_duration_seconds_bucket",
        "seqserve_model_ready",
        "seqserve_queue_size",
        "seqserve_queue_capacity",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "nv_inference_pending_request_count",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= used


def test_every_panel_is_documented() -> None:
    """docs/deployment.md says which question each panel answers."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"}
    assert not {t for t in titles if f"| {t} |" not in doc and t not in ("CPU", "Memory")}
    assert "| CPU, Memory |" in doc
