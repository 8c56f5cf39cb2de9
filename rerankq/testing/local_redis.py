"""A throwaway ``redis-server`` on a free loopback port, for the demo and the test session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass(frozen=True)
class LocalRedis:
    url: str
    process: subprocess.Popen[bytes]


def private_server_command(binary: str, port: int, folder: Path) -> list[str]:
    """A redis-server of one's own: loopback only, nothing saved to disk, warnings only."""
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--dir",
        str(folder),
        "--loglevel",
        "warning",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server on one loopback port and data folder that can be killed and started again
    there, for fault drills. ``appendonly``: queued jobs and results survive a restart (the
    production setting); without it a restart loses everything in Redis."""

    def __init__(
        self, workdir: Path, appendonly: bool = False, extra: Sequence[str] = (), tls: Path | None = None
    ) -> None:
        """``tls``: a folder holding ca.pem, server.pem and server.key: serve TLS only."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found: install it or set RERANKQ_REDIS_URL")
        self.port = free_port()
        self.args = [binary, "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
        self.args += ["--appendonly", "yes" if appendonly else "no", *extra]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        if tls is None:
            self.args += ["--port", str(self.port)]
        else:
            self.args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            self.args += ["--tls-cert-file", str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key")]
            self.args += ["--tls-ca-cert-file", str(tls / "ca.pem")]
            ca = tls / "ca.pem"
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, url: str | None = None) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_for_redis(url or self.url)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, clients see their connections drop."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def local_redis_server() -> Iterator[LocalRedis]:
    """Start redis-server (no persistence) and stop it on exit. Raises when the binary is missing."""
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisProcess(Path(workdir))
        server.start()
        assert server.process is not None
        try:
            yield LocalRedis(server.url, server.process)
        finally:
            server.stop()


def wait_for_redis(url: str, timeout: float = 10) -> None:
    """Until the server answers PING (a server loading its append-only file answers LOADING)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except (redis.ConnectionError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
