"""``rerankq serve --model M``: everything one model needs, in one command, as text-embeddings-inference
is one command: a worker (or ``--workers N``), the gateway, the exporter (queue depths, the sweep that
gives a dead worker's jobs back, this host's worker metrics) and, when asked, a private redis-server.

Which Redis is used is always said, and one is started only when asked: ``--redis local`` starts a
private one; ``--redis auto`` uses the configured URL when one is configured (RERANKQ_REDIS_URL or
``--redis-url``), else the default URL if a Redis answers there, else a private one. Without
``--redis``, the configured or default URL must answer. Children run in one process group of their own
(rerankq.cli.supervisor); Ctrl-C or SIGTERM stops them all and exits 0; a child that dies stops the
rest and serve exits with its code (1 if it had none)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError

from rerankq.cli.supervisor import Child, Supervisor
from rerankq.core.live_workers import read_live
from rerankq.core.redis_clients import connect, masked_url, ping_redis
from rerankq.core.registry import find_manifest
from rerankq.core.settings import Settings
from rerankq.errors import BrokerUnavailable
from rerankq.testing.local_redis import free_port, private_server_command, wait_for_redis

RedisChoice = Literal["local", "auto"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.25
EXIT_CHILD_FAILED = 1


@dataclass(frozen=True)
class ServeOptions:
    model: str
    device: str = "auto"
    workers: int = 1
    backend: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    exporter_port: int = 9808  # 0: no exporter
    insecure: bool = False
    redis: RedisChoice | None = None
    redis_url_given: bool = False  # --redis-url or RERANKQ_REDIS_URL: never replaced by a private one


class ServeError(Exception):
    """serve cannot start as asked (the CLI prints it in one line, exit 2 or 3)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def served_name(model: str, models_dir: Path | None) -> str:
    """The name a worker started with ``--model model`` serves under: its manifest's, else the
    folder's or the hub id's last part (rerankq.worker.loading.resolve_model's rule)."""
    manifest = find_manifest(models_dir, model)
    return manifest.name if manifest else Path(model.rstrip("/")).name


def run_serve(options: ServeOptions, settings: Settings) -> int:
    supervisor = Supervisor()
    stop = threading.Event()
    # Ctrl-C and SIGTERM both ask for a stop, handled here even where the shell that started serve
    # ignores SIGINT (a background job inherits SIG_IGN): a second one does not cut the stop short
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in STOP_SIGNALS}
    with tempfile.TemporaryDirectory(prefix="rerankq-serve-") as scratch:  # the private Redis's, the metrics'
        try:
            settings = settings.updated(redis_url=_redis_url(options, settings, supervisor, Path(scratch)))
            _start_services(options, settings, supervisor, _metrics_folder(Path(scratch)))
            return _watch(options, settings, supervisor, stop)
        finally:
            if supervisor.children:
                supervisor.say("stopping every child")
            supervisor.stop(last=("redis",))
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _redis_url(options: ServeOptions, settings: Settings, supervisor: Supervisor, scratch: Path) -> str:
    """The Redis to use, said in one line; a private one started when asked."""
    configured = "configured" if options.redis_url_given else "default"
    if options.redis == "local" or (options.redis == "auto" and not options.redis_url_given):
        if options.redis == "auto" and _unreachable(settings) is None:
            supervisor.say(f"Redis: {masked_url(settings.redis_url)} (the {configured} URL, answering)")
            return settings.redis_url
        return _private_redis(supervisor, scratch / "redis")
    if (unreachable := _unreachable(settings)) is not None:
        hint = "" if options.redis_url_given else "; or pass --redis local for a private redis-server"
        raise ServeError(f"{unreachable}{hint}", 3) from unreachable
    supervisor.say(f"Redis: {masked_url(settings.redis_url)} (the {configured} URL)")
    return settings.redis_url


