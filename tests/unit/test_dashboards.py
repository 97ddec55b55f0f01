"""helm/tinymlops/dashboards/: the Grafana dashboard parses, every panel queries something, every query is PromQL
that Prometheus's own parser (promtool) and a Python PromQL parser accept, every metric a query or a template
variable names is one the gateway or the operator exports, and the chart ships the file byte for byte in a
ConfigMap Grafana's sidecar picks up, only when asked to."""

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

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tinymlops"
DASHBOARD = CHART / "dashboards" / "tinymlops-fleet.json"
TEMPLATE_VARIABLES = ("namespace", "fleet", "revision", "device_class")

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}

# Grafana's interval macros are not PromQL; Grafana substitutes a duration before Prometheus sees the query.
GRAFANA_DURATION = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)$")


def registries() -> list[Any]:
    from tinymlops.gateway.fleetstate import FleetState
    from tinymlops.gateway.metrics import GatewayMetrics
    from tinymlops_operator.metrics import OperatorMetrics

    return [GatewayMetrics(FleetState()).registry, OperatorMetrics().registry]


def exported_metric_names() -> set[str]:
    """Sample names of every family the gateway's and the operator's registries hold (counters as _total,
    histograms as _bucket/_sum/_count, gauges as they are), read from the registries themselves."""
    return {family.name + suffix for registry in registries() for family in registry.collect()
            for suffix in SUFFIXES[family.type]}


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every exported sample name with its label names. prometheus-client keeps label names only on its collectors
    (`_labelnames` of a Counter or Histogram, of the families a custom collector describes), not on the families
    it collects while no series exists yet, hence the private attributes."""
    found: dict[str, frozenset[str]] = {}
    for registry in registries():
        for collector in registry._collector_to_names:
            for family in collector.describe():
                labels = frozenset(getattr(collector, "_labelnames", None) or family._labelnames)
                for suffix in SUFFIXES[family.type]:
                    found[family.name + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    return found


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but the rows (which only group), nested ones included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def targets() -> list[tuple[str, str]]:
    """(where, expr) of every panel target."""
    return [(f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
            for panel in query_panels(load_dashboard()) for target in panel["targets"]]


def variable_selectors() -> list[tuple[str, str]]:
    """(where, selector) of every label_values() template variable."""
    found = []
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["definition"])
            assert match, f"variable {variable['name']}: {variable['definition']!r} is not label_values(selector, lbl)"
            assert variable["query"]["query"] == variable["definition"], variable["name"]
            found.append((f"variable {variable['name']}", match["selector"]))
    return found


def as_prometheus_sees_it(expr: str) -> str:
    return GRAFANA_DURATION.sub("5m", expr)


# --- the JSON --------------------------------------------------------------------------------------------------


def test_the_dashboard_is_a_current_grafana_dashboard_with_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39  # Grafana 11 and later
    assert dashboard["uid"] == "tinymlops-fleet" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in TEMPLATE_VARIABLES:
        assert variables[name]["type"] == "query" and variables[name]["definition"].startswith("label_values(")
        assert variables[name]["definition"].endswith(f", {name})"), name
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_has_a_title_a_target_and_reads_the_chosen_datasource() -> None:
    panels = list(query_panels(load_dashboard()))
    assert len(panels) >= 8
    ids = [panel["id"] for panel in load_dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        assert panel.get("targets"), f"panel {panel['title']!r} has no target"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has a target without a query"
            assert target["datasource"] == panel["datasource"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_dashboard_covers_what_issue_12_asks_for() -> None:
    """Fleet health, rollouts, update failures, rejected reports, energy, latency, staleness and drift."""
    read = " ".join(expr for _, expr in targets())
    for metric in ("tinymlops_fleet_devices", "tinymlops_fleet_converged_devices",
                   "tinymlops_operator_canary_weight_ratio", "tinymlops_operator_rollout_steps_total",
                   "tinymlops_device_update_failures_total", "tinymlops_gateway_reports_rejected_total",
                   "tinymlops_device_energy_joules_total", "tinymlops_device_inference_latency_seconds_bucket",
                   "tinymlops_fleet_stale_devices", "tinymlops_fleet_drift_score", "tinymlops_fleet_drifted"):
        assert metric in read, f"no panel reads {metric}"


# --- the queries -----------------------------------------------------------------------------------------------


def selectors(node: Any) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names it matches on) of every selector in promql-parser's syntax tree."""
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        names = {m.value for m in node.matchers.matchers if m.name == "__name__"} | ({node.name} - {None})
        assert len(names) == 1, f"a selector must name one metric: {node.prettify()}"
        yield names.pop(), {m.name for m in node.matchers.matchers} - {"__name__"}
        return
    for attribute in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from selectors(child)
    if isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from selectors(argument)


