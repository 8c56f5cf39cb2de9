"""The deployment files: docker-compose.yml (validated by `docker-compose config`, no engine
needed), Dockerfiles, Prometheus and Grafana provisioning, Kubernetes + KEDA manifests. Every
metric they query must be one rerankq exports; every command line must be one rerankq accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

import rerankq.gateway.metrics
import rerankq.worker.metrics  # noqa: F401  (registers the workers' metrics)
from rerankq.cli.exporter import FleetCollector
from rerankq.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"RERANKQ_API_KEYS": "key", "FLOWER_PASSWORD": "flower", "GRAFANA_PASSWORD": "grafana"}
METRIC = re.compile(r"\brerankq_[a-z_]+")
SUFFIXES = re.compile(r"_(bucket|sum|count|total|created)$")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make setup installs it)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    done = compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_compose_stack_validates_and_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "redis",
        "redis-cache",
        "gateway",
        "worker-gpu",
        "worker-cpu",
        "exporter",
        "flower",
        "prometheus",
        "grafana",
    }
    assert set(services) == expected
    assert all("healthcheck" in service for service in services.values())
    broker = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in broker and "noeviction" in broker
    assert "allkeys-lru" in " ".join(services["redis-cache"]["command"])
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("worker-cpu", "worker-gpu"):  # `--scale worker-cpu=4`: no fixed name, no host port
        assert "container_name" not in services[name] and "ports" not in services[name]
    assert services["flower"]["environment"]["RERANKQ_FLOWER_BASIC_AUTH"] == "admin:flower"
    for service in services.values():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(("/", ".")):
                assert Path(source if source.startswith("/") else ROOT / source).exists(), source


def test_compose_publishes_nothing_open(compose: dict[str, Any]) -> None:
    """No Redis reachable from the network; every published port either asks for credentials
    (gateway keys, Flower basic auth, Grafana password) or listens on the host's loopback only."""
    authenticated = {"gateway", "flower", "grafana"}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published = port if isinstance(port, dict) else {"published": port}
            loopback = published.get("host_ip") == "127.0.0.1" or str(port).startswith("127.0.0.1:")
            assert name in authenticated or loopback, (name, port)
    assert not compose["services"]["redis"].get("ports") and not compose["services"]["redis-cache"].get("ports")


def test_compose_refuses_to_start_without_its_secrets() -> None:
    done = compose_config({})
    assert done.returncode != 0 and "RERANKQ_API_KEYS" in done.stderr


