"""The gateway's OpenAPI document, with the limits this gateway enforces.

The request models are static, the limits are settings (``RERANKQ_MAX_DOCUMENTS``, characters,
``rank_fields``, fields per document): they are written into the document when it is built, so a
schema-driven client generates requests this gateway accepts. Rules JSON Schema cannot state
(``chunk_overlap`` below ``chunk_tokens``, chunk pairs per job, the body's size in bytes) are in
the field descriptions and answered with 422 or 413 naming the field.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from rerankq.core.settings import Settings

COHERE_SHAPES = ("CohereV1Request", "CohereV2Request", "JobRequest")


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            with_limits(document["components"]["schemas"], settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_limits(schemas: dict[str, Any], settings: Settings) -> None:
    for name in COHERE_SHAPES:
        fields = schemas[name]["properties"]
        _query(fields["query"], settings)
        fields["documents"]["maxItems"] = settings.max_documents
        text, document = fields["documents"]["items"]["anyOf"]
        text["maxLength"] = settings.max_document_chars
        document["maxProperties"] = settings.max_document_fields
        document["properties"]["text"]["maxLength"] = settings.max_document_chars
        fields["rank_fields"]["anyOf"][0]["maxItems"] = settings.max_rank_fields
    tei = schemas["TeiRequest"]["properties"]
    _query(tei["query"], settings)
    tei["texts"]["maxItems"] = settings.max_documents
    tei["texts"]["items"]["maxLength"] = settings.max_document_chars


def _query(field: dict[str, Any], settings: Settings) -> None:
    field["maxLength"] = settings.max_query_chars
