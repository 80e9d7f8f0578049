"""deploy/: the compose file, the Kubernetes manifests and the image, checked against the code.

Each file is validated against its format's schema, offline: the compose file against the
Compose Specification's schema as check-jsonschema bundles it (this machine has the docker CLI
but no compose plugin), the manifests against Kubernetes' schemas as kubernetes-validate bundles
them. Then `compose_problems` and `k8s_problems` cross-check them with what exists: a container
per service in SERVICES running it, FEDSAGA_* variables that are Settings fields, files that
exist, one metrics port, one image. The mutation tests show each check can fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas

from services.runtime.main import SERVICES
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMAGE = f"fedsaga:{PROJECT['version']}"
SETTINGS_ENV = {f"FEDSAGA_{name.upper()}" for name in Settings.model_fields}
# Applied by hand once, with real values (deploy/README.md); never by `kubectl apply -k`.
SECRET_FILE = "secret.yaml"

Doc = dict[str, Any]


def service_command(name: str) -> list[str]:
    """How the image runs one service."""
    return ["python", "-m", f"services.{name}"]


def k8s_name(service: str) -> str:
    """A service's name where Kubernetes allows no underscore."""
    return service.replace("_", "-")


def load_compose() -> Doc:
    """deploy/compose.yaml, merge keys resolved."""
    doc: Doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def load_k8s() -> dict[str, list[Doc]]:
    """Every manifest in deploy/k8s by file name, kustomization.yaml included."""
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(K8S.glob("*.yaml"))}


def fedsaga_env(env: dict[str, str]) -> set[str]:
    """The FEDSAGA_* names among environment variables."""
    return {key for key in env if key.startswith("FEDSAGA_")}


def metrics_port_of(probe: list[str]) -> int | None:
    """The port of the /metrics URL a compose healthcheck fetches, if it fetches one."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", " ".join(probe))
    return int(match.group(1)) if match else None


def compose_problems(doc: Doc) -> list[str]:
    """What in a compose document disagrees with the services, settings and files that exist."""
    problems: list[str] = []
    services: dict[str, Doc] = doc["services"]
    for name in SERVICES:
        if name not in services:
            problems.append(f"no compose service {name}")
        elif services[name].get("command") != service_command(name):
            problems.append(f"{name} does not run {service_command(name)}")
    if services.get("fleet", {}).get("command", [])[:3] != ["python", "-m", "edge_client"]:
        problems.append("no fleet running python -m edge_client")
    for name, service in services.items():
        problems += compose_service_problems(name, service, services)
    return problems


def compose_service_problems(name: str, service: Doc, services: dict[str, Doc]) -> list[str]:
    """What is wrong with one compose service: health, settings, image, files."""
    problems: list[str] = []
    test = service.get("healthcheck", {}).get("test")
    if not test:
        problems.append(f"{name} has no healthcheck")
    for needed, condition in service.get("depends_on", {}).items():
        if condition.get("condition") != "service_healthy":
            problems.append(f"{name} starts before {needed} is healthy")
        if "healthcheck" not in services.get(needed, {}):
            problems.append(f"{name} waits on {needed}, which has no healthcheck")
    env = service.get("environment", {})
    problems += [f"{name}: {var} is no Settings field" for var in fedsaga_env(env) - SETTINGS_ENV]
    if name in SERVICES and test:
        port = metrics_port_of(test)
        if port is None or str(port) != env.get("FEDSAGA_METRICS_PORT"):
            problems.append(f"{name} probes port {port}, not FEDSAGA_METRICS_PORT")
    if service.get("image", "").startswith("fedsaga") and service["image"] != IMAGE:
        problems.append(f"{name} runs {service['image']}, not {IMAGE}")
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith(".") and not (DEPLOY / source).exists():
            problems.append(f"{name} mounts {source}, which does not exist")
    build = service.get("build")
    if build and not (DEPLOY / build["context"] / build["dockerfile"]).is_file():
        problems.append(f"{name} builds from a Dockerfile that does not exist")
    return problems


@dataclass(frozen=True)
class Shared:
    """What every Deployment refers to: the settings, the Secret's keys, the metrics Service."""

    config: Doc
    secret_keys: set[str]
    metrics: Doc

    @property
    def port(self) -> int:
        """FEDSAGA_METRICS_PORT, as the ConfigMap sets it."""
        return int(self.config["data"]["FEDSAGA_METRICS_PORT"])


