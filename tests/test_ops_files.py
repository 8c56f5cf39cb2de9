"""The deployment files: docker-compose.yml (validated by `docker-compose config`, no engine
needed), Dockerfiles, Prometheus and Grafana provisioning, Kubernetes + KEDA manifests. Every
metric they query must be one rerankq exports; every command line must be one rerankq accepts."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
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
from rerankq.core.constants import queue_name
from rerankq.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"RERANKQ_API_KEYS": "key", "FLOWER_PASSWORD": "flower", "GRAFANA_PASSWORD": "grafana"}
METRIC = re.compile(r"\brerankq_[a-z_]+")
SUFFIXES = re.compile(r"_(bucket|sum|count|total|created)$")


RABBITMQ_FILES = ("docker-compose.yml", "docker-compose.rabbitmq.yml")


def compose_config(
    env: dict[str, str], files: tuple[str, ...] = ("docker-compose.yml",), profile: str | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make setup installs it)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    options = [arg for name in files for arg in ("-f", str(ROOT / name))] + (["--profile", profile] if profile else [])
    return subprocess.run(
        ["docker-compose", *options, "config"],
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


@pytest.fixture(scope="module")
def compose_rabbitmq() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.rabbitmq.yml and the `rabbitmq` profile: jobs on RabbitMQ."""
    done = compose_config(SECRETS, RABBITMQ_FILES, "rabbitmq")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_compose_stack_validates_and_has_every_service(compose: dict[str, Any]) -> None:
    # docker-compose 1.x's `config` lists services of every profile, 2.x only the active ones
    services = {name: service for name, service in compose["services"].items() if not service.get("profiles")}
    profiled = {name: service["profiles"] for name, service in compose["services"].items() if service.get("profiles")}
    assert profiled in ({"rabbitmq": ["rabbitmq"], "jaeger": ["tracing"]}, {})
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


def assert_nothing_published_open(config: dict[str, Any]) -> None:
    authenticated = {"gateway", "flower", "grafana"}
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            published = port if isinstance(port, dict) else {"published": port}
            loopback = published.get("host_ip") == "127.0.0.1" or str(port).startswith("127.0.0.1:")
            assert name in authenticated or loopback, (name, port)
    for backend in ("redis", "redis-cache", "rabbitmq"):
        assert not config["services"].get(backend, {}).get("ports"), backend


def test_compose_publishes_nothing_open(compose: dict[str, Any]) -> None:
    """No Redis (or RabbitMQ) reachable from the network; every published port either asks for
    credentials (gateway keys, Flower basic auth, Grafana password) or listens on the host's
    loopback only."""
    assert_nothing_published_open(compose)


def test_compose_refuses_to_start_without_its_secrets() -> None:
    done = compose_config({})
    assert done.returncode != 0 and "RERANKQ_API_KEYS" in done.stderr


def test_the_rabbitmq_profile_validates_and_adds_only_rabbitmq() -> None:
    """`docker compose --profile rabbitmq` on docker-compose.yml alone: the default stack plus a
    RabbitMQ that keeps its data (named volume, fixed node name) and says when it is up."""
    done = compose_config(SECRETS, profile="rabbitmq")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    rabbitmq = config["services"]["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:3\.\d+\.\d+-management-alpine", rabbitmq["image"])  # pinned
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert rabbitmq["hostname"] == "rabbitmq"  # its data lives under rabbit@<hostname>
    (data,) = (volume for volume in rabbitmq["volumes"] if volume.split(":")[1] == "/var/lib/rabbitmq")
    assert data.split(":")[0] in config["volumes"]
    assert_nothing_published_open(config)