def test_every_query_parses_and_names_only_exported_metrics_and_their_labels() -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser (test extra) parses PromQL")
    exported = exported_metrics()
    assert set(exported) == exported_metric_names()
    known = exported
    for where, expr in [*targets(), *variable_selectors()]:
        try:
            tree = promql_parser.parse(as_prometheus_sees_it(expr))
        except ValueError as error:
            pytest.fail(f"{where}: {expr!r} is not PromQL: {error}")
        selected = list(selectors(tree))
        assert selected, f"{where} selects no metric"
        for metric, labels in selected:
            assert metric in known, f"{where} reads {metric}, which nothing exports"
            # A matcher on a label the metric lacks matches nothing (or everything): a panel silently empty.
            assert labels <= known[metric], f"{where}: {metric} has no label {sorted(labels - known[metric])}"


def test_the_selector_walk_finds_every_metric_and_matcher() -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser (test extra) parses PromQL")
    tree = promql_parser.parse('sum(rate(tinymlops_device_inferences_total[5m])) / sum(tinymlops_nonsense{a="b"})')
    assert list(selectors(tree)) == [("tinymlops_device_inferences_total", set()), ("tinymlops_nonsense", {"a"})]
    assert list(selectors(promql_parser.parse('{__name__="tinymlops_fleet_devices", phase="Failed"}'))) == [
        ("tinymlops_fleet_devices", {"phase"})]
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(tinymlops_device_inferences_total[$__rate_interval]))")


def test_every_query_passes_prometheus_own_parser(tmp_path: Path) -> None:
    """promtool checks rule files, not bare expressions: each query becomes a recording rule in a group named after
    its panel, so a failure names the panel."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is Prometheus's own PromQL parser; it is not installed")
    groups = [{"name": where, "rules": [{"record": f"tinymlops_dashboard:query_{index}",
                                         "expr": as_prometheus_sees_it(expr)}]}
              for index, (where, expr) in enumerate([*targets(), *variable_selectors()])]
    rules = tmp_path / "dashboard-queries.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(groups)} rules found" in checked.stdout


def test_promtool_refuses_a_broken_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    rules = tmp_path / "broken.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [
        {"record": "tinymlops_dashboard:broken", "expr": "sum by (le (rate(tinymlops_fleet_devices[5m]))"}]}]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode != 0


# --- the chart -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def config_maps(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = chart.render(values, name="tinymlops", namespace="tinymlops", is_install=True)
    return [doc for template, text in manifests.items() if not template.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "ConfigMap"]


def test_no_dashboard_unless_enabled(chart: Any) -> None:
    assert chart.values["metrics"]["grafanaDashboard"]["enabled"] is False
    assert config_maps(chart) == []


def test_the_configmap_carries_the_sidecar_label_and_the_json_byte_for_byte(chart: Any) -> None:
    (config_map,) = config_maps(chart, {"metrics": {"grafanaDashboard": {"enabled": True}}})
    assert config_map["metadata"]["name"] == "tinymlops-dashboards"
    assert config_map["metadata"]["namespace"] == "tinymlops"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/name"] == "tinymlops"
    assert config_map["data"] == {"tinymlops-fleet.json": DASHBOARD.read_text()}
    assert config_map["data"]["tinymlops-fleet.json"].encode() == DASHBOARD.read_bytes()
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(config_map, "1.30.0", strict=True)


def test_the_sidecars_label_namespace_and_folder_are_configurable(chart: Any) -> None:
    (config_map,) = config_maps(chart, {"metrics": {"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "label": "grafana.io/dashboard", "labelValue": "tinymlops",
        "annotations": {"grafana_folder": "TinyMLOps"}}}})
    metadata = config_map["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["grafana.io/dashboard"] == "tinymlops" and "grafana_dashboard" not in metadata["labels"]
    assert metadata["annotations"] == {"grafana_folder": "TinyMLOps"}


@pytest.mark.parametrize(("values", "named"), [
    ({"enabled": "yes"}, "/metrics/grafanaDashboard/enabled"),
    ({"label": "not a label"}, "/metrics/grafanaDashboard/label"),
    ({"namespace": "Monitoring"}, "/metrics/grafanaDashboard/namespace"),
    ({"dashboards": {}}, "additional properties 'dashboards' not allowed"),
])
def test_bad_dashboard_values_fail_at_install_naming_the_key(chart: Any, values: dict[str, Any], named: str) -> None:
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmValuesError) as failed:
        config_maps(chart, {"metrics": {"grafanaDashboard": values}})
    assert named in str(failed.value)
