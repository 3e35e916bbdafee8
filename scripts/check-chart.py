#!/usr/bin/env python3
"""Render charts/herald with Helm's own template engine (helm-python-sdk, no cluster, no
helm binary) for every values file in charts/herald/ci, and check what comes out:

- values.schema.json accepts the values (Helm checks it while rendering), and refuses a
  value of the wrong type;
- every manifest validates against the Kubernetes schemas (kubernetes-validate, offline);
  the CRDs it has no schema for (KEDA ScaledObject, ServiceMonitor, PrometheusRule) get
  checks of ours (an alert reads only metrics the code defines);
- what schemas cannot see: probes point at paths the API serves (read from the OpenAPI
  document), liveness does not depend on the brokers, the grace period exceeds the
  shutdown budget by 10 s, every HERALD_* key exists in the README's configuration table, the
  node id comes from the pod name, KEDA never scales beyond the partition count, either
  autoscaler adds or removes one node at a time;
- a broken template fails to render.

Exit status 1 and a message naming the file and the problem on the first failure.
"""
import json
import pathlib
import re
import sys
import tempfile
import shutil

import yaml
import kubernetes_validate
from helm_python.chart import Chart
from helm_python import errors as helm_errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "herald"
KUBERNETES = "1.30.0"


def fail(message):
    print("check-chart: FAIL " + message, file=sys.stderr)
    sys.exit(1)


def served_paths():
    source = (ROOT / "Sources" / "HTTPAPI" / "OpenAPIDocument.swift").read_text()
    document = json.loads(source.split('#"""', 1)[1].rsplit('"""#', 1)[0])
    return set(document["paths"])


def readme_keys():
    # Every key in the first column of the configuration table (a row may name two: "`A` / `B`").
    keys = set()
    for cell in re.findall(r"^\| (`HERALD_[^|]*)\|", (ROOT / "README.md").read_text(), re.M):
        keys.update(re.findall(r"`(HERALD_[A-Z0-9_]+)`", cell))
    return keys


def render(values, name="herald"):
    chart = Chart.load(str(CHART))
    manifests = chart.render(values, name=name, namespace="openstack", is_install=True)
    documents = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for document in yaml.safe_load_all(text):
            if document:
                documents.append((path, document))
    return documents


