"""deploy/: the Grafana dashboard and the Prometheus alert rules read what meshbreaker exports.

The families and labels are not listed here: they are scraped from a real control plane that an
instance reported to (with transitions, a duration histogram and a NACK, so every family is on
the page). Every query of the dashboard and every alert must name only those.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshbreaker.v1 import control_plane_pb2 as pb
from tests.scrape_support import Scrape
from tests.server_support import ControlPlane

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "meshbreaker.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# Series Prometheus makes itself, and labels it adds, besides what meshbreaker exports.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
PROMETHEUS_LABELS = {"job", "instance", "__name__"}

_NAME = re.compile(r"\b(meshbreaker_[a-z_]+|up)\b(?!\s*\()")
_BY = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_TEMPLATE = re.compile(r"\{\{\s*\$?(?:labels\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """{sample name: its label names} on a real control plane's /metrics page."""
    plane = ControlPlane(tmp_path_factory.mktemp("deploy") / "cp.db", metrics_port=0)
    try:
        snapshot = pb.BreakerSnapshot(
            name="/bank.v1.AuditService/Log",
            state=pb.BREAKER_STATE_OPEN,
            total=3,
            failed=3,
            transitions=[
                pb.TransitionCount(
                    from_state=pb.BREAKER_STATE_CLOSED, to_state=pb.BREAKER_STATE_OPEN, count=1
                )
            ],
            duration_histogram=pb.DurationHistogram(bounds=[0.1, 1.0], counts=[2, 1, 0], sum=0.4),
        )
        plane.stub.ReportState(
            pb.ReportStateRequest(
                instance_id="gw-1",
                service="gateway",
                breakers=[snapshot],
                nack=pb.Nack(revision=1, reason="policy.config.window_size: must be >= 1"),
            ),
            timeout=5,
        )
        page = Scrape(f"http://127.0.0.1:{plane.running.metrics_port}/metrics")
    finally:
        plane.close()
    names: dict[str, set[str]] = {}
    for family in page.families.values():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    yield names


def check_query(expr: str, exported: dict[str, set[str]]) -> None:
    """`expr` reads series, and only exported families (or `up`) and their labels."""
    names = set(_NAME.findall(expr))
    assert names, expr
    known = {**exported, **PROMETHEUS_SERIES}
    unknown = names - set(known)
    assert not unknown, f"{sorted(unknown)} not exported (query: {expr})"
    labels = set().union(*(known[name] for name in names)) | PROMETHEUS_LABELS
    used = {label.strip() for group in _BY.findall(expr) for label in group.split(",")} - {""}
    used |= set(_MATCHER.findall(expr))
    assert used <= labels, f"labels {sorted(used - labels)} not exported (query: {expr})"


def test_the_query_check_refuses_what_is_not_exported(exported: dict[str, set[str]]) -> None:
    check_query('sum by (service) (meshbreaker_state{state="OPEN"})', exported)
    for wrong in (
        "meshbreaker_breaker_state",  # not a family
        'sum by (caller) (meshbreaker_state{state="OPEN"})',  # not a label of it
        'meshbreaker_control_plane_revision{grpc_service="x"}',
    ):
        with pytest.raises(AssertionError):
            check_query(wrong, exported)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_dashboard_is_grafana_json_over_exported_families(
    exported: dict[str, set[str]],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "meshbreaker" and dashboard["schemaVersion"] >= 36
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "caller", "grpc_service"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24, panel["title"]
    titles = set()
    for panel in panels(dashboard):
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "meshbreaker_" in target["expr"], target["expr"]
            check_query(target["expr"], exported)
            legend_labels = set(_TEMPLATE.findall(target.get("legendFormat", "")))
            check_query(
                target["expr"] + "".join(f" by ({label})" for label in legend_labels),
                exported,
            )
    # What the issue asks the dashboard to show.
    for wanted in (
        "Breaker state per method and instance",
        "Calls by outcome",
        "Failure rate against the threshold",
        "Slow-call rate against the threshold",
        "State transitions",
        "Call latency p50 / p99",
        "Connected agents and reports",
    ):
        assert wanted in titles


def test_every_state_is_mapped_on_the_state_timeline() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (timeline,) = [p for p in panels(dashboard) if p["type"] == "state-timeline"]
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    shown = {option["text"] for option in mapping["options"].values()}
    assert shown == {"CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "FORCED_CLOSED"}
    expr = timeline["targets"][0]["expr"]
    for code, option in mapping["options"].items():
        assert f'state="{option["text"]}"}} * {code}' in expr


def test_the_alert_rules_parse_and_read_exported_families(exported: dict[str, set[str]]) -> None:
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    names = {rule["alert"] for rule in rules}
    assert names == {
        "MeshbreakerBreakerOpenTooLong",
        "MeshbreakerBreakerFlapping",
        "MeshbreakerFleetWideOpen",
        "MeshbreakerAgentsNacking",
        "MeshbreakerInstanceReportsStale",
        "MeshbreakerControlPlaneDown",
        "MeshbreakerControlPlaneReplicaDown",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        check_query(rule["expr"], exported)
        # The annotations name only labels the expression keeps: those of its outermost `by`.
        groupings = _BY.findall(rule["expr"])
        kept = {label.strip() for label in groupings[-1].split(",")} if groupings else set()
        for text in rule["annotations"].values():
            for label in _TEMPLATE.findall(text):
                if label != "value":
                    assert label in kept or label in PROMETHEUS_LABELS, (rule["alert"], label)
    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "meshbreaker-control-plane" and job["honor_labels"] is True
    assert scrape["rule_files"] == ["alerts.yml"]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(SCRAPE_CONFIG)],
        ["test", "rules", str(ALERT_TESTS)],
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
