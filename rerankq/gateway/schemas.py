"""Request and response shapes of the compatible APIs (Cohere v1/v2, Jina, TEI) and the jobs API.

Unknown request fields are ignored, as the original services do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, Strict

from rerankq.core.contract import visible_text_pattern
from rerankq.core.text_options import (
    TEXT_OPTIONS,
    Aggregate,
    ChunkOverlap,
    ChunkTokens,
    LongDocuments,
    MaxLength,
    PositiveTokens,
    TruncationDirection,
)

# A structured document (Cohere v1, Jina): a string ``text`` and any other fields, echoed back with
# ``return_documents`` and rankable with ``rank_fields``. Kept a plain dict (echoed as sent).
DocumentObject = Annotated[
    dict[str, Any],
    Field(json_schema_extra={"properties": {"text": {"type": "string"}}, "required": ["text"]}),
]
Document = str | DocumentObject
TopN = PositiveTokens  # the same rule: a positive JSON integer
# The SDK's rule (rerankq.core.contract.check_query) as a pattern: some visible character.
Query = Annotated[str, Field(min_length=1, pattern=visible_text_pattern())]
# rerankq's extension for LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma): the task in words.
Instruction = Annotated[
    str, Field(min_length=1, pattern=visible_text_pattern(), description="LLM rerankers: what relevance means here.")
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _CohereRequest(_Request):
    model: str | None = None
    query: Query
    documents: list[Document]
    top_n: TopN | None = None
    return_documents: Annotated[bool, Strict()] = False
    rank_fields: Annotated[list[str], Field(min_length=1)] | None = None
    # Long documents (rerankq.core.text_options). Cohere's own: max_chunks_per_doc (v1; chunks the
    # documents) and max_tokens_per_doc (v2; truncates them); the rest are rerankq's.
    max_chunks_per_doc: PositiveTokens | None = None
    max_tokens_per_doc: PositiveTokens | None = None
    long_documents: LongDocuments | None = None
    chunk_tokens: ChunkTokens | None = None
    chunk_overlap: ChunkOverlap | None = None
    aggregate: Aggregate | None = None
    truncation_direction: TruncationDirection | None = None
    max_length: MaxLength | None = None
    instruction: Instruction | None = None

    def text_options(self) -> dict[str, Any]:
        """The options as SDK keyword arguments; ``max_chunks_per_doc`` alone means chunking."""
        names = (*TEXT_OPTIONS, "instruction")
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.max_chunks_per_doc is not None and self.long_documents is None:
            options["long_documents"] = "chunk"
        return options


class CohereV1Request(_CohereRequest):
    """Cohere v1 and Jina: documents as strings or objects; ``rank_fields`` picks object fields."""


class CohereV2Request(_CohereRequest):
    """Cohere v2: documents as strings (objects too, as v1)."""


class TeiRequest(_Request):
    query: Query
    texts: list[str]
    raw_scores: Annotated[bool, Strict()] = False
    return_text: Annotated[bool, Strict()] = False
    truncate: bool | None = None  # accepted; rerankq always truncates (see truncation_direction)
    truncation_direction: TruncationDirection = "Right"
    model: str | None = None  # not in TEI (one model per server); lets TEI clients pick one here
    instruction: Instruction | None = None


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