def _unreachable(settings: Settings) -> BrokerUnavailable | None:
    """Why the Redis at the settings' URL cannot be used, or None when it answers."""
    try:
        ping_redis(settings, "starting serve")
    except BrokerUnavailable as e:
        return e
    return None


def _private_redis(supervisor: Supervisor, folder: Path) -> str:
    binary = _which("redis-server")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    folder.mkdir()
    supervisor.start("redis", private_server_command(binary, port, folder), dict(os.environ))
    supervisor.say(f"Redis: a private redis-server at {url}, stopped with serve (nothing kept on disk)")
    wait_for_redis(url)
    return url


def _which(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServeError(
            f"{binary} not found: install it (apt-get install redis-server, brew install redis) "
            "or point --redis-url at a running Redis",
            2,
        )
    return path


def _metrics_folder(scratch: Path) -> str:
    """Workers and the exporter share a prometheus-client multiprocess folder (the exporter then
    serves this host's worker metrics), unless the user set one."""
    if given := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return given
    (scratch / "metrics").mkdir()
    return str(scratch / "metrics")


def _start_services(options: ServeOptions, settings: Settings, supervisor: Supervisor, metrics_dir: str) -> None:
    name = served_name(options.model, settings.models_dir)
    # unbuffered: a child's lines reach serve's output as they are printed, not when a buffer fills
    env = {**os.environ, "RERANKQ_REDIS_URL": settings.redis_url, "PYTHONUNBUFFERED": "1"}
    rerankq = [sys.executable, "-m", "rerankq"]
    worker = [*rerankq, "worker", "--model", options.model, "--device", options.device]
    worker += ["--backend", options.backend] if options.backend else []
    for index in range(1, options.workers + 1):
        supervisor.start(f"worker-{index}", worker, {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    gateway_env = {**env, "RERANKQ_DEFAULT_MODEL": os.environ.get("RERANKQ_DEFAULT_MODEL", name)}
    gateway = [*rerankq, "gateway", "--host", options.host, "--port", str(options.port)]
    supervisor.start("gateway", [*gateway, *(["--insecure"] if options.insecure else [])], gateway_env)
    if options.exporter_port:
        exporter = [*rerankq, "exporter", "--host", options.host, "--port", str(options.exporter_port)]
        supervisor.start("exporter", exporter, {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    if gateway_env["RERANKQ_DEFAULT_MODEL"] != name:
        supervisor.say(f"requests without a model go to RERANKQ_DEFAULT_MODEL={gateway_env['RERANKQ_DEFAULT_MODEL']}")


def _watch(options: ServeOptions, settings: Settings, supervisor: Supervisor, stop: threading.Event) -> int:
    """Until asked to stop (0) or a child dies (its exit code). Says once when requests are served."""
    name = served_name(options.model, settings.models_dir)
    host = _client_host(options.host)
    with closing(connect(settings.redis_url, settings.redis_sentinel_master, socket_connect_timeout=2)) as redis:
        ready = False
        while not stop.wait(POLL_S):
            if (dead := supervisor.dead()) is not None:
                return _report_death(supervisor, dead)
            if not ready and (ready := _ready(redis, settings, name, host, options.port)):
                workers = f"{options.workers} worker{'s' if options.workers > 1 else ''}"
                supervisor.say(f"ready: http://{host}:{options.port}/v1/rerank serves {name} ({workers})")
    return 0


def _report_death(supervisor: Supervisor, dead: Child) -> int:
    code = dead.exit_code()
    supervisor.say(f"{dead.name} exited with code {code}; stopping the others")
    return code if code and code > 0 else EXIT_CHILD_FAILED


def _ready(redis: Redis, settings: Settings, name: str, host: str, port: int) -> bool:
    """A live worker serves the model and the gateway accepts connections (asked without HTTP, so
    the gateway's access log stays the user's)."""
    try:
        if not any(worker.model == name for worker in read_live(redis, settings.presence_interval_s)):
            return False
        with socket.create_connection((host, port), timeout=1):
            return True
    except (OSError, RedisError):
        return False


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
