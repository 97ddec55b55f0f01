"""helm/tinymlops and kind-config.yaml: the chart lints and renders offline (Helm's own Go engine through
helm-python-sdk), ships exact copies of crds/, and the kind cluster config is one kind can start."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tinymlops.kube.schema import load_crds

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tinymlops"


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Rendered objects by (kind, name)."""
    manifests = chart.render(values, name="tinymlops", namespace="tinymlops", is_install=True)
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for template, text in manifests.items():
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    # Ours and kopf's peering CRD (the operator needs it; kopf does not install it), not KubeEdge's.
    ours = sorted([*(ROOT / "crds").glob("*.yaml"), *(ROOT / "crds" / "kopf").glob("*.yaml")], key=lambda p: p.name)
    copies = sorted((CHART / "crds").glob("*"))
    assert [p.name for p in copies] == [p.name for p in ours], "the chart ships exactly our CRDs and kopf's"
    for source, copy in zip(ours, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: cp crds/*.yaml {CHART}/crds/"


def test_chart_lints_clean() -> None:
    report = helm.lint(CHART, strict=True, namespace="tinymlops")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


def test_chart_loads_its_crds(chart: Any) -> None:
    assert sorted(crd["filename"] for crd in chart.crds) == [
        "tinymlops/crds/clusterkopfpeerings.kopf.dev.yaml", "tinymlops/crds/devicefleets.tinymlops.io.yaml",
        "tinymlops/crds/edgemodels.tinymlops.io.yaml", "tinymlops/crds/federatedtrainings.tinymlops.io.yaml",
        "tinymlops/crds/licenses.tinymlops.io.yaml"]


def test_default_values_fit_the_values_schema(chart: Any) -> None:
    chart.validate_schema(chart.values)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"operator": {"replicas": -1}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"stroe": {}})


def values_key_lines() -> dict[tuple[str, ...], bool]:
    """Every key of values.yaml by path, and whether a comment sits right above it."""
    keys: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        stack = [(i, k) for i, k in stack if i < indent]
        stack.append((indent, stripped.split(":", 1)[0]))
        keys[tuple(k for _, k in stack)] = index > 0 and lines[index - 1].strip().startswith("#")
    return keys


def schema_keys(node: dict[str, Any], root: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The chart's own keys: those values.schema.json declares (free-form maps such as resources are data)."""
    if "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    found: list[tuple[str, ...]] = []
    for name, sub in (node.get("properties") or {}).items():
        found.append((*path, name))
        found.extend(schema_keys(sub, root, (*path, name)))
    return found


def test_every_values_key_is_commented_and_typed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    commented = values_key_lines()
    declared = [key for key in schema_keys(schema, schema) if key in commented]
    assert len(declared) > 40
    assert [".".join(key) for key in declared if not commented[key]] == []
    undeclared = [k for k in commented if not any(k[: len(d)] == d for d in declared)]
    assert undeclared == [], "values.yaml keys missing from values.schema.json"


def test_renders_with_default_values(chart: Any) -> None:
    objects = render(chart)
    assert set(objects) == {
        ("ServiceAccount", "tinymlops"),
        ("ClusterRole", "tinymlops-operator"),
        ("ClusterRoleBinding", "tinymlops-operator"),
        ("ClusterKopfPeering", "tinymlops"),
        ("Deployment", "tinymlops-operator"),
        ("Deployment", "tinymlops-gateway"),
        ("Service", "tinymlops-gateway"),
        ("Service", "tinymlops-operator-metrics"),
        ("PersistentVolumeClaim", "tinymlops-store"),
    }
    operator = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]
    (container,) = operator["containers"]
    assert container["command"] == ["tinymlops", "operator", "run", "--liveness=http://0.0.0.0:8081/healthz"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TINYMLOPS_STORE"] == "/var/lib/tinymlops/store"
    assert env["TINYMLOPS_GATEWAY_URL"] == "http://tinymlops-gateway.tinymlops.svc:8080"
    assert "TINYMLOPS_KFP_HOST" not in env and "TINYMLOPS_PROMETHEUS_URL" not in env
    assert env["TINYMLOPS_METRICS_PORT"] == "9102"
    key_mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    assert env["TINYMLOPS_SIGNING_KEY"] == key_mount["mountPath"] + "/signing-key.pem"
    secret = next(v for v in operator["volumes"] if v["name"] == "signing-key")["secret"]
    assert secret["secretName"] == "tinymlops-signing-key"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": 9102, "protocol": "TCP"}]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    service = objects[("Service", "tinymlops-gateway")]["spec"]
    assert service["ports"][0]["port"] == 8080


def test_pods_run_non_root_with_a_read_only_root_filesystem(chart: Any) -> None:
    for values in ({}, {"store": {"persistence": {"enabled": False}}, "operator": {"healthPort": 8081}}):
        for (kind, name), obj in render(chart, values).items():
            if kind != "Deployment":
                continue
            pod = obj["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
                assert context["capabilities"] == {"drop": ["ALL"]}
                assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp"


def test_rbac_is_least_privilege(chart: Any) -> None:
    rules = render(chart)[("ClusterRole", "tinymlops-operator")]["rules"]
    granted = {(group, resource): set(rule["verbs"])
               for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]}
    # Exactly what the operator was seen doing on the API emulator (tests/integration check every request it
    # makes against this role); a grant nobody uses would be a privilege to lose, a missing one a crash loop.
    assert granted == {
        ("tinymlops.io", "edgemodels"): {"list", "watch", "patch"},
        ("tinymlops.io", "devicefleets"): {"list", "watch", "patch"},
        ("tinymlops.io", "edgemodels/status"): {"patch"},
        ("tinymlops.io", "devicefleets/status"): {"patch"},
        ("tinymlops.io", "licenses"): {"list", "watch", "patch"},
        ("tinymlops.io", "licenses/status"): {"patch"},
        ("tinymlops.io", "federatedtrainings"): {"list", "watch", "patch"},
        ("tinymlops.io", "federatedtrainings/status"): {"patch"},
        ("devices.kubeedge.io", "devices"): {"list", "watch"},
        ("", "nodes"): {"list", "watch"},  # deviceKind: Node fleets (the operator indexes edge nodes)
        ("", "events"): {"create"},
        ("", "secrets"): {"get", "create"},  # signing keys read; per-model data keys created
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"},  # peering among replicas
    }
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in rules)


def test_replicas_share_a_peering_and_need_a_shared_store(chart: Any) -> None:
    objects = render(chart, {"operator": {"replicas": 2}})
    (container,) = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TINYMLOPS_PEERING"]["value"] == "tinymlops" and ("ClusterKopfPeering", "tinymlops") in objects
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert load_crds(ROOT / "crds" / "kopf").validate(objects[("ClusterKopfPeering", "tinymlops")], strict=False) == []
    for values, reason in (({"peering": {"enabled": False}}, "needs operator.peering.enabled=true"),
                           ({"healthPort": 8081}, "needs store.persistence.enabled=true")):
        store = {"persistence": {"enabled": False}} if "healthPort" in values else {}
        with pytest.raises(Exception, match=reason):
            render(chart, {"operator": {"replicas": 2, **values}, "store": store})
    alone = render(chart, {"operator": {"peering": {"enabled": False}}})
    (container,) = alone[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]["containers"]
    assert "TINYMLOPS_PEERING" not in {e["name"] for e in container["env"]}
    assert ("ClusterKopfPeering", "tinymlops") not in alone


def test_kfp_host_is_passed_only_when_set(chart: Any) -> None:
    objects = render(chart, {"operator": {"kfpHost": "http://ml-pipeline.kubeflow:8888"}})
    (container,) = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]["containers"]
    assert {"name": "TINYMLOPS_KFP_HOST", "value": "http://ml-pipeline.kubeflow:8888"} in container["env"]


def test_without_persistence_the_gateway_shares_the_operator_pod(chart: Any) -> None:
    objects = render(chart, {"store": {"persistence": {"enabled": False}}, "operator": {"healthPort": 8081}})
    assert ("Deployment", "tinymlops-gateway") not in objects
    assert ("PersistentVolumeClaim", "tinymlops-store") not in objects
    pod = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["operator", "gateway"]
    assert {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}} in pod["spec"]["volumes"]
    selector = objects[("Service", "tinymlops-gateway")]["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_port_collision_in_a_shared_pod_is_refused_with_a_clear_message(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match="operator.healthPort"):
        render(chart, {"store": {"persistence": {"enabled": False}}, "operator": {"healthPort": 8080}})
    # The defaults differ, so the shared pod works without any port set.
    render(chart, {"store": {"persistence": {"enabled": False}}})


def test_the_gateway_service_selects_the_gateway_pods(chart: Any) -> None:
    objects = render(chart, {"gateway": {"service": {"type": "NodePort", "nodePort": 30080}},
                             "metrics": {"serviceMonitor": {"enabled": True}}})
    service = objects[("Service", "tinymlops-gateway")]
    pod = objects[("Deployment", "tinymlops-gateway")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    monitor = objects[("ServiceMonitor", "tinymlops-gateway")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # A ReadWriteOnce store can only be shared on the operator's node.
    assert pod["spec"]["affinity"]["podAffinity"]
    # The operator's own /metrics (rollout steps, rollbacks) are scraped through their Service.
    operator_service = objects[("Service", "tinymlops-operator-metrics")]
    operator_pod = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]
    assert operator_service["spec"]["selector"].items() <= operator_pod["metadata"]["labels"].items()
    operator_monitor = objects[("ServiceMonitor", "tinymlops-operator")]["spec"]
    assert operator_monitor["selector"]["matchLabels"].items() <= operator_service["metadata"]["labels"].items()
    assert operator_monitor["endpoints"][0]["port"] == "metrics"


def test_the_rollout_analysis_queries_the_configured_prometheus(chart: Any) -> None:
    objects = render(chart, {"operator": {"prometheusURL": "http://prometheus-operated.monitoring:9090"}})
    (container,) = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]["containers"]
    assert {"name": "TINYMLOPS_PROMETHEUS_URL", "value": "http://prometheus-operated.monitoring:9090"} in container[
        "env"]
    with pytest.raises(helm.HelmError, match="prometheusURL"):
        render(chart, {"operator": {"prometheusURL": "prometheus:9090"}})
    with pytest.raises(helm.HelmError, match="metricsPort and operator.healthPort must differ"):
        render(chart, {"operator": {"metricsPort": 8081}})


# --- kind-config.yaml ----------------------------------------------------------------------------

# The kubelet refuses to label itself in these namespaces except with the prefixes it allows
# (kubernetes/kubernetes#85073); kind then never gets the node Ready (kubernetes-sigs/kind#3536).
KUBELET_ALLOWED = ("kubelet.kubernetes.io/", "node.kubernetes.io/", "kubernetes.io/arch", "kubernetes.io/os",
                   "kubernetes.io/hostname", "topology.kubernetes.io/")


def test_kind_config_has_two_labelled_edge_workers_and_the_port_mappings() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    ports = {m["hostPort"]: m["containerPort"] for m in config["nodes"][0]["extraPortMappings"]}
    assert ports == {30080: 30080, 30090: 30090}
    for worker in config["nodes"][1:]:
        labels = worker["labels"]
        assert labels["tinymlops.io/edge"] == "true"
        for key in ("arch", "device-class", "ram-mb", "model-storage-kb", "runtimes"):
            assert isinstance(labels[f"tinymlops.io/{key}"], str), key
        for key in labels:
            if "kubernetes.io" in key or "k8s.io" in key:
                assert key.startswith(KUBELET_ALLOWED), f"the kubelet would refuse label {key}"
    # The KubeEdge role label is applied after creation; the file says how.
    assert "kubectl label node -l tinymlops.io/edge=true node-role.kubernetes.io/edge=" in (
        ROOT / "kind-config.yaml").read_text()


# --- every object valid; bad values fail at install time, naming the key ------------------------------------

ALL_FEATURES: list[dict[str, Any]] = [
    {},
    {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                 "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
     "operator": {"kfpHost": "http://ml-pipeline.kubeflow:8888", "prometheusURL": "http://prometheus:9090"},
     "gateway": {"service": {"type": "NodePort", "nodePort": 30080}, "tls": {"secretName": "gateway-cert"}}},
    {"store": {"persistence": {"enabled": False}}, "operator": {"healthPort": 8081}, "rbac": {"create": True},
     "gateway": {"tls": {"secretName": "gateway-cert"}}},
]
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest kind node image we document, and the newest schemas we have
MONITORING = "monitoring.coreos.com/v1"


@pytest.mark.parametrize("values", ALL_FEATURES, ids=["defaults", "every-option", "no-persistence"])
def test_every_rendered_object_is_valid_for_kubernetes(chart: Any, values: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in render(chart, values).values():
        if obj["apiVersion"] in (MONITORING, "kopf.dev/v1"):
            continue  # Prometheus Operator kinds and kopf's peering: checked elsewhere against their schemas
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def exported_metric_names() -> set[str]:
    """Sample names of every family the gateway and the operator register (counters as _total, histograms as
    _bucket/_sum/_count), without needing a sample of each."""
    from tinymlops.gateway.fleetstate import FleetState
    from tinymlops.gateway.metrics import GatewayMetrics
    from tinymlops_operator.metrics import OperatorMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for registry in (GatewayMetrics(FleetState()).registry, OperatorMetrics().registry):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_monitoring_objects_are_well_formed_and_the_rules_pass_promtool(chart: Any, tmp_path: Path) -> None:
    import shutil
    import subprocess

    objects = render(chart, ALL_FEATURES[1])
    kinds = {kind for kind, _ in objects if objects[(kind, _)]["apiVersion"] == MONITORING}
    assert kinds == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    pods = [obj["spec"]["template"] for (kind, _), obj in objects.items() if kind == "Deployment"]
    ports = {port["name"] for pod in pods for c in pod["spec"]["containers"] for port in c.get("ports", [])}
    pod_monitor = objects[("PodMonitor", "tinymlops")]["spec"]
    assert {e["port"] for e in pod_monitor["podMetricsEndpoints"]} <= ports  # scrapes ports that exist
    assert all(pod_monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items() for pod in pods)
    rule = objects[("PrometheusRule", "tinymlops")]
    assert rule["metadata"]["labels"].get("app.kubernetes.io/name") == "tinymlops"
    # The gateway's and operator's `namespace` label is the fleet's: without honorLabels the Prometheus Operator's
    # target label wins, the fleet's becomes exported_namespace and the analysis finds no data (see
    # tests/integration/test_prometheus_operator_labels.py for the clash itself).
    service_monitors = [obj for (kind, _), obj in objects.items() if kind == "ServiceMonitor"]
    endpoints = [*pod_monitor["podMetricsEndpoints"], *(e for m in service_monitors for e in m["spec"]["endpoints"])]
    assert len(endpoints) == 4 and all(e.get("honorLabels") is True for e in endpoints)
    # Every metric a rule reads is one the gateway or the operator exports (a rename must not silence an alert).
    read = {name for group in rule["spec"]["groups"] for r in group["rules"]
            for name in re.findall(r"\b(tinymlops_[a-z_]+)", r["expr"])}
    assert read and read <= exported_metric_names()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) checks the rules' PromQL")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("values", "named"), [
    ({"stroe": {}}, "additional properties 'stroe' not allowed"),
    ({"operator": {"replicas": "one"}}, "/operator/replicas': got string, want integer"),
    ({"image": {"repository": None}}, "/image': missing property 'repository'"),
    ({"image": {"repository": "", "pullPolicy": "Always"}}, "/image/repository': minLength"),
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort': maximum"),
    ({"metrics": {"prometheusRule": {"offlineRatio": 2}}}, "/metrics/prometheusRule/offlineRatio': maximum"),
    ({"metrics": {"podMonitor": {"interval": "often"}}}, "/metrics/podMonitor/interval"),
])
def test_bad_values_fail_at_install_naming_the_key(chart: Any, values: dict[str, Any], named: str) -> None:
    """`helm install` refuses them through values.schema.json, before anything reaches the cluster."""
    with pytest.raises(helm.HelmValuesError) as failed:
        render(chart, values)
    assert named in str(failed.value)


def test_the_gateway_authenticates_reports_and_serves_tls_from_a_cert_manager_secret(chart: Any) -> None:
    plain = render(chart)[("Deployment", "tinymlops-gateway")]["spec"]["template"]["spec"]
    (gateway,) = plain["containers"]
    assert "--registry-from-store" in gateway["command"] and "--tls-cert" not in gateway["command"]
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    unauthenticated = render(chart, {"gateway": {"authenticateReports": False}})
    assert "--registry-from-store" not in unauthenticated[("Deployment", "tinymlops-gateway")]["spec"]["template"][
        "spec"]["containers"][0]["command"]

    objects = render(chart, {"gateway": {"tls": {"secretName": "gateway-cert"}},
                             "metrics": {"serviceMonitor": {"enabled": True}}})
    pod = objects[("Deployment", "tinymlops-gateway")]["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    command = gateway["command"]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "gateway-tls")
    assert command[command.index("--tls-cert") + 1] == mount["mountPath"] + "/tls.crt"
    assert command[command.index("--tls-key") + 1] == mount["mountPath"] + "/tls.key"
    assert next(v for v in pod["volumes"] if v["name"] == "gateway-tls")["secret"]["secretName"] == "gateway-cert"
    assert gateway["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    operator = objects[("Deployment", "tinymlops-operator")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in operator["containers"][0]["env"]}
    assert env["TINYMLOPS_GATEWAY_URL"] == "https://tinymlops-gateway.tinymlops.svc:8080"
    ca_mount = next(m for m in operator["containers"][0]["volumeMounts"] if m["name"] == "gateway-tls")
    assert env["TINYMLOPS_GATEWAY_CA"] == ca_mount["mountPath"] + "/ca.crt"
    endpoint = objects[("ServiceMonitor", "tinymlops-gateway")]["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["ca"]["secret"] == {"name": "gateway-cert",
                                                                                      "key": "ca.crt"}
