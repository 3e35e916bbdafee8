#!/usr/bin/env python3
"""What the chart gives a Herald pod, for scripts/image and scripts/image-check.

Renders charts/herald with Helm's own template engine (scripts/check-chart.py's render)
with the chart's defaults plus the values given as PATH=VALUE (dotted, like helm's
--set: config.HERALD_ZAQAR_URL=http://... service.port=8123), and prints the pod's facts
as shell assignments:

  CHART_USER CHART_GROUP     the pod's runAsUser and runAsGroup
  CHART_ARGS                 the container's args, space-separated
  CHART_PORT                 the container port
  CHART_GRACE                terminationGracePeriodSeconds
  CHART_READ_ONLY_ROOT       true or false
  CHART_WRITABLE             the mount paths of its volumes (emptyDirs), space-separated
  CHART_DROP_CAPABILITIES    the capabilities dropped
  CHART_NO_NEW_PRIVILEGES    true when allowPrivilegeEscalation is false
  CHART_NODE_ID_FROM         where HERALD_NODE_ID comes from (metadata.name)

With --env-file FILE, also writes the environment the ConfigMap and the Secret give the
container (envFrom), one KEY=VALUE a line, as `podman run --env-file` reads it.
"""
import argparse
import importlib.util
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_check_chart():
    spec = importlib.util.spec_from_file_location("check_chart", ROOT / "scripts" / "check-chart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_value(values, dotted, value):
    keys = dotted.split(".")
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    # Helm's --set turns digits into numbers; the schema wants service.port as one.
    values[keys[-1]] = int(value) if value.isdigit() and keys[0] not in ("config", "secret") else value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", help="write the ConfigMap's and the Secret's environment here")
    parser.add_argument("values", nargs="*", metavar="PATH=VALUE")
    args = parser.parse_args()
    values = {}
    for item in args.values:
        path, _, value = item.partition("=")
        set_value(values, path, value)

    kinds = {document["kind"]: document for _, document in load_check_chart().render(values)}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container.get("securityContext", {})
    env_from = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env_from.update(kinds["ConfigMap"]["data"])
        elif "secretRef" in source and "Secret" in kinds:
            env_from.update(kinds["Secret"].get("stringData", {}))
    node_id = [env for env in container.get("env", []) if env["name"] == "HERALD_NODE_ID"]
    facts = {
        "CHART_USER": pod["securityContext"]["runAsUser"],
        "CHART_GROUP": pod["securityContext"]["runAsGroup"],
        "CHART_ARGS": " ".join(container.get("args", [])),
        "CHART_PORT": container["ports"][0]["containerPort"],
        "CHART_GRACE": pod["terminationGracePeriodSeconds"],
        "CHART_READ_ONLY_ROOT": str(bool(security.get("readOnlyRootFilesystem"))).lower(),
        "CHART_WRITABLE": " ".join(mount["mountPath"] for mount in container.get("volumeMounts", [])),
        "CHART_DROP_CAPABILITIES": " ".join(security.get("capabilities", {}).get("drop", [])),
        "CHART_NO_NEW_PRIVILEGES": str(security.get("allowPrivilegeEscalation") is False).lower(),
        "CHART_NODE_ID_FROM": node_id[0]["valueFrom"]["fieldRef"]["fieldPath"] if node_id else "",
    }
    for key, value in facts.items():
        print("%s=%s" % (key, shlex.quote(str(value))))
    if args.env_file:
        with open(args.env_file, "w") as out:
            for key, value in sorted(env_from.items()):
                if "\n" in str(value):
                    sys.exit("image-chart: %s has a line break, which an env file cannot carry" % key)
                out.write("%s=%s\n" % (key, value))


if __name__ == "__main__":
    main()