def test_dockerfiles_install_the_built_wheel_with_known_extras() -> None:
    """Images install the wheel the way users do (an editable install hides a wheel that lacks a
    subpackage or a manifest), with extras that exist."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    wanted = {"Dockerfile.gateway": {"gateway", "flower"}, "Dockerfile.worker": {"worker", "onnx"}}
    for dockerfile in (ROOT / "ops" / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text()
        assert "pip install -e" not in text and "COPY rerankq ./rerankq" in text
        assert "pip wheel --no-deps" in text, f"{dockerfile.name} does not build the wheel"
        installed = re.findall(r'pip install "\$\(echo /dist/rerankq-\*\.whl\)\[([a-z,]+)\]"', text)
        assert len(installed) == 1, f"{dockerfile.name} does not install the built wheel"
        assert set(installed[0].split(",")) == wanted[dockerfile.name] and wanted[dockerfile.name] <= extras


@pytest.fixture(scope="module")
def exported(redis_server: Any) -> set[str]:
    """Every metric name rerankq exports: workers, gateway, exporter."""
    names = {family.name for family in REGISTRY.collect()}
    collector = FleetCollector(Settings(redis_url=redis_server.url))
    names |= {family.name for family in collector.collect()}
    return {SUFFIXES.sub("", name) for name in names if name.startswith("rerankq_")}


def referenced(text: str) -> set[str]:
    return {SUFFIXES.sub("", name) for name in METRIC.findall(text)}


def test_dashboard_and_alerts_query_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana" / "dashboards" / "rerankq.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    alerts = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    used = referenced(" ".join(exprs))
    assert used - exported == set()
    wanted = {"rerankq_jobs", "rerankq_job_seconds", "rerankq_queue_depth", "rerankq_cache_lookups"}
    assert wanted | {"rerankq_oom_splits", "rerankq_batch_pairs", "rerankq_top_score"} <= used
    datasource = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}


def test_prometheus_scrapes_every_rerankq_process(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        f"{name}:{sd.get('port', '')}"
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    } | {target for job in config["scrape_configs"] for sc in job.get("static_configs", []) for target in sc["targets"]}
    assert {"gateway:8080", "exporter:9808", "worker-gpu:9100", "worker-cpu:9100"} <= targets
    assert "--metrics-port" in compose["services"]["worker-cpu"]["command"]


def k8s_documents() -> list[dict[str, Any]]:
    folder = ROOT / "ops" / "k8s"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"])
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((folder / name).read_text())]


def test_kubernetes_manifests_hold_together() -> None:
    documents = k8s_documents()
    deployments = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Deployment"}
    assert set(deployments) == {"rerankq-gateway", "rerankq-worker-gpu", "rerankq-worker-cpu", "rerankq-exporter"}
    for deployment in deployments.values():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    limit = Settings().job_time_limit_s
    for name in ("rerankq-worker-gpu", "rerankq-worker-cpu"):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > limit  # warm shutdown finishes every running job
    gpu = deployments["rerankq-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    scaled = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    assert {doc["spec"]["scaleTargetRef"]["name"] for doc in scaled} == {"rerankq-worker-gpu", "rerankq-worker-cpu"}
    for doc in scaled:
        assert "rerankq_queue_depth" in doc["spec"]["triggers"][0]["metadata"]["query"]


def test_keda_scaled_objects_follow_kedas_own_schema() -> None:
    """Against the ScaledObject CRD's schema from KEDA's repository (tests/fixtures): a typo or a
    wrong type is caught here, not by the cluster."""
    schema = json.loads((ROOT / "tests" / "fixtures" / "keda-scaledobject-v1alpha1.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    scaled = [doc for doc in k8s_documents() if doc["kind"] == "ScaledObject"]
    assert scaled and all(not list(validator.iter_errors(doc)) for doc in scaled)
    broken = json.loads(json.dumps(scaled[0]))
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 32  # KEDA wants strings
    broken["spec"]["minReplicaCount"] = "one"
    assert len(list(validator.iter_errors(broken))) == 2


def test_kubernetes_pods_are_scraped_by_the_shipped_config() -> None:
    """ops/prometheus/prometheus-k8s.yml keeps pods annotated prometheus.io/scrape and reads their
    port and path annotations; every Deployment's pods carry all three."""
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus-k8s.yml").read_text())
    relabels = config["scrape_configs"][0]["relabel_configs"]
    sources = {label for rule in relabels for label in rule["source_labels"]}
    annotations = {"scrape", "port", "path"}
    assert {f"__meta_kubernetes_pod_annotation_prometheus_io_{name}" for name in annotations} <= sources
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["metadata"]["annotations"]
            assert {f"prometheus.io/{name}" for name in annotations} <= set(pod), doc["metadata"]["name"]


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_promtool_accepts_the_rules_and_the_compose_config(config: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup installs it with apt)")
    alerts = ROOT / "ops" / "prometheus" / "alerts.yml"
    checked = subprocess.run([promtool, "check", "rules", str(alerts)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, checked.stdout + checked.stderr
    if config == "prometheus-k8s.yml":
        pytest.skip("Debian's promtool is built without Kubernetes service discovery; checked structurally above")
    text = (ROOT / "ops" / "prometheus" / config).read_text().replace("/etc/prometheus/alerts.yml", str(alerts))
    (tmp_path / config).write_text(text)
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_dashboard_panel_has_one_unit() -> None:
    """A panel plots one kind of quantity in its declared unit: seconds beside tokens, or requests
    per second drawn as seconds, mislead at a glance."""
    dashboard = json.loads((ROOT / "ops" / "grafana" / "dashboards" / "rerankq.json").read_text())
    units = {"seconds": {"s"}, "per second": {"reqps", "short"}, "count": {"short"}, "ratio": {"percentunit", "none"}}
    units |= {"percent": {"percent"}, "flag": {"none"}}
    for panel in dashboard["panels"]:
        kinds = {quantity(target["expr"]) for target in panel["targets"]}
        assert len(kinds) == 1, (panel["title"], kinds)
        assert panel["fieldConfig"]["defaults"]["unit"] in units[kinds.pop()], panel["title"]


def quantity(expr: str) -> str:
    """What an expression of the dashboard measures, from its shape."""
    if "_seconds_bucket" in expr:
        return "seconds"
    if "alias_share" in expr:
        return "percent"
    if "redis_up" in expr:
        return "flag"
    if ") / sum(" in expr:
        return "ratio"
    return "per second" if "rate(" in expr and "_bucket" not in expr else "count"


def test_every_command_line_in_the_deployment_files_is_one_rerankq_accepts(compose: dict[str, Any]) -> None:
    commands = [service["command"] for name, service in compose["services"].items() if "build" in service]
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            commands += [container["args"] for container in doc["spec"]["template"]["spec"]["containers"]]
    helps: dict[str, str] = {}
    for command in commands:
        name = command[0]
        if name not in helps:
            done = subprocess.run(
                [sys.executable, "-m", "rerankq", name, "--help"], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            helps[name] = done.stdout
        for option in (arg for arg in command[1:] if arg.startswith("--")):
            assert option in helps[name], f"rerankq {name} has no {option}"
    assert set(helps) == {"gateway", "worker", "exporter", "flower"}


def test_the_exporter_reads_redis_down_as_a_metric() -> None:
    collector = FleetCollector(Settings(redis_url="redis://127.0.0.1:1/0"))
    families = {family.name: family for family in collector.collect()}
    assert families["rerankq_redis_up"].samples[0].value == 0
    assert "rerankq_queue_depth" not in families
