"""deploy/prometheus: the configuration and rules pass promtool's checks, the rules' unit tests
(rules_test.yml) pass, and the rules select only series that exist."""

from __future__ import annotations

from tests.conftest import ROOT, ServerProcess
from tests.deploy.conftest import PROMETHEUS_DIR, metric_names, rule_exprs, run, system_tool
from tests.serving.v2 import scrape

ALERTS = {
    "SeqserveDown",
    "SeqserveHighP99Latency",
    "SeqserveHighErrorRatio",
    "SeqserveModelNotReady",
    "SeqserveQueueSaturated",
    "SeqserveEngineRestarted",
}


def test_config_and_rules_check() -> None:
    promtool = system_tool("promtool")
    out = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout  # rule_files resolves beside the config
    out = run(promtool, "check", "rules", str(PROMETHEUS_DIR / "rules.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_unit_tests() -> None:
    out = run(system_tool("promtool"), "test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_is_unit_tested() -> None:
    exprs = rule_exprs()
    assert ALERTS <= set(exprs)
    tests = (PROMETHEUS_DIR / "rules_test.yml").read_text()
    for alert in ALERTS:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in tests, alert


def test_the_issue_alerts_use_the_named_series() -> None:
    exprs = rule_exprs()

    def selected(name: str) -> set[str]:  # through recording rules
        out = set()
        for metric in metric_names(exprs[name]):
            out |= selected(metric) if metric in exprs else {metric}
        return out

    assert "seqserve_request_duration_seconds_bucket" in selected("SeqserveHighP99Latency")
    assert {"nv_inference_request_failure", "nv_inference_request_success"} == selected(
        "SeqserveHighErrorRatio"
    )
    assert selected("SeqserveModelNotReady") == {"seqserve_model_ready"}
    assert selected("SeqserveQueueSaturated") == {"seqserve_queue_size", "seqserve_queue_capacity"}
    assert selected("SeqserveEngineRestarted") == {"seqserve_engine_restarts_total"}


def test_rules_select_only_exported_series(served: ServerProcess) -> None:
    exported = {name for name, _ in scrape(served.metrics_url)} | {"up"}
    exprs = rule_exprs()
    for name, expr in exprs.items():
        missing = metric_names(expr) - exported - set(exprs)
        assert not missing, f"{name} selects {missing}, which the server does not export"


def test_every_alert_is_documented() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    assert all(f"| `{alert}` |" in doc for alert in ALERTS)
