"""Aliases against real workers: a traffic split decided per job, results naming the version that
scored them, rollback reaching SDK and gateway without a restart, and versions never mixed."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from gateway_support import AUTH
from typer.testing import CliRunner

from rerankq import RerankClient
from rerankq.cli.app import app
from rerankq.core.aliases import (
    AliasTable,
    AliasTarget,
    AsyncAliasTable,
    Route,
    alias_history,
    delete_alias,
    rollback_alias,
    set_alias,
)
from rerankq.core.constants import alias_history_key, model_identity_key
from rerankq.core.contract import revision_of
from rerankq.core.settings import get_settings
from rerankq.testing.local_redis import RedisProcess
from rerankq.testing.processes import GatewayProcess
from rerankq.testing.waiting import wait_until

# scores compared across different forward passes agree to 1e-5 (test_batcher's bound), not exactly
QUERY = "what is a cross-encoder"
DOCS = ["A cross-encoder reads query and document together.", "Apples grow on trees.", "Redis is a data store."]


@pytest.fixture
def broker(redis_server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def http(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)


@pytest.fixture
def alias_client(workers: dict) -> Iterator[RerankClient]:
    """A client that re-reads the alias table on every job, so a change shows at once."""
    with RerankClient(settings=get_settings().model_copy(update={"alias_refresh_s": 0})) as client:
        yield client


@pytest.fixture
def fresh_alias(broker: redis.Redis, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"alias-{request.node.name[:40].replace('[', '-').replace(']', '')}"
    yield name
    delete_alias(broker, name)
    broker.delete(alias_history_key(name))


def test_pick_follows_the_weights() -> None:
    target = AliasTarget(targets={"v1": 90, "v2": 10})
    rng = random.Random(7)
    picks = Counter(target.pick(rng) for _ in range(20_000))
    assert abs(picks["v2"] / 20_000 - 0.10) < 0.01  # 0.1 ± ~4.7 standard deviations
    assert AliasTarget(targets={"only": 1}).pick(rng) == "only"


def test_split_ratio_over_many_jobs(alias_client: RerankClient, broker: redis.Redis, fresh_alias: str) -> None:
    """80/20 between two versions, decided per job; every result names its version and scores as
    that version does."""
    set_alias(broker, fresh_alias, {"tiny-bert": 80, "tiny-xlmr": 20})
    handles = [alias_client.submit(QUERY, [f"document number {i}"], model=fresh_alias, cache=False) for i in range(200)]
    results = [handle.result(timeout=120) for handle in handles]
    served = Counter(result.model for result in results)
    assert set(served) == {"tiny-bert", "tiny-xlmr"}
    assert abs(served["tiny-xlmr"] - 40) <= 25  # binomial(200, 0.2): sd 5.7, so within 4.4 sd
    assert {result.alias for result in results} == {fresh_alias}
    for version in ("tiny-bert", "tiny-xlmr"):
        result = next(r for r in results if r.model == version)
        document = f"document number {results.index(result)}"
        direct = alias_client.rank(QUERY, [document], model=version, cache=False)
        assert result.results[0].score == pytest.approx(direct[0].score, abs=1e-5)


def test_result_names_version_and_revision(alias_client: RerankClient, broker: redis.Redis, fresh_alias: str) -> None:
    set_alias(broker, fresh_alias, {"tiny-bert": 100})
    computed = alias_client.submit(QUERY, DOCS, model=fresh_alias).result(timeout=60)
    published = broker.get(model_identity_key("tiny-bert"))
    assert published is not None
    revision = revision_of(published.decode())
    assert revision is not None and revision.startswith("sha-")  # local weights: a hash of them
    assert (computed.model, computed.revision, computed.alias) == ("tiny-bert", revision, fresh_alias)
    cached = alias_client.submit(QUERY, DOCS, model=fresh_alias).result(timeout=60)
    assert cached.device == "cache"  # answered by the producer alone, still naming the version
    assert (cached.model, cached.revision, cached.alias) == ("tiny-bert", revision, fresh_alias)


def test_rollback_reaches_sdk_without_restart(
    alias_client: RerankClient, broker: redis.Redis, fresh_alias: str
) -> None:
    set_alias(broker, fresh_alias, {"tiny-bert": 100})
    set_alias(broker, fresh_alias, {"tiny-xlmr": 100}, note="roll out")
    assert alias_client.submit(QUERY, DOCS, model=fresh_alias, cache=False).result(timeout=60).model == "tiny-xlmr"
    restored = rollback_alias(broker, fresh_alias)
    assert restored is not None and restored.targets == {"tiny-bert": 100}
    assert alias_client.submit(QUERY, DOCS, model=fresh_alias, cache=False).result(timeout=60).model == "tiny-bert"
    assert rollback_alias(broker, fresh_alias) is None  # before its first value it did not exist
    with pytest.raises(LookupError, match="no earlier value"):
        rollback_alias(broker, fresh_alias)


def test_rollback_reaches_the_gateway_within_its_refresh(
    http: httpx.Client, broker: redis.Redis, fresh_alias: str
) -> None:
    """The gateway re-reads aliases every RERANKQ_ALIAS_REFRESH_S (2 s): no restart needed."""
    set_alias(broker, fresh_alias, {"tiny-bert": 100})
    set_alias(broker, fresh_alias, {"tiny-xlmr": 100})
    # a new alias too is seen within the refresh (the gateway may have read the table just before)
    wait_until(lambda: _gateway_version(http, fresh_alias) == "tiny-xlmr", timeout=15)
    rollback_alias(broker, fresh_alias)
    wait_until(lambda: _gateway_version(http, fresh_alias) == "tiny-bert", timeout=15)  # it saw the rollback


def _gateway_version(http: httpx.Client, alias: str) -> str | None:
    """The version that served the alias; None while the gateway does not know the alias yet."""
    response = http.post("/v2/rerank", json={"model": alias, "query": QUERY, "documents": DOCS})
    if response.status_code == 404 and response.json()["error_type"] == "unknown_model":
        return None
    assert response.status_code == 200, response.text
    assert response.headers["X-Rerankq-Alias"] == alias and response.headers["X-Rerankq-Revision"].startswith("sha-")
    return response.headers["X-Rerankq-Model"]


def test_versions_never_share_cached_scores(alias_client: RerankClient, broker: redis.Redis, fresh_alias: str) -> None:
    query = f"cache isolation {time.time()}"
    set_alias(broker, fresh_alias, {"tiny-bert": 100})
    first = alias_client.submit(query, DOCS, model=fresh_alias).result(timeout=60)
    set_alias(broker, fresh_alias, {"tiny-xlmr": 100})
    second = alias_client.submit(query, DOCS, model=fresh_alias).result(timeout=60)
    assert (first.model, second.model) == ("tiny-bert", "tiny-xlmr")
    assert second.device != "cache" and second.stats.cache_hits == 0  # not the other version's scores
    direct = alias_client.rank(query, DOCS, model="tiny-xlmr", cache=False)
    assert [d.score for d in second.results] == pytest.approx([d.score for d in direct], abs=1e-5)


def test_default_alias_moves_requests_without_a_model(broker: redis.Redis, workers: dict) -> None:
    settings = get_settings().model_copy(update={"alias_refresh_s": 0, "default_model": "tiny-bert"})
    with RerankClient(settings=settings) as client:
        assert client.submit(QUERY, DOCS, cache=False).result(timeout=60).model == "tiny-bert"
        set_alias(broker, "default", {"tiny-xlmr": 100})
        try:
            result = client.submit(QUERY, DOCS, cache=False).result(timeout=60)
            assert (result.model, result.alias) == ("tiny-xlmr", "default")
        finally:
            delete_alias(broker, "default")
            broker.delete(alias_history_key("default"))
        assert client.submit(QUERY, DOCS, cache=False).result(timeout=60).model == "tiny-bert"


def test_a_bulk_record_is_scored_by_one_version(broker: redis.Redis, fresh_alias: str, workers: dict) -> None:
    """A record split into several jobs never mixes versions: the alias is resolved per record."""
    set_alias(broker, fresh_alias, {"tiny-bert": 50, "tiny-xlmr": 50})
    settings = get_settings().model_copy(update={"alias_refresh_s": 0, "bulk_job_documents": 2})
    records = [{"id": i, "query": f"{QUERY} {i}", "documents": DOCS * 2} for i in range(12)]
    with RerankClient(settings=settings) as client:
        results = list(client.rank_many(records, model=fresh_alias, cache=False))
        assert {result.model for result in results} == {"tiny-bert", "tiny-xlmr"}
        for result in results:
            direct = client.rank(records[result.position]["query"], DOCS * 2, model=result.model, cache=False)
            by_index = {d.index: d.score for d in direct}
            # 1e-5: bulk pairs ride differently padded forward passes (test_batcher's bound)
            assert [r.score for r in result.results] == pytest.approx(
                [by_index[r.index] for r in result.results], abs=1e-5
            )


runner = CliRunner()


def test_alias_cli(broker: redis.Redis, fresh_alias: str, workers: dict) -> None:
    idle = runner.invoke(app, ["models", "alias", "set", fresh_alias, "tiny-bert=90", "nobody-serves-this=10"])
    assert idle.exit_code == 2 and "none serves nobody-serves-this" in idle.output
    shadow = runner.invoke(app, ["models", "alias", "set", "tiny-bert", "tiny-xlmr"])
    assert shadow.exit_code == 2 and "must not be the name of a model version" in shadow.output
    bad_weight = runner.invoke(app, ["models", "alias", "set", fresh_alias, "tiny-bert=0"])
    assert bad_weight.exit_code == 2 and "positive integer" in bad_weight.output
    assert runner.invoke(app, ["models", "alias", "set", fresh_alias, "tiny-bert"]).exit_code == 0
    split = runner.invoke(
        app, ["models", "alias", "set", fresh_alias, "tiny-bert=90", "tiny-xlmr=10", "--note", "gray"]
    )
    assert split.exit_code == 0 and "tiny-bert 90 %, tiny-xlmr 10 %" in split.output
    shown = runner.invoke(app, ["models", "alias", "show", fresh_alias])
    assert "1 back: tiny-bert" in shown.output and "2 back: (not set)" in shown.output
    back = runner.invoke(app, ["models", "alias", "rollback", fresh_alias])
    assert back.exit_code == 0 and f"{fresh_alias} → tiny-bert" in back.output
    assert [value.targets if value else None for value in alias_history(broker, fresh_alias)] == [None]
    listed = runner.invoke(app, ["models", "list"])
    assert fresh_alias in listed.output and "tiny-xlmr" in listed.output


# --- a Redis that cannot be read ---------------------------------------------------------------

STALE_WARNING = "using the last one read"


def _logged_above_debug(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno > logging.DEBUG]


def test_a_table_never_read_warns_nothing_and_reads_on_the_next_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down from the start: nothing was read, so there is no "last one" to use and no warning
    saying so; the next call reads again (not after RERANKQ_ALIAS_REFRESH_S) and routes by it."""
    server = RedisProcess(tmp_path)  # its free port: nobody listens there yet
    table = AliasTable(redis.Redis.from_url(server.url), get_settings().model_copy(update={"alias_refresh_s": 3600}))
    with caplog.at_level(logging.DEBUG, logger="rerankq.aliases"):
        assert table.resolve("canary") == Route("canary")
    assert _logged_above_debug(caplog) == []
    server.start()
    try:
        set_alias(redis.Redis.from_url(server.url), "canary", {"tiny-bert": 100})
        assert table.resolve("canary") == Route("tiny-bert", "canary")
    finally:
        server.stop()


