"""The Helm chart (deploy/helm/compositor) renders, lints and validates offline, and what it relies
on in Triton is there on a real server.

Renderer: Helm v4.2.3's Go SDK, in process, through helm-python-sdk 0.2.2 (module ``helm_python``;
no ``helm`` binary, no cluster). Every rendered manifest is validated offline, in strict mode
(unknown fields are errors), against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate 1.37.0 for Kubernetes 1.30 (the oldest version the chart claims in
Chart.yaml's kubeVersion) and 1.37 (the newest bundled). The ServiceMonitor (a prometheus-operator
CRD, off by default) has no bundled schema; its fields are asserted directly.

Value sets rendered: the defaults (CPU), values-gpu.yaml, and overrides (autoscaling off with a
fixed replica count and minAvailable; GPU with an existing engine-cache claim, the headless Service
and the ServiceMonitor on). Bad values must fail the render with a message naming the key.

Against a real Triton (the session's ``small_server``): the probe paths answer 200 on its HTTP
port, and the Prometheus adapter rule's two counters, selected with the rule's own label matchers,
exist on its metrics port and give a queue time per request after concurrent requests.

What only a cluster can check (not here): that the kubelet runs the images as uid 10001 with the
read-only root filesystem, the NVIDIA device plugin grants ``nvidia.com/gpu``, the adapter serves
the metric and the HPA acts on it.
"""

from __future__ import annotations

import math
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helm_python
import kubernetes_validate
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "compositor"
ADAPTER_VALUES = ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
RELEASE = "compositor"
NAMESPACE = "serving"
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # the images' (deploy contract)
ENGINE_CACHE = "/var/cache/compositor/engines"


def gpu_values() -> dict:
    return helm_python.values_from_yaml((CHART / "values-gpu.yaml").read_text())


def merged(*layers: dict) -> dict:
    """Layers of values, later ones winning key by key (as ``-f a.yaml -f b.yaml`` does)."""
    result: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


VALUE_SETS = {
    "cpu": lambda: {},
    "gpu": gpu_values,
    "cpu-fixed-replicas": lambda: {
        "autoscaling": {"enabled": False},
        "replicaCount": 3,
        "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None},
    },
    "gpu-pvc-headless-servicemonitor": lambda: merged(
        gpu_values(),
        {
            "engineCache": {"existingClaim": "compositor-engines"},
            "service": {"headless": {"enabled": True}},
            "metrics": {"serviceMonitor": {"enabled": True}},
        },
    ),
}


def render(values: dict) -> list[dict]:
    """The chart's manifests for ``values`` (NOTES.txt and empty documents left out)."""
    chart = helm_python.Chart.load(CHART)
    try:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {name: render(values()) for name, values in VALUE_SETS.items()}


def of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: list[dict], kind: str) -> dict:
    found = of_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(documents: list[dict]) -> dict:
    containers = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def adapter_rule() -> dict:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert len(rules) == 1
    return rules[0]


_RATE = re.compile(r"rate\((?P<name>\w+)\{<<\.LabelMatchers>>(?P<matchers>[^}]*)\}\[\w+\]\)")
_MATCHER = re.compile(r',(\w+)(=~|=)"([^"]*)"')


def rule_terms(rule: dict) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The rule's numerator and denominator: (counter name, [(label, operator, value)]) each."""
    terms = [(m["name"], _MATCHER.findall(m["matchers"])) for m in _RATE.finditer(rule["metricsQuery"])]
    assert len(terms) == 2, rule["metricsQuery"]
    return terms


# --- engine, lint, schemas ---------------------------------------------------------------------