def check_variant(values_file, paths, keys):
    values = yaml.safe_load(values_file.read_text()) or {}
    try:
        documents = render(values)
    except Exception as error:  # noqa: BLE001 - Helm's errors name the template and the value
        fail("%s: does not render: %s" % (values_file.name, error))
    kinds = {}
    for path, document in documents:
        kind = document["kind"]
        kinds[kind] = document
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            check_custom_resource(values_file, path, document)
        except kubernetes_validate.ValidationError as error:
            fail("%s: %s (%s) is not valid Kubernetes %s: %s" % (values_file.name, path, kind, KUBERNETES, error.message))

    deployment = kinds.get("Deployment") or fail("%s: no Deployment" % values_file.name)
    config = kinds.get("ConfigMap") or fail("%s: no ConfigMap" % values_file.name)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container.get(probe, {}).get("httpGet", {}).get("path")
        if path not in paths:
            fail("%s: %s points at %r, which the API does not serve (%s)" % (values_file.name, probe, path, sorted(paths)))
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
        fail("%s: liveness must be /healthz: /readyz fails while a broker is down, and restarts would not help" % values_file.name)
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        fail("%s: readiness must be /readyz" % values_file.name)
    budget = int(config["data"].get("HERALD_SHUTDOWN_BUDGET_SECONDS", "20"))
    if pod["terminationGracePeriodSeconds"] < budget + 10:
        fail("%s: terminationGracePeriodSeconds %s is below the shutdown budget %s + 10" % (values_file.name, pod["terminationGracePeriodSeconds"], budget))
    variables = set(config["data"]) | {env["name"] for env in container.get("env", [])}
    secret = kinds.get("Secret")
    if secret:
        variables |= set(secret.get("stringData", {}))
    unknown = sorted(key for key in variables if key not in keys)
    if unknown:
        fail("%s: %s not in the README's configuration table" % (values_file.name, ", ".join(unknown)))
    node_id = [env for env in container.get("env", []) if env["name"] == "HERALD_NODE_ID"]
    if not node_id or node_id[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("%s: HERALD_NODE_ID must come from the pod name" % values_file.name)
    if str(container["ports"][0]["containerPort"]) != config["data"]["HERALD_API_PORT"]:
        fail("%s: the container port and HERALD_API_PORT differ" % values_file.name)
    ports = {port["name"]: str(port["containerPort"]) for port in container["ports"]}
    if ports.get("metrics") != config["data"].get("HERALD_METRICS_PORT"):
        fail("%s: the container's metrics port and HERALD_METRICS_PORT differ" % values_file.name)
    services = [document for _, document in documents if document["kind"] == "Service"]
    if not any(port.get("name") == "metrics" and service["spec"].get("type", "ClusterIP") == "ClusterIP"
               for service in services for port in service["spec"]["ports"]):
        fail("%s: no ClusterIP Service for the metrics port" % values_file.name)
    if any(port.get("name") == "metrics" for service in services if service["spec"].get("type") != "ClusterIP"
           for port in service["spec"]["ports"]):
        fail("%s: the metrics port is on a Service that is not ClusterIP" % values_file.name)
    security = container.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and security.get("readOnlyRootFilesystem")):
        fail("%s: the pod must run as non-root with a read-only root filesystem" % values_file.name)
    if "PodDisruptionBudget" not in kinds:
        fail("%s: no PodDisruptionBudget" % values_file.name)
    scaled = kinds.get("ScaledObject")
    if scaled and scaled["spec"]["maxReplicaCount"] > int(config["data"].get("HERALD_PARTITIONS", "256")):
        fail("%s: KEDA may scale beyond the partition count" % values_file.name)
    # One node at a time both ways: each change moves about P/n partitions.
    autoscalers = []
    if scaled:
        advanced = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        autoscalers.append(("KEDA", advanced.get("behavior", {})))
    if "HorizontalPodAutoscaler" in kinds:
        autoscalers.append(("the HPA", kinds["HorizontalPodAutoscaler"]["spec"].get("behavior", {})))
    for scaler, behavior in autoscalers:
        for direction in ("scaleUp", "scaleDown"):
            policies = behavior.get(direction, {}).get("policies", [])
            if not policies or any(policy.get("type") != "Pods" or policy.get("value") != 1 for policy in policies):
                fail("%s: %s may add or remove more than one node at a time (%s)" % (values_file.name, scaler, direction))
    if scaled:
        # The trigger sums the backlog more nodes can drain: every ingest and partition queue of
        # this cluster, nothing else (parking queues, the dead letters, another cluster's).
        cluster = config["data"].get("HERALD_CLUSTER") or \
            config["data"].get("HERALD_KEY_PREFIX", "herald:").rstrip(":").replace(":", ".")
        metadata = scaled["spec"]["triggers"][0]["metadata"]
        pattern = re.compile(metadata["queueName"])
        exchanges = len(config["data"].get("HERALD_EXCHANGES", "").split(",")) + 2  # ceilometer, the old single queue
        if int(metadata.get("pageSize", "100")) < int(config["data"].get("HERALD_PARTITIONS", "256")) + exchanges:
            fail("%s: the KEDA trigger's pageSize leaves queues out (KEDA then fails)" % values_file.name)
        for name in [cluster + ".ingest", cluster + ".ingest.nova", cluster + ".ingest.designate", cluster + ".p.0", cluster + ".p.255"]:
            if not pattern.search(name):
                fail("%s: the KEDA trigger leaves out %s" % (values_file.name, name))
        for name in [cluster + ".dead", cluster + ".park.7f3e", cluster + ".partitions", "x" + cluster + ".p.1", cluster + ".p.1x"]:
            if pattern.search(name):
                fail("%s: the KEDA trigger counts %s" % (values_file.name, name))
    autoscaled = "HorizontalPodAutoscaler" in kinds or scaled is not None
    if autoscaled == ("replicas" in deployment["spec"]):
        fail("%s: the Deployment must leave replicas to the autoscaler, and only then" % values_file.name)
    print("check-chart: %-22s %2d manifests valid (%s)" % (values_file.name, len(documents), ", ".join(sorted(kinds))))


def check_custom_resource(values_file, path, document):
    """What we know of the two CRDs the chart may make."""
    kind, spec = document["kind"], document.get("spec", {})
    if kind == "ScaledObject" and document["apiVersion"] == "keda.sh/v1alpha1":
        trigger = spec.get("triggers", [{}])[0]
        metadata = trigger.get("metadata", {})
        if spec.get("scaleTargetRef", {}).get("name") and trigger.get("type") == "rabbitmq" \
                and metadata.get("protocol") == "http" and metadata.get("useRegex") == "true" \
                and metadata.get("operation") == "sum" and metadata.get("mode") == "QueueLength" \
                and isinstance(spec.get("minReplicaCount"), int) and isinstance(spec.get("maxReplicaCount"), int):
            return
    elif kind == "ServiceMonitor" and document["apiVersion"] == "monitoring.coreos.com/v1":
        endpoint = spec.get("endpoints", [{}])[0]
        # It scrapes the metrics Service's port (the API's port serves no /metrics then).
        labels = spec.get("selector", {}).get("matchLabels") or {}
        if labels.get("app.kubernetes.io/component") == "metrics" and endpoint.get("path") == "/metrics" \
                and endpoint.get("port") == "metrics":
            return
    elif kind == "PrometheusRule" and document["apiVersion"] == "monitoring.coreos.com/v1":
        rules = [rule for group in spec.get("groups", []) for rule in group.get("rules", [])]
        if rules and all(rule.get("alert") and rule.get("expr") for rule in rules):
            # Every metric an alert reads is one the code defines (a renamed metric would leave
            # an alert that never fires).
            defined = set(re.findall(r'(?:label: |gauge\()"(herald_[a-z_]+)"', "\n".join(
                path.read_text() for path in (ROOT / "Sources").rglob("*.swift"))))
            named = {name for rule in rules for name in re.findall(r"\b(herald_[a-z_]+)", rule["expr"])}
            if not named <= defined:
                fail("%s: %s: alerts read metrics the code does not define: %s" % (values_file.name, path, ", ".join(sorted(named - defined))))
            return
    fail("%s: %s: an unexpected or malformed %s %s" % (values_file.name, path, document.get("apiVersion"), kind))


