"""The compatible rerank endpoints: Cohere v1 / Jina, Cohere v2, and text-embeddings-inference.

Each translates its shape into one rerankq job, waits for it without holding a thread, and
translates the result back. Scores are sigmoid-normalised into [0, 1], except TEI ``raw_scores``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from rerankq.core.contract import RerankResult
from rerankq.errors import InvalidRequest
from rerankq.gateway.auth import Caller, caller_of
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
from rerankq.gateway.usage import search_units

router = APIRouter()


def service_of(request: Request) -> RerankService:
    service: RerankService = request.app.state.service
    return service


Service = Annotated[RerankService, Depends(service_of)]
CallerOf = Annotated[Caller, Depends(caller_of)]


@router.post("/v1/rerank", response_model_exclude_none=True)
async def rerank_v1(body: CohereV1Request, service: Service, caller: CallerOf, response: Response) -> CohereResponse:
    """Cohere v1 and Jina."""
    return await _cohere(body, service, caller, response, api_version="1")


@router.post("/v2/rerank", response_model_exclude_none=True)
async def rerank_v2(body: CohereV2Request, service: Service, caller: CallerOf, response: Response) -> CohereResponse:
    return await _cohere(body, service, caller, response, api_version="2")


@router.post("/rerank", response_model_exclude_none=True)
async def rerank_tei(body: TeiRequest, service: Service, caller: CallerOf, response: Response) -> list[TeiHit]:
    """text-embeddings-inference: every text, highest score first (search units and tokens in
    headers: the body is a bare list)."""
    check_documents_request(body.texts, None, service.settings)
    result = await service.rank(
        caller,
        body.query,
        body.texts,
        body.model,
        normalize=not body.raw_scores,
        truncation_direction=body.truncation_direction,
        instruction=body.instruction,
    )
    name_served_version(response, result)
    response.headers["X-Rerankq-Search-Units"] = str(search_units(len(body.texts)))
    response.headers["X-Rerankq-Tokens"] = str(result.stats.tokens)
    return [
        TeiHit(index=hit.index, score=hit.score, text=body.texts[hit.index] if body.return_text else None)
        for hit in result.results
    ]


async def _cohere(
    body: CohereV1Request | CohereV2Request,
    service: RerankService,
    caller: Caller,
    response: Response,
    api_version: str,
) -> CohereResponse:
    check_documents_request(body.documents, body.rank_fields, service.settings)
    texts = document_texts(body.documents, body.rank_fields)
    result = await service.rank(caller, body.query, texts, body.model, top_n=body.top_n, **body.text_options())
    name_served_version(response, result)
    echoed = body.documents if body.return_documents else None
    return cohere_response(result, api_version, echoed, len(body.documents))


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


def cohere_response(
    result: RerankResult, api_version: str, documents: list[Document] | None, billed_documents: int | None
) -> CohereResponse:
    """``documents``: the request's originals to echo back; None to echo the job's own texts, if any.
    ``billed_documents``: how many documents the request ranked (Cohere's search units count them);
    None for a job no gateway took (sent with the SDK), which bills nothing."""
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
    units = {"search_units": search_units(billed_documents)} if billed_documents is not None else {}
    meta: dict[str, Any] = {"api_version": {"version": api_version}, "billed_units": units}
    return CohereResponse(id=result.job_id, results=hits, meta=meta, usage={"total_tokens": result.stats.tokens})


def _echo(index: int, text: str | None, documents: list[Document] | None) -> dict[str, Any] | None:
    if documents is not None:
        original = documents[index]
        return {"text": original} if isinstance(original, str) else original
    return {"text": text} if text is not None else None