def test_the_renderer_is_helm_v4_2_3_from_helm_python_sdk_0_2_2():
    assert helm_python.helm_sdk_version() == "v4.2.3"
    assert helm_python.__version__ == "0.2.2"


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_chart_lints_without_warnings(name):
    report = helm_python.lint(CHART, VALUE_SETS[name](), strict=True, kube_version="v1.30.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2]  # 2: warning, 3: error
    assert not findings and not report["errors"], report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_manifest_is_valid_for_kubernetes(manifests, name, version):
    for document in manifests[name]:
        if document["kind"] == "ServiceMonitor":
            continue  # a CRD: no bundled schema (its fields are checked below)
        where = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {where} invalid for Kubernetes {version}: {error.message} at {list(error.path)}")


def test_each_value_set_renders_the_expected_objects(manifests):
    kinds = {name: sorted(doc["kind"] for doc in docs) for name, docs in manifests.items()}
    assert kinds["cpu"] == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert kinds["gpu"] == sorted(kinds["cpu"] + ["PersistentVolumeClaim"])  # the engine cache persists
    assert kinds["cpu-fixed-replicas"] == ["Deployment", "PodDisruptionBudget", "Service"]
    assert kinds["gpu-pvc-headless-servicemonitor"] == [
        "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service", "ServiceMonitor"]


# --- the facts that matter -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_probes_ask_triton_health_paths_on_the_http_container_port(manifests, name):
    main = container(manifests[name])
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert ports == CONTAINER_PORTS
    probes = {kind: main[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes["readiness"]["path"] == "/v2/health/ready"
    assert probes["liveness"]["path"] == probes["startup"]["path"] == "/v2/health/live"
    assert {probe["port"] for probe in probes.values()} == {"http"}


def test_the_gpu_startup_probe_allows_minutes_for_the_engine_build(manifests):
    def allowed_s(name):
        probe = container(manifests[name])["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert allowed_s("gpu") >= 20 * 60
    assert allowed_s("cpu") >= 2 * 60


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_pod_runs_as_non_root_with_a_read_only_root_filesystem(manifests, name):
    pod = one(manifests[name], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001
    assert pod["automountServiceAccountToken"] is False
    context = container(manifests[name])["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    # What the server must write goes to volumes: its working files and log, and the Python
    # backend's shared memory.
    mounts = {mount["mountPath"] for mount in container(manifests[name])["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_only_gpu_values_request_a_gpu_and_mount_the_engine_cache(manifests, name):
    main = container(manifests[name])
    gpu = name.startswith("gpu")
    assert ("nvidia.com/gpu" in main["resources"].get("limits", {})) == gpu
    assert "nvidia.com/gpu" not in main["resources"].get("requests", {})
    if gpu:
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    assert (ENGINE_CACHE in mounts) == gpu
    environment = {variable["name"]: variable.get("value") for variable in main.get("env", [])}
    assert environment.get("COMPOSITOR_ENGINE_CACHE") == (ENGINE_CACHE if gpu else None)
    tolerations = one(manifests[name], "Deployment")["spec"]["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == gpu


def test_the_gpu_engine_cache_is_a_claim_the_chart_makes_unless_one_is_given(manifests):
    def cache_volume(name):
        volumes = one(manifests[name], "Deployment")["spec"]["template"]["spec"]["volumes"]
        return next(volume for volume in volumes if volume["name"] == "engine-cache")

    made = one(manifests["gpu"], "PersistentVolumeClaim")
    assert cache_volume("gpu")["persistentVolumeClaim"] == {"claimName": made["metadata"]["name"]}
    assert made["spec"]["accessModes"] == ["ReadWriteMany"] and made["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert made["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # uninstall keeps the engines
    claim = cache_volume("gpu-pvc-headless-servicemonitor")["persistentVolumeClaim"]
    assert claim == {"claimName": "compositor-engines"}
    assert not [doc for doc in manifests["gpu-pvc-headless-servicemonitor"] if doc["kind"] == "PersistentVolumeClaim"]
    without = render(merged(gpu_values(), {"engineCache": {"claim": {"create": False}}}))
    volume = next(v for v in one(without, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "engine-cache")
    assert "emptyDir" in volume


def test_the_hpa_asks_for_the_metric_the_prometheus_adapter_rule_produces(manifests):
    rule = adapter_rule()
    for name in ("cpu", "gpu"):
        hpa = one(manifests[name], "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        deployment = one(manifests[name], "Deployment")
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
        assert hpa["spec"]["scaleTargetRef"] == target
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == "compositor_queue_time_us_per_request"
        assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # With an HPA the Deployment leaves replicas to it (an upgrade must not reset the count).
        assert "replicas" not in deployment["spec"]
    assert one(manifests["cpu-fixed-replicas"], "Deployment")["spec"]["replicas"] == 3


def test_the_adapter_rule_maps_series_to_pods_and_divides_queue_time_by_ensemble_requests():
    rule = adapter_rule()
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    numerator, denominator = rule_terms(rule)
    assert numerator == ("nv_inference_queue_duration_us", [])  # every model: requests queue in the steps
    assert denominator == ("nv_inference_request_success", [("model", "=~", "composite|composite_with_alpha")])


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_service_and_pdb_select_exactly_the_pods_of_the_deployment(manifests, name):
    deployment = one(manifests[name], "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert one(manifests[name], "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    for service in of_kind(manifests[name], "Service"):
        assert service["spec"]["selector"] == selector
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in CONTAINER_PORTS, port


def test_the_service_is_cluster_ip_with_the_three_ports_and_the_headless_one_is_optional(manifests):
    (service,) = of_kind(manifests["cpu"], "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == CONTAINER_PORTS
    headless = [s for s in of_kind(manifests["gpu-pvc-headless-servicemonitor"], "Service")
                if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [f"{RELEASE}-headless"]


def test_the_pdb_allows_one_disruption_by_default_or_keeps_min_available(manifests):
    assert one(manifests["cpu"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    fixed = one(manifests["cpu-fixed-replicas"], "PodDisruptionBudget")["spec"]
    assert fixed["minAvailable"] == 2 and "maxUnavailable" not in fixed


def test_prometheus_finds_the_metrics_port_by_annotation_or_service_monitor(manifests):
    annotations = one(manifests["cpu"], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8002", "prometheus.io/path": "/metrics"}
    assert not of_kind(manifests["cpu"], "ServiceMonitor")
    monitor = one(manifests["gpu-pvc-headless-servicemonitor"], "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    service = next(s for s in of_kind(manifests["gpu-pvc-headless-servicemonitor"], "Service")
                   if "clusterIP" not in s["spec"])
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


# --- bad values ----------------------------------------------------------------------------------

BAD_VALUES = {
    "negative replica count": ({"autoscaling": {"enabled": False}, "replicaCount": -1},
                               r"at '/replicaCount': minimum: got -1, want 0"),
    "empty image repository": ({"image": {"repository": ""}}, r"at '/image/repository': minLength"),
    # null removes a key in Helm, as an override that deletes the default would.
    "missing image repository": ({"image": {"repository": None}}, r"at '/image': missing property 'repository'"),
    "misspelled key": ({"replicas": 3}, r"additional properties 'replicas' not allowed"),
    "GPU count as text": ({"resources": {"limits": {"nvidia.com/gpu": "one"}}},
                          r"at '/resources/limits/nvidia.com~1gpu': 'one' does not match"),
    "min above max replicas": ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
                               r"autoscaling.minReplicas \(5\) is greater than autoscaling.maxReplicas \(2\)"),
    "both PDB bounds": ({"podDisruptionBudget": {"minAvailable": 1}},
                        r"podDisruptionBudget: set either minAvailable or maxUnavailable, not both"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_fail_the_render_with_a_message_naming_the_key(case):
    values, message = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


# --- against a real Triton server ----------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(url, timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def counter_total(samples, term) -> float:
    """The sum of a rule term's counter over the samples its label matchers select (PromQL's =, =~)."""
    name, matchers = term
    total, found = 0.0, False
    for sample_name, labels, value in samples:
        if sample_name == name and all(
            labels.get(label) == wanted if operator == "=" else re.fullmatch(wanted, labels.get(label, ""))
            for label, operator, wanted in matchers
        ):
            total, found = total + value, True
    assert found, f"no {name} sample matching {matchers} on the metrics port"
    return total


@pytest.mark.triton
def test_the_chart_probe_paths_answer_200_on_a_real_triton_server(small_server, manifests):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    main = container(manifests["cpu"])
    for kind in ("startup", "liveness", "readiness"):
        path = main[f"{kind}Probe"]["httpGet"]["path"]
        with opener.open(f"http://{small_server.http_url}{path}", timeout=10) as response:
            assert response.status == 200, (kind, path)


@pytest.mark.triton
def test_the_adapter_rule_computes_a_queue_time_from_a_real_servers_counters(small_server):
    from compositor.client.remote import CompositorClient

    numerator, denominator = rule_terms(adapter_rule())
    source = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    background = np.full((48, 40, 3), 90, np.uint8)

    def send(count: int) -> None:
        with CompositorClient(small_server.http_url, protocol="http") as client:
            for _ in range(count):
                client.composite(source, background)

    send(1)  # Triton's per-model counters exist once the model has served a request
    before = scrape(small_server.metrics_url)
    # Four clients at once, one instance per model (the default repository): requests queue.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, [2] * 4))
    after = scrape(small_server.metrics_url)

    requests = counter_total(after, denominator) - counter_total(before, denominator)
    queued_us = counter_total(after, numerator) - counter_total(before, numerator)
    assert requests == 8
    per_request_us = queued_us / requests  # what the adapter serves (over rate windows)
    # The ensemble's own queue holds a request only for microseconds; the steps' queues are where
    # the wait is, and why the rule sums every model (see the rule's comment).
    ensemble_only = ("nv_inference_queue_duration_us", [("model", "=", "composite")])
    ensemble_only_us = (counter_total(after, ensemble_only) - counter_total(before, ensemble_only)) / requests
    assert math.isfinite(per_request_us) and per_request_us > ensemble_only_us >= 0