# The secrets the chart requires (it ships no placeholder passwords).
REQUIRED = {"secret": {"HERALD_REDIS_URL": "redis://redis:6379/0", "HERALD_AMQP_URL": "amqp://h:p@rabbitmq:5672/%2F",
                       "HERALD_KEYSTONE_PASSWORD": "p"}}


def merged(values):
    result = json.loads(json.dumps(REQUIRED))
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key].update(value)
        else:
            result[key] = value
    return result


def check_refusals():
    """The schema and the templates refuse what would break a cluster."""
    try:
        render(REQUIRED)
    except Exception as error:  # noqa: BLE001
        fail("the chart refused its defaults with the required secrets: %s" % error)
    # Each with what the refusal must name: refused for its own reason, not another.
    bad_values = [
        ({}, "no secrets (Redis, RabbitMQ, Keystone)", "secret.HERALD_REDIS_URL"),
        ({"secret": {"HERALD_KEYSTONE_PASSWORD": ""}}, "Keystone without its password", "secret.HERALD_KEYSTONE_PASSWORD"),
        ({"replicas": 300}, "more replicas than partitions", "replicas (300)"),
        ({"service": {"port": 8090, "metricsPort": 8090}}, "the metrics port on the API's", "service.metricsPort"),
        ({"replicas": "five"}, "a string for replicas", "/replicas"),
        ({"config": {"HERALD_API_AUTH": "none"}}, "an unknown HERALD_API_AUTH", "HERALD_API_AUTH"),
        ({"config": {"HERALD_NODE_ID": "x"}}, "HERALD_NODE_ID in config", "HERALD_NODE_ID"),
        ({"terminationGracePeriodSeconds": 10}, "a grace period below the budget", "terminationGracePeriodSeconds"),
        ({"terminationGracePeriodSeconds": 25}, "a grace period within 10 s of the budget", "terminationGracePeriodSeconds"),
        ({"autoscaling": {"keda": {"enabled": True, "maxReplicas": 300}}}, "KEDA beyond the partitions", "autoscaling.keda.maxReplicas"),
        ({"autoscaling": {"keda": {"enabled": True}}, "config": {"HERALD_PARTITIONS": "450"}}, "KEDA over 400 partitions", "HERALD_PARTITIONS (450)"),
        ({"replica": 3}, "a misspelt key", "'replica'"),
    ]
    for values, what, named in bad_values:
        try:
            render(merged(values) if values else values)
        except Exception as error:  # noqa: BLE001
            text = " ".join(str(error).split())
            if named not in text:
                fail("the chart refused %s for another reason (expected %r): %s" % (what, named, text[:300]))
            print("check-chart: refused %-32s %s" % (what + ":", text[:220]))
            continue
        fail("the chart accepted %s: %s" % (what, values))

    # A broken template must fail the check too.
    with tempfile.TemporaryDirectory() as scratch:
        broken = pathlib.Path(scratch) / "herald"
        shutil.copytree(CHART, broken)
        deployment = broken / "templates" / "deployment.yaml"
        deployment.write_text(deployment.read_text().replace("{{ .Values.service.port }}", "{{ .Values.service.port ", 1))
        try:
            Chart.load(str(broken)).render(REQUIRED, name="herald", namespace="openstack", is_install=True)
        except Exception as error:  # noqa: BLE001
            print("check-chart: refused %-32s %s" % ("a broken template:", " ".join(str(error).split())[:220]))
        else:
            fail("a broken template rendered")


def main():
    paths = served_paths()
    keys = readme_keys()
    if len(keys) < 10:
        fail("found only %d HERALD_ keys in the README's table" % len(keys))
    variants = sorted((CHART / "ci").glob("*.yaml"))
    if not variants:
        fail("no values files in charts/herald/ci")
    for variant in variants:
        check_variant(variant, paths, keys)
    check_refusals()
    print("check-chart: ok, %d variants" % len(variants))


if __name__ == "__main__":
    main()
