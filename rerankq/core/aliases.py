"""Aliases: a stable name (``default``, ``zh``) for one model version, or a weighted traffic split
between versions (gray release: ``{"v1": 90, "v2": 10}``), decided per job where jobs are made.

The live table is a hash in the broker Redis. Producers (SDK, gateway, bulk runs) re-read it every
``RERANKQ_ALIAS_REFRESH_S``, so a change reaches them without a restart. Every earlier value is
kept on a history list, and a rollback restores the last one. Static aliases from
``RERANKQ_MODEL_ALIASES`` sit underneath the live ones.

Workers never resolve aliases. Each serves one fixed version under its own queues and cache keys,
so versions never mix and a rollback never waits for a model to load: the old version's workers
are still warm.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rerankq.core.constants import ALIASES_KEY, DEFAULT_ALIAS, alias_history_key
from rerankq.core.contract import check_model_name
from rerankq.core.settings import Settings
from rerankq.core.wire_format import ALIAS_FORMAT
from rerankq.errors import IncompatibleFormat, InvalidRequest, invalid_request

log = logging.getLogger("rerankq.aliases")
HISTORY_LENGTH = 50  # earlier values kept per alias
T = TypeVar("T")


class AliasTarget(BaseModel):
    """Where an alias sends jobs: one version (weight 100), or several by weight. Stored records
    are read with ``read_record``: fields of a newer minor format are kept, a newer major refused."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: str = ALIAS_FORMAT.version
    targets: dict[str, int]
    set_at: float = 0.0
    note: str = ""

    @field_validator("targets")
    @classmethod
    def _valid_split(cls, targets: dict[str, int]) -> dict[str, int]:
        if not targets:
            raise ValueError("an alias needs at least one model version")
        for name, weight in targets.items():
            check_model_name(name, "targets")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"the weight of {name!r} must be a positive integer, got {weight!r}")
        return targets

    def pick(self, rng: random.Random) -> str:
        """One version, with probability proportional to its weight."""
        versions = list(self.targets)
        if len(versions) == 1:
            return versions[0]
        return rng.choices(versions, weights=list(self.targets.values()))[0]

    def shares(self) -> dict[str, float]:
        """Each version's share of the traffic, in percent."""
        total = sum(self.targets.values())
        return {name: 100.0 * weight / total for name, weight in self.targets.items()}

    def describe(self) -> str:
        if len(self.targets) == 1:
            return next(iter(self.targets))
        return ", ".join(f"{name} {share:.4g} %" for name, share in self.shares().items())


@dataclass(frozen=True)
class Route:
    """The model version a job goes to, and the alias it was asked for by (None: asked by version)."""

    model: str
    alias: str | None = None


def route(table: Mapping[str, AliasTarget], requested: str | None, default_model: str, rng: random.Random) -> Route:
    """``requested`` (None: the default) through the alias table. The ``default`` alias, when set,
    overrides ``RERANKQ_DEFAULT_MODEL``; a name that is no alias is a version already."""
    name = requested or DEFAULT_ALIAS
    if name == DEFAULT_ALIAS and name not in table:
        name = default_model
    target = table.get(name)
    return Route(name) if target is None else Route(target.pick(rng), name)


def static_aliases(settings: Settings) -> dict[str, AliasTarget]:
    """``RERANKQ_MODEL_ALIASES``: a version name, or a ``{version: weight}`` split."""
    table = {}
    for alias, value in settings.model_aliases.items():
        targets = {value: 100} if isinstance(value, str) else value
        table[alias] = AliasTarget(targets=targets)
    return table


def read_record(raw: bytes | str) -> AliasTarget:
    """One stored alias value. ``IncompatibleFormat`` for a format major this release cannot read;
    ``ValueError`` (pydantic's ``ValidationError`` or bad JSON) for one that breaks the schema."""
    record = json.loads(raw)
    if isinstance(record, dict):
        ALIAS_FORMAT.check(record, AliasTarget.model_fields)
    return AliasTarget.model_validate(record)