def test_compose_on_rabbitmq_points_every_rerankq_service_at_it(
    compose: dict[str, Any], compose_rabbitmq: dict[str, Any]
) -> None:
    """With docker-compose.rabbitmq.yml every rerankq process (they all send, take or count jobs)
    waits for a healthy RabbitMQ and gets the broker password; commands and Redis stay as they were."""
    services = compose_rabbitmq["services"]
    rerankq = {name for name, service in services.items() if "build" in service}
    assert rerankq == {"gateway", "worker-gpu", "worker-cpu", "exporter", "flower"}
    for name in rerankq:
        service, before = services[name], compose["services"][name]
        assert service["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}, name
        assert service["depends_on"].items() >= before["depends_on"].items(), name
        assert [secret["source"] for secret in service["secrets"]] == ["rabbitmq-password"], name
        assert service["command"] == before["command"] and service["environment"] == before["environment"], name
    assert_nothing_published_open(compose_rabbitmq)


def test_compose_takes_rabbitmq_credentials_only_from_secret_files(compose_rabbitmq: dict[str, Any]) -> None:
    """No password in an environment value (`docker inspect` shows those): RabbitMQ's user and
    rerankq's broker URL both come from secrets/rabbitmq-password, a file git never commits."""
    for name, service in compose_rabbitmq["services"].items():
        environment = service.get("environment") or {}
        assert not any(key.startswith("RABBITMQ_") for key in environment), name
        assert "RERANKQ_BROKER_URL" not in environment, name
        assert not any("amqp" in str(value) for value in environment.values()), name
    assert "environment" not in compose_rabbitmq["services"]["rabbitmq"]
    secret = compose_rabbitmq["secrets"]["rabbitmq-password"]
    assert set(secret) == {"file"} and Path(secret["file"]) == ROOT / "secrets" / "rabbitmq-password"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", secret["file"]], cwd=ROOT, timeout=30)
        assert ignored.returncode == 0, "secrets/rabbitmq-password is not git-ignored"
    assert "rabbitmq-password" in (ROOT / "secrets" / "README.md").read_text()


def run_entrypoint(
    service: dict[str, Any], secrets: Path, bin_dir: Path, conf_d: Path
) -> subprocess.CompletedProcess[str]:
    """A service's `sh -c` entrypoint as the container runs it (with its command as arguments),
    reading secrets from ``secrets`` and writing RabbitMQ's conf.d into ``conf_d``; the programs it
    execs are stand-ins in ``bin_dir`` that write what they got to $OUT."""
    shell, flag, script, *name = service["entrypoint"]
    script = script.replace("$$", "$").replace("/run/secrets/", f"{secrets}/")
    script = script.replace("/etc/rabbitmq/conf.d/", f"{conf_d}/")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(bin_dir / "out")}
    argv = [shell, flag, script, *name, *(service.get("command") or [])]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


def test_the_compose_entrypoints_agree_on_rabbitmqs_user_and_rerankqs_broker_url(
    compose_rabbitmq: dict[str, Any], tmp_path: Path
) -> None:
    """Run for real: RabbitMQ's entrypoint writes a conf.d file creating user and vhost rerankq with
    the secret's password, then starts the image's own entrypoint; each rerankq service's builds an
    amqp:// URL for that user, vhost and password that rerankq's settings accept, then runs rerankq
    with its command. Without the secret, neither starts anything."""
    secrets, bin_dir, conf_d = tmp_path / "secrets", tmp_path / "bin", tmp_path / "conf.d"
    for folder in (secrets, bin_dir, conf_d):
        folder.mkdir()
    for program in ("rerankq", "docker-entrypoint.sh"):
        stand_in = bin_dir / program
        stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$RERANKQ_BROKER_URL" "$0" "$@" > "$OUT"\n')
        stand_in.chmod(0o755)
    password = "0123456789abcdef" * 4  # `openssl rand -hex 32`, as secrets/README.md says
    (secrets / "rabbitmq-password").write_text(password + "\n")
    services = compose_rabbitmq["services"]

    done = run_entrypoint(services["rabbitmq"], secrets, bin_dir, conf_d)
    assert done.returncode == 0, done.stderr
    assert (bin_dir / "out").read_text().splitlines()[1:] == [str(bin_dir / "docker-entrypoint.sh"), "rabbitmq-server"]
    (conf,) = conf_d.glob("*.conf")
    assert conf.name > "10-defaults.conf"  # read after the image's own defaults
    settings = dict(line.split(" = ", 1) for line in conf.read_text().splitlines())
    assert settings == {"default_user": "rerankq", "default_pass": password, "default_vhost": "rerankq"}

    for name in ("gateway", "worker-gpu", "worker-cpu", "exporter", "flower"):
        done = run_entrypoint(services[name], secrets, bin_dir, conf_d)
        assert done.returncode == 0, (name, done.stderr)
        url, program, *args = (bin_dir / "out").read_text().splitlines()
        assert Path(program).name == "rerankq" and args == services[name]["command"], name
        assert url == f"amqp://rerankq:{password}@rabbitmq:5672/rerankq", name
        assert Settings(broker_url=url).on_rabbitmq

    (bin_dir / "out").unlink()
    for content in (None, ""):
        secret = secrets / "rabbitmq-password"
        secret.unlink(missing_ok=True)
        if content is not None:
            secret.write_text(content)
        for name in ("rabbitmq", "gateway"):
            done = run_entrypoint(services[name], secrets, bin_dir, conf_d)
            assert done.returncode != 0 and not (bin_dir / "out").exists(), (name, content)


