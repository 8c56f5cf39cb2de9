"""Shared by the gateway tests: the test gateway's configuration, auth headers, an in-process
app on the real Redis (for settings a test needs to vary), and job polling."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from rerankq.core.settings import get_settings
from rerankq.gateway import create_app

PLAIN_KEY = "rk-test-plain-key"
HASHED_KEY = "rk-test-hashed-key"
CALLBACK_SECRET = "callback-secret-for-tests"
MAX_DOCUMENTS = 50
MAX_BODY_BYTES = 256 * 1024
ALIAS = "rerank-english-v3.0"

GATEWAY_ENV = {
    "RERANKQ_API_KEYS": f"{PLAIN_KEY},sha256:{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}",
    "RERANKQ_DEFAULT_MODEL": "tiny-bert",
    "RERANKQ_MODEL_ALIASES": json.dumps({ALIAS: "tiny-bert"}),
    "RERANKQ_CALLBACK_SECRET": CALLBACK_SECRET,
    "RERANKQ_CALLBACK_ALLOW_PRIVATE": "true",  # the tests' callback receiver listens on 127.0.0.1
    "RERANKQ_MAX_DOCUMENTS": str(MAX_DOCUMENTS),
    "RERANKQ_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
}
AUTH = {"Authorization": f"Bearer {PLAIN_KEY}"}
FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class PausedModel:
    """A worker, alive and announced, that has stopped taking jobs off its queue (Celery's
    cancel_consumer), so the queue grows as under overload, until ``resume()``."""

    name: str
    resume: Callable[[], object]


@asynccontextmanager
async def app_client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in this process (lifespan run), with settings overridden, on the test Redis."""
    settings = get_settings().model_copy(update={"default_model": "tiny-bert", **overrides})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60) as client:
            yield client


def wait_for_job(http: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if state["status"] in FINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


async def await_job(
    http: httpx.AsyncClient, job_id: str, timeout: float = 30, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if state["status"] in FINAL or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)