@dataclass(frozen=True)
class StoredAliases:
    """The Redis hash as read: the aliases this release can route, and those it must refuse (a
    newer format major), so a job asked for by such an alias fails instead of going elsewhere."""

    table: dict[str, AliasTarget]
    refused: dict[str, IncompatibleFormat]


def parse_stored(raw: Mapping[bytes, bytes]) -> StoredAliases:
    """An entry of a newer major is refused (see ``StoredAliases``); one that does not parse at all is
    skipped with a warning."""
    table, refused = {}, {}
    for key, value in raw.items():
        alias = key.decode(errors="replace")
        try:
            table[alias] = read_record(value)
        except IncompatibleFormat as e:
            log.warning("alias %r cannot be read by this release: %s", alias, e)
            refused[alias] = e
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("alias %r in Redis is not valid and is ignored: %s", alias, e)
    return StoredAliases(table, refused)


class _Memo:
    """The merged table, re-read at most every ``alias_refresh_s``; the last good read is kept
    when Redis fails (a rerank should not fail because an alias could not be re-read)."""

    def __init__(self, settings: Settings, rng: random.Random | None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.static = static_aliases(settings)
        self.stored = StoredAliases({}, {})
        self.read_at = float("-inf")  # never read: every call tries until a read succeeds

    def due(self) -> bool:
        return time.monotonic() - self.read_at > self.settings.alias_refresh_s

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around one read of the Redis hash (``update``), blocking or awaited: the one home of
        what a failed read means. After a good read, the last table keeps routing until the next
        refresh, and a warning says so. Before any, there is no last table: nothing above debug is
        logged, and the next call reads again instead of routing without the stored aliases for a
        whole refresh interval."""
        try:
            yield
        except redis.RedisError as e:
            if self.read_at == float("-inf"):
                log.debug("could not read the alias table yet (%s); trying again on the next call", e)
                return
            log.warning("could not re-read the alias table (%s); using the last one read", e)
            self.read_at = time.monotonic()

    def update(self, raw: Mapping[bytes, bytes]) -> None:
        self.read_at = time.monotonic()
        self.stored = parse_stored(raw)

    def merged(self) -> dict[str, AliasTarget]:
        return self.static | self.stored.table

    def route(self, requested: str | None) -> Route:
        refused = self.stored.refused.get(requested or DEFAULT_ALIAS)
        if refused is not None:
            raise refused
        return route(self.merged(), requested, self.settings.default_model, self.rng)


class AliasTable:
    """The alias table as the blocking SDK and bulk runs see it."""

    def __init__(self, client: redis.Redis, settings: Settings, rng: random.Random | None = None) -> None:
        self.redis = client
        self._memo = _Memo(settings, rng)

    def table(self) -> dict[str, AliasTarget]:
        if self._memo.due():
            with self._memo.reading():
                self._memo.update(cast(dict[bytes, bytes], self.redis.hgetall(ALIASES_KEY)))
        return self._memo.merged()

    def resolve(self, requested: str | None) -> Route:
        self.table()
        return self._memo.route(requested)


class AsyncAliasTable:
    """The same table for the gateway's event loop."""

    def __init__(self, client: aioredis.Redis, settings: Settings, rng: random.Random | None = None) -> None:
        self.redis = client
        self._memo = _Memo(settings, rng)

    async def table(self) -> dict[str, AliasTarget]:
        if self._memo.due():
            with self._memo.reading():
                self._memo.update(await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(ALIASES_KEY)))
        return self._memo.merged()

    async def resolve(self, requested: str | None) -> Route:
        await self.table()
        return self._memo.route(requested)


# Changing aliases (`rerankq models alias ...`). Each change is one Redis transaction over the
# alias and its history, so two operators changing one alias at once cannot lose a value.