def test_the_tracing_profile_adds_a_trace_backend_that_grafana_and_exemplars_lead_to(compose: dict[str, Any]) -> None:
    """`--profile tracing`: Jaeger takes OTLP from every rerankq service (given the endpoint), Prometheus
    keeps exemplars, and Grafana's Prometheus data source sends an exemplar's trace id to Jaeger."""
    done = compose_config(SECRETS | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, profile="tracing")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    jaeger = config["services"]["jaeger"]
    assert jaeger["profiles"] == ["tracing"] and re.fullmatch(
        r"jaegertracing/all-in-one:\d+\.\d+\.\d+", jaeger["image"]
    )
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in ("gateway", "worker-cpu", "worker-gpu", "exporter"):
        assert config["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
    for name in ("gateway", "worker-cpu"):  # unset: off (rerankq.core.tracing_setup reads empty as none)
        assert compose["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] in ("", None), name
    assert "--enable-feature=exemplar-storage" in config["services"]["prometheus"]["command"]
    sources = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    by_uid = {source["uid"]: source for source in sources}
    assert by_uid["jaeger"]["type"] == "jaeger" and by_uid["jaeger"]["url"] == "http://jaeger:16686"
    (destination,) = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": "jaeger"}  # the label rerankq's exemplars carry
    assert_nothing_published_open(config)


def test_dockerfiles_install_the_built_wheel_with_known_extras() -> None:
    """Images install the wheel the way users do (an editable install hides a wheel that lacks a
    subpackage or a manifest), with extras that exist."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    wanted = {
        "Dockerfile.gateway": {"gateway", "flower", "otel"},
        "Dockerfile.worker": {"worker", "onnx", "otel"},
        "Dockerfile.serve": {"worker", "gateway", "onnx", "otel"},
    }
    assert {path.name for path in (ROOT / "ops" / "docker").glob("Dockerfile.*")} == set(wanted)
    for dockerfile in (ROOT / "ops" / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text()
        assert "pip install -e" not in text and "COPY rerankq ./rerankq" in text
        assert "pip wheel --no-deps" in text, f"{dockerfile.name} does not build the wheel"
        installed = re.findall(r'pip install "\$\(echo /dist/rerankq-\*\.whl\)\[([a-z,]+)\]"', text)
        assert len(installed) == 1, f"{dockerfile.name} does not install the built wheel"
        assert set(installed[0].split(",")) == wanted[dockerfile.name] and wanted[dockerfile.name] <= extras


RUNS_AS = 10001  # the images' user rerankq (uid and gid), as ops/k8s's securityContext names it
DOCKERFILES = sorted(path.name for path in (ROOT / "ops" / "docker").glob("Dockerfile.*"))


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile's last stage (the image that runs), as (INSTRUCTION,
    arguments) with continuation lines joined and comments left out."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = [line.strip().split(None, 1) for line in joined.splitlines() if line.strip()]
    last_from = max(index for index, (name, *_) in enumerate(instructions) if name.upper() == "FROM")
    return [(name.upper(), rest[0] if rest else "") for name, *rest in instructions[last_from:]]


def shell_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """The commands of a stage's RUN lines, split on `&&`, each as its words."""
    return [shlex.split(part) for name, args in stage if name == "RUN" for part in args.split("&&") if part.strip()]


def option(argv: list[str], *names: str) -> str:
    (index,) = (index for index, word in enumerate(argv) if word in names)
    return argv[index + 1]


def created_user(stage: list[tuple[str, str]]) -> tuple[str, int, int]:
    """The user a stage creates with groupadd and useradd: (name, uid, gid)."""
    (useradd,) = (argv for argv in shell_commands(stage) if argv[0] in {"useradd", "adduser"})
    (groupadd,) = (argv for argv in shell_commands(stage) if argv[0] in {"groupadd", "addgroup"})
    gid = int(option(groupadd, "--gid", "-g"))
    assert option(useradd, "--gid", "-g") in {str(gid), groupadd[-1]}, "the user's group is the one created"
    return useradd[-1], int(option(useradd, "--uid", "-u")), gid


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_image_runs_as_a_user_it_creates_not_root(name: str) -> None:
    """The last USER before ENTRYPOINT (and none after it) is a user the same Dockerfile creates:
    rerankq, uid and gid 10001 (what ops/k8s's runAsUser says), given by number so Kubernetes'
    runAsNonRoot can check it. Every folder its ENV points rerankq at exists in the image owned by
    that user, so a named volume mounted there (docker-compose.yml) is writable by it too."""
    stage = final_stage(ROOT / "ops" / "docker" / name)
    names = [instruction for instruction, _ in stage]
    assert "ENTRYPOINT" in names, name
    entrypoint = names.index("ENTRYPOINT")
    users = [args for instruction, args in stage[:entrypoint] if instruction == "USER"]
    assert users and "USER" not in names[entrypoint:], f"{name}: no USER before ENTRYPOINT, or one after it"
    login, uid, gid = created_user(stage[: names.index("USER")])
    assert (login, uid, gid) == ("rerankq", RUNS_AS, RUNS_AS), name
    assert users[-1] in {str(uid), f"{uid}:{gid}"}, f"{name}: USER {users[-1]} is not the user it creates"

    env = " ".join(args for instruction, args in stage if instruction == "ENV")
    folders = set(re.findall(r"\b(?:HF_HOME|RERANKQ_\w+_DIR)=(\S+)", env))
    assert "/models" in folders, name
    owned = {path for argv in shell_commands(stage) if argv[0] == "chown" for path in argv[2:]}
    owners = {argv[1] for argv in shell_commands(stage) if argv[0] == "chown"}
    assert owners == {f"{login}:{login}"} and folders <= owned, f"{name}: {folders - owned} not owned by {login}"


def test_the_all_in_one_image_serves_with_a_private_redis_when_none_is_configured() -> None:
    """Dockerfile.serve's CMD is `rerankq serve`, listening beyond the container's loopback, with
    `--redis auto` and the redis-server that needs installed. The run line its comment gives repeats
    those options (arguments after the image name replace the CMD) and names a model; every option
    of both is one serve accepts."""
    text = (ROOT / "ops" / "docker" / "Dockerfile.serve").read_text()
    stage = final_stage(ROOT / "ops" / "docker" / "Dockerfile.serve")
    (cmd,) = (json.loads(args) for instruction, args in stage if instruction == "CMD")
    (entrypoint,) = (json.loads(args) for instruction, args in stage if instruction == "ENTRYPOINT")
    assert entrypoint == ["rerankq"] and cmd[0] == "serve", cmd
    assert option(cmd, "--redis") == "auto" and option(cmd, "--host") == "0.0.0.0", cmd
    assert any(argv[:2] == ["apt-get", "install"] and "redis-server" in argv for argv in shell_commands(stage))
    exposed = {port for instruction, args in stage if instruction == "EXPOSE" for port in args.split()}
    assert {"8080", "9808"} <= exposed

    assert "docker build -f ops/docker/Dockerfile.serve -t rerankq-serve ." in text
    run = re.search(r"#\s+(docker run .*? rerankq-serve \\\n#\s+serve [^\n]+)", text)
    assert run, "no `docker run ... rerankq-serve serve ...` line"
    argv = shlex.split(re.sub(r"\\\n#\s+", " ", run.group(1)))
    given = argv[argv.index("rerankq-serve") + 1 :]
    assert given[0] == "serve" and "--model" in given, given
    assert all(option(given, name) == option(cmd, name) for name in ("--redis", "--host")), given
    assert option(argv, "-p") == "8080:8080" and option(argv, "-e").startswith("RERANKQ_API_KEYS="), argv
    done = subprocess.run(
        [sys.executable, "-m", "rerankq", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for word in (arg for arg in cmd[1:] + given[1:] if arg.startswith("--")):
        assert word in done.stdout, f"rerankq serve has no {word}"


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
    for name, deployment in deployments.items():  # the images' user, never root; volumes writable by it
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context == {"runAsNonRoot": True, "runAsUser": RUNS_AS, "runAsGroup": RUNS_AS, "fsGroup": RUNS_AS}, name
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


RABBITMQ_COMPONENT = ROOT / "ops" / "k8s" / "rabbitmq"


def rabbitmq_component() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ops/k8s/rabbitmq's kustomization and the resources it adds; every file in it is one of them
    or one of its patches."""
    kustomization = yaml.safe_load((RABBITMQ_COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    listed = set(kustomization["resources"]) | {patch["path"] for patch in kustomization["patches"]}
    assert {path.name for path in RABBITMQ_COMPONENT.glob("*.yaml")} - {"kustomization.yaml"} == listed
    added = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((RABBITMQ_COMPONENT / name).read_text())
    ]
    return kustomization, added


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-patch `add` and `replace` of object members, as kustomize applies them."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        assert operation["op"] in {"add", "replace"}, operation
        *parents, key = operation["path"].strip("/").split("/")
        node = doc
        for part in parents:
            node = node[part]
        assert operation["op"] == "add" or key in node, operation["path"]
        node[key] = operation["value"]
    return doc


def test_the_rabbitmq_variant_gives_every_rerankq_pod_the_broker_url_from_its_secret() -> None:
    """Each Deployment of ops/k8s gets RERANKQ_BROKER_URL from the component's Secret, in the
    container it already has (a patch naming another container would add one), and that Secret
    holds an amqp:// URL rerankq accepts."""
    kustomization, added = rabbitmq_component()
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in added if doc["kind"] == "Secret"}
    base = {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == "Deployment"}
    (path,) = (patch["path"] for patch in kustomization["patches"] if "target" not in patch)
    patches = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((RABBITMQ_COMPONENT / path).read_text())}
    assert set(patches) == set(base)
    for name, patch in patches.items():
        (container,) = patch["spec"]["template"]["spec"]["containers"]
        assert container["name"] == base[name]["spec"]["template"]["spec"]["containers"][0]["name"], name
        (env,) = (var for var in container["env"] if var["name"] == "RERANKQ_BROKER_URL")
        ref = env["valueFrom"]["secretKeyRef"]
        url = secrets[ref["name"]][ref["key"]]
        assert url.startswith("amqp://") and Settings(broker_url=url).on_rabbitmq, name


def test_the_rabbitmq_variant_scales_workers_on_rabbitmqs_own_lane_queue_counts() -> None:
    """The ScaledObjects of ops/k8s/keda.yaml (same names, targets and bounds) with their triggers
    replaced by KEDA's rabbitmq scaler on the lane queues rerankq declares: counted over the
    management API (ready + unacknowledged, as rerankq_queue_depth is waiting + held), through a
    TriggerAuthentication whose Secret key the component holds. Valid by KEDA's own schema."""
    kustomization, added = rabbitmq_component()
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in added if doc["kind"] == "Secret"}
    (auth,) = (doc for doc in added if doc["kind"] == "TriggerAuthentication")
    (host,) = (ref for ref in auth["spec"]["secretTargetRef"] if ref["parameter"] == "host")
    management = secrets[host["name"]][host["key"]]
    assert management.startswith("http://") and ".svc:15672/" in management  # KEDA runs in its own namespace

    model = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")["data"]["RERANKQ_DEFAULT_MODEL"]
    lanes = {"rerankq-worker-gpu": {"interactive", "bulk"}, "rerankq-worker-cpu": {"cpu"}}
    base = {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == "ScaledObject"}
    patched = {}
    for patch in kustomization["patches"]:
        if patch.get("target", {}).get("kind") == "ScaledObject":
            name = patch["target"]["name"]
            patched[name] = json_patch(base[name], yaml.safe_load((RABBITMQ_COMPONENT / patch["path"]).read_text()))
    assert set(patched) == set(lanes) == set(base)
    validator = jsonschema.Draft7Validator(
        json.loads((ROOT / "tests" / "fixtures" / "keda-scaledobject-v1alpha1.schema.json").read_text())
    )
    for name, scaled in patched.items():
        assert not list(validator.iter_errors(scaled)), name
        spec, before = scaled["spec"], base[name]["spec"]
        for key in ("scaleTargetRef", "minReplicaCount", "maxReplicaCount", "cooldownPeriod"):
            assert spec[key] == before[key], (name, key)
        triggers = spec["triggers"]
        assert {trigger["type"] for trigger in triggers} == {"rabbitmq"}, name
        assert {trigger["metadata"]["queueName"] for trigger in triggers} == {
            queue_name(model, lane) for lane in lanes[name]
        }
        for trigger in triggers:
            assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
            assert trigger["metadata"]["protocol"] == "http" and trigger["metadata"]["mode"] == "QueueLength"
        if len(triggers) > 1:  # lanes add up, as the Prometheus query summed them
            formula = spec["advanced"]["scalingModifiers"]["formula"]
            assert set(re.findall(r"[a-z]+", formula)) == {trigger["name"] for trigger in triggers}
            assert "+" in formula


def test_the_rabbitmq_overlay_renders_with_kustomize() -> None:
    """ops/k8s-rabbitmq is ops/k8s plus the component; kustomize (kubectl's) renders it with every
    worker scaled on RabbitMQ and every rerankq pod on the broker URL."""
    overlay = yaml.safe_load((ROOT / "ops" / "k8s-rabbitmq" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../k8s"] and overlay["components"] == ["../k8s/rabbitmq"]
    kustomize = shutil.which("kustomize")
    command = [kustomize, "build"] if kustomize else ["kubectl", "kustomize"] if shutil.which("kubectl") else None
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed; checked structurally above")
    done = subprocess.run([*command, str(ROOT / "ops" / "k8s-rabbitmq")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    kinds = {doc["kind"] for doc in rendered}
    assert {"Deployment", "ScaledObject", "TriggerAuthentication", "Secret"} <= kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "rerankq", doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert "RERANKQ_BROKER_URL" in {var["name"] for var in container["env"]}, doc["metadata"]["name"]
        if doc["kind"] == "ScaledObject":
            assert {trigger["type"] for trigger in doc["spec"]["triggers"]} == {"rabbitmq"}, doc["metadata"]["name"]


def test_every_deployment_yaml_parses() -> None:
    files = [*ROOT.glob("docker-compose*.yml"), *(ROOT / "ops").rglob("*.yaml"), *(ROOT / "ops").rglob("*.yml")]
    assert ROOT / "docker-compose.rabbitmq.yml" in files and RABBITMQ_COMPONENT / "keda-worker-gpu.yaml" in files
    for path in files:
        assert any(doc is not None for doc in yaml.safe_load_all(path.read_text())), path


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