def k8s_problems(files: dict[str, list[Doc]]) -> list[str]:
    """What in the manifests disagrees with the services, settings, Secret and each other."""
    docs = [doc for name, file in files.items() if name != "kustomization.yaml" for doc in file]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    (metrics,) = [d for d in docs if d["kind"] == "Service"]
    shared = Shared(config, set(secret["stringData"]), metrics)
    problems = [
        f"ConfigMap: {var} is no Settings field" for var in set(config["data"]) - SETTINGS_ENV
    ]
    if metrics["spec"]["ports"][0]["port"] != shared.port:
        problems.append("the metrics Service's port is not FEDSAGA_METRICS_PORT")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for service in SERVICES:
        deployment = deployments.get(f"fedsaga-{k8s_name(service)}")
        if deployment is None:
            problems.append(f"no Deployment for {service}")
        else:
            problems += deployment_problems(service, deployment, shared)
    return problems


def deployment_problems(service: str, deployment: Doc, shared: Shared) -> list[str]:
    """What is wrong with one service's Deployment: command, settings, probes, files."""
    problems: list[str] = []
    spec, pod = deployment["spec"], deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    if container["command"] != service_command(service):
        problems.append(f"{service}'s Deployment does not run {service_command(service)}")
    if spec["replicas"] != 1 or spec["strategy"]["type"] != "Recreate":
        problems.append(f"{service} may run two pods under one client id")
    if container["image"] != IMAGE:
        problems.append(f"{service} runs {container['image']}, not {IMAGE}")
    if container["envFrom"] != [{"configMapRef": {"name": shared.config["metadata"]["name"]}}]:
        problems.append(f"{service} does not read the ConfigMap")
    if container["resources"].get("requests") is None:
        problems.append(f"{service} requests no resources")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    problems += [f"{service}: {var} is no Settings field" for var in set(env) - SETTINGS_ENV]
    problems += [
        f"{service}: no Secret key {key}" for key in set(env.values()) - shared.secret_keys
    ]
    if env.get("FEDSAGA_MQTT_PASSWORD") != f"mqtt-password-{service}":
        problems.append(f"{service} does not log in with its own password")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        if probe["path"] != "/metrics" or ports.get(probe["port"], probe["port"]) != shared.port:
            problems.append(f"{service}'s {kind} is not GET /metrics on {shared.port}")
    if ports.get(shared.metrics["spec"]["ports"][0]["targetPort"]) != shared.port:
        problems.append(f"the metrics Service does not reach {service}'s metrics port")
    if pod["metadata"]["annotations"]["prometheus.io/port"] != str(shared.port):
        problems.append(f"{service}'s scrape annotation names another port")
    if not shared.metrics["spec"]["selector"].items() <= pod["metadata"]["labels"].items():
        problems.append(f"the metrics Service does not select {service}'s pods")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files = set()
    for volume in pod["spec"]["volumes"]:
        for item in volume.get("secret", {}).get("items", []):
            if item["key"] not in shared.secret_keys:
                problems.append(f"{service} mounts Secret key {item['key']}, not there")
            files.add(f"{mounts[volume['name']]}/{item['path']}")
    if shared.config["data"]["FEDSAGA_MQTT_CA_FILE"] not in files:
        problems.append(f"{service} has no file at FEDSAGA_MQTT_CA_FILE")
    return problems


