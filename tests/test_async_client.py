"""The asyncio client: same results as the blocking one, and waiting never blocks the event loop."""

from __future__ import annotations

import asyncio
import json

import pytest

from rerankq import AsyncRerankClient, JobTimeout, RerankClient

pytestmark = pytest.mark.slow

QUERY = "what is artificial intelligence"
DOCS = ["Artificial intelligence is the study of machines.", "苹果是一种水果。", "Redis stores data in memory."]


async def test_async_rank_matches_the_blocking_client(workers: dict, client: RerankClient, redis_server) -> None:
    async with AsyncRerankClient(redis_server.url) as aclient:
        answers = await asyncio.gather(*(aclient.rank(QUERY, DOCS, model="tiny-xlmr", timeout=30) for _ in range(10)))
        handle = await aclient.submit(QUERY, DOCS, model="tiny-xlmr", top_n=1, return_documents=True)
        result = await handle.result(timeout=30)
        assert await aclient.job(handle.id).status() == "succeeded"
    expected = client.rank(QUERY, DOCS, model="tiny-xlmr", timeout=30)
    for answer in answers:
        assert [(r.index, pytest.approx(r.score, abs=1e-6)) for r in answer] == [(r.index, r.score) for r in expected]
    assert result.results[0].index == expected[0].index
    assert result.results[0].document == DOCS[expected[0].index]


async def test_waiting_leaves_the_event_loop_free(redis_server) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    async with AsyncRerankClient(redis_server.url) as aclient:
        handle = await aclient.submit(QUERY, DOCS, model="bge-reranker-v2-m3")  # a model no test worker serves
        with pytest.raises(JobTimeout) as info:
            await handle.result(timeout=1.0)
        await aclient.cancel(handle.id)
    task.cancel()
    assert info.value.job_id == handle.id
    assert ticks >= 10  # a blocked loop would have ticked once or not at all in that second


async def test_async_empty_documents_and_bad_input(redis_server) -> None:
    async with AsyncRerankClient(redis_server.url) as aclient:
        assert await aclient.rank(QUERY, [], model="tiny-xlmr") == []
        with pytest.raises(ValueError, match="documents\\[0\\]"):
            await aclient.rank(QUERY, [1], model="tiny-xlmr")  # type: ignore[list-item]


async def test_async_result_whose_message_was_missed_is_still_noticed(redis_server) -> None:
    """As for the blocking handle: a result stored without its pub/sub message (a plain SET)
    is read from its key within a second, not at the timeout."""
    async with AsyncRerankClient(redis_server.url) as aclient:
        handle = await aclient.submit(QUERY, DOCS, model="bge-reranker-v2-m3", cache=False)
        answer = {"job_id": handle.id, "model": "bge-reranker-v2-m3", "device": "cpu", "results": []}
        meta = {"status": "SUCCESS", "result": answer, "traceback": None, "children": [], "task_id": handle.id}
        backend = aclient.app.backend

        async def store_silently() -> None:
            await asyncio.sleep(0.5)
            backend.client.set(backend.get_key_for_task(handle.id), json.dumps(meta))

        result, _ = await asyncio.gather(handle.result(timeout=30), store_silently())
    assert result.job_id == handle.id
