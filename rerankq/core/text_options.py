"""How a job's texts become model input: token limits, truncation, and chunking of long documents.

- ``truncate`` (default): each document is cut to what fits beside the query in ``max_length``
  tokens, and to at most ``max_tokens_per_doc`` tokens, keeping its start (``truncation_direction``
  ``right``) or its end (``left``). One pair per document; the rest of the text is not read.
- ``chunk``: each document (its first ``max_tokens_per_doc`` tokens, if set) is cut into windows of
  ``chunk_tokens`` tokens (default: all that fits beside the query) overlapping by
  ``chunk_overlap``, at most ``max_chunks_per_doc`` of them. Every window is scored as an ordinary
  pair (same batcher, same cache), and the document's score is the ``max``, ``mean`` or ``first``
  of its windows' scores; its result names the best window's character span.

The query never takes more than ``RERANKQ_QUERY_SHARE`` (3/4) of ``max_length``, so every
document keeps room. Token counts are the model's own tokenizer's, so they are resolved on the
worker; the producer checks everything that does not need a tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from rerankq.core.settings import Settings
from rerankq.errors import RequestTooLarge, invalid_request

TEXT_OPTIONS = (
    "max_length",
    "max_tokens_per_doc",
    "truncation_direction",
    "long_documents",
    "chunk_tokens",
    "chunk_overlap",
    "max_chunks_per_doc",
    "aggregate",
)
Aggregate = Literal["max", "mean", "first"]


def json_integer(value: Any) -> Any:
    """An integer as JSON Schema means it (``5``, ``5.0``), not ``true`` or ``"5"`` (which lax
    parsing would read as 1 and 5)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise ValueError("must be an integer")
    return int(value)


# The options' types, also the gateway's request schema (one rule each). The bounds come first,
# so the JSON schema states them (minimum, maximum); the integer check wraps them.
MaxLength = Annotated[int, Field(ge=8, le=131_072), BeforeValidator(json_integer)]  # capped by the model's limit
PositiveTokens = Annotated[int, Field(ge=1), BeforeValidator(json_integer)]
ChunkTokens = Annotated[int, Field(ge=8), BeforeValidator(json_integer)]
ChunkOverlap = Annotated[int, Field(ge=0), BeforeValidator(json_integer)]
TruncationDirection = Literal["right", "left", "Right", "Left"]  # TEI sends "Right" / "Left"
LongDocuments = Literal["truncate", "chunk"]


class TextOptions(BaseModel):
    """The per-job text options (all optional); see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: MaxLength | None = None
    max_tokens_per_doc: PositiveTokens | None = None
    truncation_direction: Literal["right", "left"] = "right"
    long_documents: LongDocuments = "truncate"
    chunk_tokens: ChunkTokens | None = None
    chunk_overlap: ChunkOverlap = 0
    max_chunks_per_doc: PositiveTokens | None = None  # None: RERANKQ_MAX_CHUNKS_PER_DOC
    aggregate: Aggregate = "max"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # TEI sends "Right" / "Left"

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> TextOptions:
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self

    @property
    def chunked(self) -> bool:
        return self.long_documents == "chunk"

    def chunks_per_doc(self, settings: Settings) -> int:
        return self.max_chunks_per_doc or settings.max_chunks_per_doc

    def pair_options(self) -> str:
        """What changes one pair's score, canonically (part of its cache key). Chunk settings are
        not: a window is cached as the text it is, and its score does not depend on its siblings."""
        return (
            f"max_length={self.max_length or 0};max_tokens_per_doc={self.max_tokens_per_doc or 0};"
            f"truncation={self.truncation_direction}"
        )


def text_options(options: Mapping[str, Any]) -> TextOptions:
    """The text options among an SDK call's keyword arguments; InvalidRequest names a bad one."""
    given = {name: options[name] for name in TEXT_OPTIONS if options.get(name) is not None}
    try:
        return TextOptions(**given)
    except ValidationError as e:
        raise invalid_request(e.errors(), "chunk_overlap") from e


def check_chunk_pairs(documents: int, text: TextOptions, settings: Settings) -> None:
    """Chunking multiplies a job's pairs; bound them before anything is enqueued."""
    if not text.chunked:
        return
    most = documents * text.chunks_per_doc(settings)
    if most > settings.max_chunk_pairs:
        raise RequestTooLarge(
            "max_chunks_per_doc",
            f"documents x max_chunks_per_doc must be at most {settings.max_chunk_pairs} pairs per job",
            f"got {documents} x {text.chunks_per_doc(settings)} = {most}",
        )