def stored_aliases(client: redis.Redis) -> dict[str, AliasTarget]:
    return parse_stored(cast(dict[bytes, bytes], client.hgetall(ALIASES_KEY))).table


def set_alias(client: redis.Redis, alias: str, targets: dict[str, int], note: str = "") -> AliasTarget:
    """Point ``alias`` at ``targets``; the value it had (or its absence) goes on its history."""
    check_alias_name(alias)
    try:
        value = AliasTarget(targets=targets, set_at=time.time(), note=note)
    except ValidationError as e:
        raise invalid_request(e.errors(), "targets") from e

    def change(pipe: redis.client.Pipeline) -> None:
        previous = _current(pipe, alias)
        pipe.multi()
        pipe.lpush(alias_history_key(alias), previous if previous is not None else "null")
        pipe.ltrim(alias_history_key(alias), 0, HISTORY_LENGTH - 1)
        pipe.hset(ALIASES_KEY, alias, value.model_dump_json())

    _transaction(client, alias, change)
    return value


def rollback_alias(client: redis.Redis, alias: str) -> AliasTarget | None:
    """Restore the value ``alias`` had before its last change; None when it did not exist then
    (the alias is removed). Raises ``LookupError`` when there is nothing to roll back to."""

    def change(pipe: redis.client.Pipeline) -> bytes:
        previous = cast(bytes | None, pipe.lindex(alias_history_key(alias), 0))
        if previous is None:
            raise LookupError(f"alias {alias!r} has no earlier value to roll back to")
        pipe.multi()
        pipe.lpop(alias_history_key(alias))
        if previous == b"null":
            pipe.hdel(ALIASES_KEY, alias)
        else:
            pipe.hset(ALIASES_KEY, alias, previous.decode())
        return previous

    restored = _transaction(client, alias, change)
    return None if restored == b"null" else read_record(restored)


def delete_alias(client: redis.Redis, alias: str) -> bool:
    """Remove the live alias (its history stays, so a rollback brings it back)."""

    def change(pipe: redis.client.Pipeline) -> bool:
        previous = _current(pipe, alias)
        if previous is None:
            return False
        pipe.multi()
        pipe.lpush(alias_history_key(alias), previous)
        pipe.hdel(ALIASES_KEY, alias)
        return True

    return bool(_transaction(client, alias, change))


def _current(pipe: redis.client.Pipeline, alias: str) -> bytes | None:
    return cast(bytes | None, pipe.hget(ALIASES_KEY, alias))


def _transaction(client: redis.Redis, alias: str, change: Callable[[redis.client.Pipeline], T]) -> T:
    """Run ``change`` under WATCH of the alias table and the alias's history (retried on a race)."""
    watched = (ALIASES_KEY, alias_history_key(alias))
    return cast(T, client.transaction(cast(Any, change), *watched, value_from_callable=True))


def alias_history(client: redis.Redis, alias: str) -> list[AliasTarget | None]:
    """Earlier values, most recent first (None: the alias did not exist then)."""
    raw = cast(list[bytes], client.lrange(alias_history_key(alias), 0, -1))
    return [None if value == b"null" else read_record(value) for value in raw]


def check_alias_name(alias: str) -> None:
    check_model_name(alias, "alias")


def parse_split(specs: list[str]) -> dict[str, int]:
    """``["v1=90", "v2=10"]`` or ``["v1"]`` (weight 100) as ``{version: weight}``."""
    targets: dict[str, int] = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        if name in targets:
            raise InvalidRequest("targets", "each version at most once", f"{name!r} is given twice")
        try:
            targets[name] = int(weight) if weight else 100
        except ValueError as e:
            raise InvalidRequest(f"targets.{name}", "the weight must be a positive integer", f"got {weight!r}") from e
    return targets


def to_json(table: Mapping[str, AliasTarget | None]) -> str:
    return json.dumps({name: value.model_dump() if value else None for name, value in table.items()})
