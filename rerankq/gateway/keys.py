"""Named API keys: who is calling, what they may do, and their limits.

A keys file (TOML, ``RERANKQ_API_KEYS_FILE``) lists each key by name with its SHA-256 digest,
scopes and limits; a plain key in it is refused, so the file can be shared with whoever manages
access without handing out the keys. ``RERANKQ_API_KEYS`` keeps working: each of its keys is an
owner of its own, named by a short prefix of its digest, with every scope and no limits.

The file is read again on SIGHUP and when it changes (its modification time and size, checked
every ``RELOAD_POLL_S``): the new ring replaces the old one in one assignment, so a request in
flight keeps the key it was admitted with and none is dropped. A file that no longer parses
leaves the old ring in place and says why in the log (a typo must not lock every app out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rerankq.core.settings import Settings

log = logging.getLogger("rerankq.gateway")

Scope = Literal["rerank", "jobs", "admin"]
SCOPES: tuple[Scope, ...] = ("rerank", "jobs", "admin")
DEFAULT_SCOPES: tuple[Scope, ...] = ("rerank", "jobs")  # a file's key without `scopes`: no admin
DIGEST_PREFIX = "sha256:"
RELOAD_POLL_S = 1.0
ANONYMOUS = "anonymous"  # the one caller of a gateway without keys (loopback, or --insecure)


class KeyLimits(BaseModel):
    """Per key; unset: no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=1)
    document_tokens_per_minute: int | None = Field(None, ge=1)
    documents_per_request: int | None = Field(None, ge=1)
    queued_jobs: int | None = Field(None, ge=1, description="jobs of this key waiting in one lane's queue")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 digest of the key")
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1)
    limits: KeyLimits = Field(default_factory=KeyLimits)

    @model_validator(mode="before")
    @classmethod
    def _no_plain_keys(cls, value: object) -> object:
        if isinstance(value, dict) and ({"key", "secret", "token"} & set(value)):
            raise ValueError(
                'plain keys are refused in the keys file: give `sha256 = "<hex digest>"` '
                "(printf %s KEY | sha256sum), never the key"
            )
        return value


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for what in ("name", "sha256"):
            values = [getattr(entry, what) for entry in self.keys]
            if duplicated := sorted({value for value in values if values.count(value) > 1}):
                shown = duplicated if what == "name" else [value[:12] + "…" for value in duplicated]
                raise ValueError(f"two keys share the {what} {', '.join(shown)}")
        return self


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller. ``name`` is what jobs, metrics, usage and logs carry, never the key."""

    name: str
    scopes: frozenset[str]
    limits: KeyLimits = field(default_factory=KeyLimits)
    digest: bytes = b""

    def may(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS_KEY = ApiKey(ANONYMOUS, frozenset(SCOPES))


class KeysFileError(ValueError):
    pass


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[ApiKey, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose digest matches, compared with every key in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for key in self.keys:  # no early exit: the time taken does not reveal which key matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def digest_of(configured: str) -> bytes:
    """A RERANKQ_API_KEYS entry (a key, or ``sha256:<hex>``) as its digest."""
    if configured.startswith(DIGEST_PREFIX):
        digest = bytes.fromhex(configured.removeprefix(DIGEST_PREFIX))
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("an API key digest must be 64 hex digits after 'sha256:'")
        return digest
    return hashlib.sha256(configured.encode()).digest()


def env_keys(configured: Iterable[str]) -> list[ApiKey]:
    """RERANKQ_API_KEYS: each key its own owner, ``key-<first 8 hex digits of its digest>``."""
    digests = [digest_of(key) for key in configured]
    return [ApiKey(f"key-{digest.hex()[:8]}", frozenset(SCOPES), KeyLimits(), digest) for digest in digests]


def read_keys_file(path: Path, default_queued_jobs: int) -> list[ApiKey]:
    """The file's keys; a key without its own ``queued_jobs`` gets the default share of the queue."""
    try:
        parsed = KeysFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as e:
        raise KeysFileError(f"keys file {path} (RERANKQ_API_KEYS_FILE): {_first_problem(e)}") from e
    keys = []
    for entry in parsed.keys:
        limits = entry.limits
        if limits.queued_jobs is None:
            limits = limits.model_copy(update={"queued_jobs": default_queued_jobs})
        keys.append(ApiKey(entry.name, frozenset(entry.scopes), limits, bytes.fromhex(entry.sha256)))
    return keys


def _first_problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
    return str(error)


def load_ring(settings: Settings) -> KeyRing:
    keys = env_keys(key.get_secret_value() for key in settings.api_keys)
    if settings.api_keys_file is not None:
        share = max(1, int(settings.key_queue_share * settings.max_queue_depth))
        keys += read_keys_file(settings.api_keys_file, share)
    names = [key.name for key in keys]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise KeysFileError(f"two keys are named {', '.join(duplicated)}")
    return KeyRing(tuple(keys))


class KeyRingHolder:
    """The ring every request reads, replaced whole on reload (SIGHUP or a changed file)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ring = load_ring(settings)
        self._stamp = self._file_stamp()
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Read the keys again; on a bad file keep the ring in use (logged). True when replaced."""
        self._stamp = self._file_stamp()
        try:
            ring = load_ring(self.settings)
        except KeysFileError as e:
            log.error("keys not reloaded, the ones in use stay: %s", e)
            return False
        self.ring = ring
        log.info("keys reloaded: %s", ", ".join(key.name for key in ring.keys) or "none")
        return True

    def start(self) -> None:
        """Reload on SIGHUP and when the file changes (from the running event loop)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (in-process apps)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.settings.api_keys_file is not None:
            self._task = loop.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_S)
            if self._file_stamp() != self._stamp:
                self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self.settings.api_keys_file
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat is not None else None
