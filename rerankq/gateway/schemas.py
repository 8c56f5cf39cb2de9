"""Request and response shapes of the compatible APIs (Cohere v1/v2, Jina, TEI) and the jobs API.

Unknown request fields are ignored, as the original services do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from rerankq.producer.text_options import TEXT_OPTIONS

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
    # Long documents (rerankq.producer.text_options). Cohere's own: max_chunks_per_doc (v1; chunks the
    # documents) and max_tokens_per_doc (v2; truncates them); the rest are rerankq's. Values are
    # checked where the job is built, so the error names the field the same way the SDK does.
    max_chunks_per_doc: Any = None
    max_tokens_per_doc: Any = None
    long_documents: Any = None
    chunk_tokens: Any = None
    chunk_overlap: Any = None
    aggregate: Any = None
    truncation_direction: Any = None
    max_length: Any = None

    def text_options(self) -> dict[str, Any]:
        """The options as SDK keyword arguments; ``max_chunks_per_doc`` alone means chunking."""
        options = {name: getattr(self, name) for name in TEXT_OPTIONS if getattr(self, name) is not None}
        if self.max_chunks_per_doc is not None and self.long_documents is None:
            options["long_documents"] = "chunk"
        return options


class CohereV1Request(_CohereRequest):
    """Cohere v1 and Jina: documents as strings or objects; ``rank_fields`` picks object fields."""


class CohereV2Request(_CohereRequest):
    """Cohere v2: documents as strings (objects too, as v1)."""


class TeiRequest(_Request):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None  # accepted; rerankq always truncates (see truncation_direction)
    truncation_direction: Literal["Right", "right", "Left", "left"] = "Right"
    model: str | None = None  # not in TEI (one model per server); lets TEI clients pick one here


class JobRequest(CohereV1Request):
    callback_url: AnyHttpUrl | None = None


class RerankHit(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None
    span: tuple[int, int] | None = None  # chunked: the best window's characters [start, end)
    chunks: int | None = None  # chunked: windows scored


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
