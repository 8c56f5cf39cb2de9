"""A throwaway ``redis-server`` on a free loopback port, for the demo and the test session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class LocalRedis:
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_redis_server() -> Iterator[LocalRedis]:
    """Start redis-server (no persistence) and stop it on exit. Raises when the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: install it or set RERANKQ_REDIS_URL")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen([*args, "--dir", workdir], stdout=subprocess.DEVNULL)
        server = LocalRedis(f"redis://127.0.0.1:{port}/0", process)
        try:
            wait_for_redis(server.url)
            yield server
        finally:
            process.terminate()
            process.wait(10)


def wait_for_redis(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
