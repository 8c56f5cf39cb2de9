"""The compatible rerank endpoints: Cohere v1 / Jina, Cohere v2, and text-embeddings-inference.

Each translates its shape into one rerankq job, waits for it without holding a thread, and
translates the result back. Scores are sigmoid-normalised into [0, 1], except TEI ``raw_scores``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from rerankq.core.contract import RerankResult
from rerankq.errors import InvalidRequest
from rerankq.gateway.request_limits import check_documents_request
from rerankq.gateway.schemas import (
    CohereResponse,
    CohereV1Request,
    CohereV2Request,
    Document,
    RerankHit,
    TeiHit,
    TeiRequest,
)
from rerankq.gateway.service import RerankService

router = APIRouter()


def service_of(request: Request) -> RerankService:
    service: RerankService = request.app.state.service
    return service


Service = Annotated[RerankService, Depends(service_of)]


@router.post("/v1/rerank", response_model_exclude_none=True)
async def rerank_v1(body: CohereV1Request, service: Service, response: Response) -> CohereResponse:
    """Cohere v1 and Jina."""
    return await _cohere(body, service, response, api_version="1")


@router.post("/v2/rerank", response_model_exclude_none=True)
async def rerank_v2(body: CohereV2Request, service: Service, response: Response) -> CohereResponse:
    return await _cohere(body, service, response, api_version="2")


@router.post("/rerank", response_model_exclude_none=True)
async def rerank_tei(body: TeiRequest, service: Service, response: Response) -> list[TeiHit]:
    """text-embeddings-inference: every text, highest score first."""
    check_documents_request(body.texts, None, service.settings)
    result = await service.rank(
        body.query,
        body.texts,
        body.model,
        normalize=not body.raw_scores,
        truncation_direction=body.truncation_direction,
        instruction=body.instruction,
    )
    name_served_version(response, result)
    return [
        TeiHit(index=hit.index, score=hit.score, text=body.texts[hit.index] if body.return_text else None)
        for hit in result.results
    ]


async def _cohere(
    body: CohereV1Request | CohereV2Request, service: RerankService, response: Response, api_version: str
) -> CohereResponse:
    check_documents_request(body.documents, body.rank_fields, service.settings)
    texts = document_texts(body.documents, body.rank_fields)
    result = await service.rank(body.query, texts, body.model, top_n=body.top_n, **body.text_options())
    name_served_version(response, result)
    return cohere_response(result, api_version, body.documents if body.return_documents else None)


def name_served_version(response: Response, result: RerankResult) -> None:
    """Which model version (and revision, and alias) scored the answer: response headers, since
    the compatible bodies have no field for it."""
    response.headers["X-Rerankq-Model"] = result.model
    if result.revision:
        response.headers["X-Rerankq-Revision"] = result.revision
    if result.alias:
        response.headers["X-Rerankq-Alias"] = result.alias


def document_texts(documents: list[Document], rank_fields: list[str] | None) -> list[str]:
    """The text each document is ranked by: a string as is; an object's ``text`` field, or its
    ``rank_fields`` as "field: value" lines (Cohere's rule for structured documents)."""
    return [_document_text(i, doc, rank_fields) for i, doc in enumerate(documents)]


def _document_text(i: int, document: Document, rank_fields: list[str] | None) -> str:
    if isinstance(document, str):
        return document
    fields = rank_fields or ["text"]
    for field in fields:
        if not isinstance(document.get(field), str):
            raise InvalidRequest(f"documents[{i}].{field}", "must be a string field of the document", "missing")
    if rank_fields is None:
        return str(document["text"])
    return "\n".join(f"{field}: {document[field]}" for field in fields)


def cohere_response(result: RerankResult, api_version: str, documents: list[Document] | None) -> CohereResponse:
    """``documents``: the request's originals to echo back; None to echo the job's own texts, if any."""
    hits = [
        RerankHit(
            index=hit.index,
            relevance_score=hit.score,
            document=_echo(hit.index, hit.document, documents),
            span=hit.span,
            chunks=hit.chunks,
        )
        for hit in result.results
    ]
    meta: dict[str, Any] = {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}}
    return CohereResponse(id=result.job_id, results=hits, meta=meta, usage={"total_tokens": result.stats.tokens})


def _echo(index: int, text: str | None, documents: list[Document] | None) -> dict[str, Any] | None:
    if documents is not None:
        original = documents[index]
        return {"text": original} if isinstance(original, str) else original
    return {"text": text} if text is not None else None
