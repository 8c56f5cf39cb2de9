"""The gateway's OpenAPI document describes the API it serves: a schema-driven fuzzer
(schemathesis) sends generated requests, valid and not, to the real gateway process, and every
answer must be a documented status with a documented body and content type, never a 5xx.
Bounded (a few examples per operation), so it runs in CI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from gateway_support import AUTH
from hypothesis import HealthCheck, given, settings

from rerankq.testing.processes import GatewayProcess

pytestmark = pytest.mark.slow


def test_every_answer_is_documented_and_no_request_breaks_the_gateway(gateway: GatewayProcess) -> None:
    """Every operation, 25 generated cases each (positive and negative), against the real process:
    no 5xx, every status and content type documented, every body matching its schema. (Driven
    by hand: schemathesis's pytest plugin does not load under this pytest.)"""
    api = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy().filter(schema_can_state))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case: Any) -> None:
            case.call_and_validate(headers=AUTH, timeout=60)

        conforms()


def schema_can_state(case: Any) -> bool:
    """Leaves out the cases whose fate rests on a rule JSON Schema cannot state (the descriptions
    say them; the gateway answers them with 422 or 413 naming the field): an overlap as long as
    its chunks, more chunk pairs than one job may ask for, rank_fields a document lacks, and an
    instruction for a model that reads none (every model this gateway serves is an encoder; which
    kind a model is, only its live workers say)."""
    body = case.body if isinstance(case.body, dict) else {}
    if body.get("instruction") is not None:
        return False
    tokens, overlap, chunks = (body.get(name) for name in ("chunk_tokens", "chunk_overlap", "max_chunks_per_doc"))
    documents = body.get("documents") or body.get("texts") or []
    if isinstance(tokens, int | float) and isinstance(overlap, int | float) and overlap >= tokens:
        return False
    if isinstance(chunks, int | float) and chunks * max(1, len(documents)) > 10_000:
        return False
    fields = body.get("rank_fields") or []
    objects = [document for document in documents if isinstance(document, dict)]
    return all(isinstance(document.get(field), str) for document in objects for field in fields)


def test_the_schema_states_auth_statuses_and_types(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    rerank = document["paths"]["/v1/rerank"]["post"]
    assert rerank["security"] == [{"HTTPBearer": []}]
    assert {"401", "404", "409", "413", "422", "429", "502", "503", "504"} <= set(rerank["responses"])
    assert set(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    request = document["components"]["schemas"]["CohereV1Request"]["properties"]
    assert {"type": "integer", "minimum": 1} in request["max_chunks_per_doc"]["anyOf"]
    assert request["query"]["pattern"] and request["rank_fields"]["anyOf"][0]["minItems"] == 1


def test_a_boolean_top_n_is_refused_not_read_as_one(gateway: GatewayProcess) -> None:
    body = {"query": "cats", "documents": ["a", "b"], "top_n": True}
    response = httpx.post(f"{gateway.url}/v1/rerank", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 422 and response.json()["field"] == "top_n"