async def test_the_gateways_table_never_read_warns_nothing_and_reads_on_the_next_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tmp_path)
    client = aioredis.Redis.from_url(server.url)
    table = AsyncAliasTable(client, get_settings().model_copy(update={"alias_refresh_s": 3600}))
    try:
        with caplog.at_level(logging.DEBUG, logger="rerankq.aliases"):
            assert await table.resolve("canary") == Route("canary")
        assert _logged_above_debug(caplog) == []
        server.start()
        set_alias(redis.Redis.from_url(server.url), "canary", {"tiny-xlmr": 100})
        assert await table.resolve("canary") == Route("tiny-xlmr", "canary")
    finally:
        await client.aclose()
        server.stop()


def test_a_redis_failing_after_a_read_warns_and_routes_by_the_last_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control of the two above: once a table was read, a failed re-read says so and the last
    table keeps routing."""
    server = RedisProcess(tmp_path)
    server.start()
    try:
        set_alias(redis.Redis.from_url(server.url), "canary", {"tiny-bert": 100})
        table = AliasTable(redis.Redis.from_url(server.url), get_settings().model_copy(update={"alias_refresh_s": 0}))
        assert table.resolve("canary") == Route("tiny-bert", "canary")
    finally:
        server.stop()
    with caplog.at_level(logging.DEBUG, logger="rerankq.aliases"):
        assert table.resolve("canary") == Route("tiny-bert", "canary")
    assert [message for message in _logged_above_debug(caplog) if STALE_WARNING in message]