def test_compose_is_valid_compose_spec() -> None:
    """The compose file validates against the Compose Specification's schema."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_agrees_with_the_code() -> None:
    """Every service runs, healthy-gated, with real settings, real files and one image."""
    assert compose_problems(load_compose()) == []


@pytest.mark.parametrize("service", SERVICES)
def test_compose_without_a_service_is_caught(service: str) -> None:
    """Removing any one service from the compose file is reported."""
    doc = load_compose()
    del doc["services"][service]
    assert f"no compose service {service}" in compose_problems(doc)


def test_compose_mistakes_are_caught() -> None:
    """A made-up setting, a port mismatch, an unhealthy dependency and a missing file."""
    doc = load_compose()
    doc["services"]["aggregator"]["environment"] = {
        **doc["services"]["aggregator"]["environment"],
        "FEDSAGA_NO_SUCH": "1",
        "FEDSAGA_METRICS_PORT": "9500",
    }
    doc["services"]["selector"]["depends_on"] = {"redis": {"condition": "service_started"}}
    doc["services"]["redis"]["volumes"] = ["./no-such.conf:/etc/redis.conf:ro"]
    problems = compose_problems(doc)
    assert "aggregator: FEDSAGA_NO_SUCH is no Settings field" in problems
    assert "aggregator probes port 9400, not FEDSAGA_METRICS_PORT" in problems
    assert "selector starts before redis is healthy" in problems
    assert "redis mounts ./no-such.conf, which does not exist" in problems


def test_compose_servers_use_the_configs_and_ports_the_services_are_given() -> None:
    """The broker and Redis listen where FEDSAGA_MQTT_PORT and FEDSAGA_REDIS_URL point."""
    services = load_compose()["services"]
    env = services["aggregator"]["environment"]
    conf = (ROOT / "mosquitto" / "compose.conf").read_text()
    assert f"listener {env['FEDSAGA_MQTT_PORT']} 0.0.0.0" in conf.splitlines()
    assert env["FEDSAGA_MQTT_HOST"] == "mosquitto"
    assert (
        "../mosquitto/compose.conf:/mosquitto/config/mosquitto.conf:ro"
        in services["mosquitto"]["volumes"]
    )
    (data,) = [v for v in services["mosquitto"]["volumes"] if v.startswith("mosquitto-data:")]
    assert f"persistence_location {data.split(':')[1]}/" in conf
    probe = services["mosquitto"]["healthcheck"]["test"]
    assert probe[1] == "mosquitto_sub"
    assert "$$SYS/broker/version" in probe
    assert probe[probe.index("-p") + 1] == env["FEDSAGA_MQTT_PORT"]
    command = services["redis"]["command"]
    assert env["FEDSAGA_REDIS_URL"] == f"redis://redis:{command[command.index('--port') + 1]}/0"
    assert "redis-cli ping" in services["redis"]["healthcheck"]["test"][1]
    assert "appendonly yes" in (DEPLOY / "redis.conf").read_text()


def test_manifests_are_valid_kubernetes() -> None:
    """Every manifest validates, strictly (no unknown field), against Kubernetes' schemas."""
    version = k8s_schemas.latest_version()
    docs = [
        (name, doc)
        for name, file in load_k8s().items()
        if name != "kustomization.yaml"
        for doc in file
    ]
    assert len(docs) >= len(SERVICES) + 3
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc}")


def test_manifests_agree_with_the_code() -> None:
    """A Deployment per service, real settings and Secret keys, one metrics port, one image."""
    assert k8s_problems(load_k8s()) == []


def test_manifest_mistakes_are_caught() -> None:
    """A missing Deployment, a wrong command, a probe elsewhere, a made-up setting."""
    files = load_k8s()
    del files["validator.yaml"]
    (aggregator,) = files["aggregator.yaml"]
    container = aggregator["spec"]["template"]["spec"]["containers"][0]
    container["command"] = service_command("selector")
    container["livenessProbe"]["httpGet"]["port"] = 9500
    (config,) = files["configmap.yaml"]
    config["data"]["FEDSAGA_METRIC_PORT"] = "9400"
    problems = k8s_problems(files)
    assert "no Deployment for validator" in problems
    assert (
        "aggregator's Deployment does not run ['python', '-m', 'services.aggregator']" in problems
    )
    assert "aggregator's livenessProbe is not GET /metrics on 9400" in problems
    assert "ConfigMap: FEDSAGA_METRIC_PORT is no Settings field" in problems


def test_kustomization_applies_every_manifest_but_the_secret() -> None:
    """`kubectl apply -k deploy/k8s` applies every manifest, and never the placeholder Secret."""
    files = load_k8s()
    (kustomization,) = files.pop("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(set(files) - {SECRET_FILE})
    (secret,) = files[SECRET_FILE]
    (namespace,) = files["namespace.yaml"]
    assert (
        kustomization["namespace"]
        == secret["metadata"]["namespace"]
        == namespace["metadata"]["name"]
    )
    name, tag = IMAGE.split(":")
    assert [(i["name"], i["newTag"]) for i in kustomization["images"]] == [(name, tag)]


def test_one_metrics_port_everywhere() -> None:
    """Compose's FEDSAGA_METRICS_PORT is the ConfigMap's (the probes follow each)."""
    (config,) = load_k8s()["configmap.yaml"]
    compose_env = load_compose()["services"]["aggregator"]["environment"]
    assert compose_env["FEDSAGA_METRICS_PORT"] == config["data"]["FEDSAGA_METRICS_PORT"]


def test_image_holds_every_package() -> None:
    """The Dockerfile copies every package pyproject installs, and .dockerignore keeps them."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if any(Path(p.parent.name).match(pattern) for pattern in includes)
    }
    assert packages >= {"schemas", "services", "edge_client", "fedsaga", "federated"}
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.MULTILINE))
    assert copied == packages
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not packages & set(ignored)
    assert dockerfile.count("FROM python:3.11-slim") == 2
    assert "[dev]" not in dockerfile
    assert f"-t {IMAGE}" in dockerfile
