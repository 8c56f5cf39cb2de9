"""The SDK rejects bad input with a clear error naming the field and the limit, and enqueues nothing."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankq import InvalidRequest, RerankClient
from rerankq.core.constants import queue_name
from rerankq.core.contract import RerankJob, rank_scores

MODEL = "bge-reranker-v2-m3"  # a shipped manifest no test worker serves: its queue length shows what was sent


def _queued(client: RerankClient) -> int:
    return int(redis.Redis.from_url(client.settings.redis_url).llen(queue_name(MODEL)))


@pytest.mark.parametrize(
    ("query", "documents", "kwargs", "field", "limit_words"),
    [
        ("", ["a"], {}, "query", "non-empty"),
        ("   ", ["a"], {}, "query", "non-empty"),
        (None, ["a"], {}, "query", "non-empty"),
        ("q", "not a list", {}, "documents", "list of strings"),
        ("q", ["ok", 3], {}, "documents[1]", "must be a string"),
        ("q", ["ok", None], {}, "documents[1]", "must be a string"),
        ("q", ["x"] * 1001, {}, "documents", "at most 1000 documents"),
        ("q", ["ok", "x" * 100_001], {}, "documents[1]", "at most 100000 characters"),
        ("q" * 20_001, ["a"], {}, "query", "at most 20000 characters"),
        ("q", ["bad \ud800 surrogate"], {}, "documents[0]", "valid Unicode"),
        ("q", ["a"], {"top_n": 0}, "top_n", "positive integer"),
        ("q", ["a"], {"top_n": "3"}, "top_n", "positive integer"),
        ("q", ["a"], {"model": "m" * 257}, "model", "1 to 256 characters"),
        ("q", ["a"], {"model": 7}, "model", "1 to 256 characters"),
    ],
)
def test_bad_input_names_field_and_limit_and_enqueues_nothing(
    client: RerankClient, query: Any, documents: Any, kwargs: dict[str, Any], field: str, limit_words: str
) -> None:
    kwargs = {"model": MODEL, **kwargs}
    before = _queued(client)
    with pytest.raises(InvalidRequest) as info:
        client.submit(query, documents, **kwargs)
    assert info.value.field == field
    assert limit_words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert _queued(client) == before


def test_a_valid_job_is_enqueued(client: RerankClient) -> None:
    """The positive control for the test above: the queue length does move when a job is sent."""
    before = _queued(client)
    client.submit("q", ["a", "b"], model=MODEL)
    assert _queued(client) == before + 1


def test_document_limit_comes_from_settings(client: RerankClient) -> None:
    small = RerankClient(settings=client.settings.model_copy(update={"max_documents": 2}))
    with pytest.raises(InvalidRequest, match="at most 2 documents"):
        small.submit("q", ["a", "b", "c"], model=MODEL)


def test_empty_document_list_is_an_empty_result_without_enqueueing(client: RerankClient) -> None:
    before = _queued(client)
    handle = client.submit("q", [], model=MODEL)
    assert handle.result(timeout=5).results == []
    assert client.rank("q", [], model=MODEL) == []
    assert client.job(handle.id).status() == "succeeded"
    assert _queued(client) == before


def test_rank_scores_sorts_descending_keeps_ties_in_input_order_and_cuts() -> None:
    ranked = rank_scores([0.1, 0.9, 0.5, 0.9], top_n=3, documents=["a", "b", "c", "d"])
    assert [(r.index, r.score, r.document) for r in ranked] == [(1, 0.9, "b"), (3, 0.9, "d"), (2, 0.5, "c")]


# --- hostile input, property-based ------------------------------------------------------------

hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=30)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
hostile_options = st.fixed_dictionaries(
    {},
    optional={
        name: hostile_values
        for name in (
            "top_n", "normalize", "return_documents", "cache", "max_length", "max_tokens_per_doc",
            "truncation_direction", "long_documents", "chunk_tokens", "chunk_overlap", "max_chunks_per_doc",
            "aggregate", "model",
        )
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=hostile_values, documents=hostile_values, options=hostile_options)
def test_hostile_input_is_a_clear_error_or_a_valid_job(
    client: RerankClient, query: Any, documents: Any, options: dict[str, Any]
) -> None:
    """Anything at all through the SDK: a job that validates, or an InvalidRequest naming the field,
    never another exception."""
    try:
        job = client.build(query, documents, **options)
    except InvalidRequest as e:
        assert e.field and e.limit
        return
    assert RerankJob.model_validate_json(job.model_dump_json()) == job  # it travels as JSON intact
