"""Request and response shapes of the compatible APIs (Cohere v1/v2, Jina, TEI) and the jobs API.

Unknown request fields are ignored, as the original services do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

Document = str | dict[str, Any]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _CohereRequest(_Request):
    model: str | None = None
    query: str
    documents: list[Document]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    rank_fields: list[str] | None = None


class CohereV1Request(_CohereRequest):
    """Cohere v1 and Jina: documents as strings or objects; ``rank_fields`` picks object fields."""

    max_chunks_per_doc: int | None = Field(None, ge=1)  # accepted; long documents are truncated


class CohereV2Request(_CohereRequest):
    max_tokens_per_doc: int | None = Field(None, ge=1)  # accepted; documents are truncated at max_length


class TeiRequest(_Request):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["Right", "right", "Left", "left"] = "Right"
    model: str | None = None  # not in TEI (one model per server); lets TEI clients pick one here


class JobRequest(CohereV1Request):
    callback_url: AnyHttpUrl | None = None


class RerankHit(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class CohereResponse(BaseModel):
    id: str
    results: list[RerankHit]
    meta: dict[str, Any]
    usage: dict[str, int] | None = None  # Jina's token count


class TeiHit(BaseModel):
    index: int
    score: float
    text: str | None = None


class JobAccepted(BaseModel):
    id: str
    status: str
    status_url: str


class JobState(BaseModel):
    id: str
    status: str
    model: str | None = None
    result: CohereResponse | None = None
    error: str | None = None
