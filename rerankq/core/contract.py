"""The wire contract: job and result schemas and the input rules both sides enforce.

Producers validate before enqueueing (nothing is sent for a rejected request); workers validate
again, because a queue accepts messages from anyone.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from rerankq.core.constants import DEFAULT_LANE, MODEL_NAME_PATTERN, SCORE_KEY_PREFIX, Lane
from rerankq.core.settings import Settings
from rerankq.core.text_options import TextOptions, check_chunk_pairs
from rerankq.core.wire_format import JOB_FORMAT, RESULT_FORMAT
from rerankq.errors import InvalidRequest, RequestTooLarge, did_you_mean


class RerankJob(BaseModel):
    """One query against N documents, as it travels on the queue (JSON). Read with ``read_job``:
    fields of a newer minor format are kept, not refused (rerankq.core.wire_format)."""

    model_config = ConfigDict(extra="allow")

    format: str = JOB_FORMAT.version
    job_id: str
    model: str  # the model version that serves it (an alias is resolved before the job is sent)
    alias: str | None = None  # the alias the caller asked for, when it asked by alias
    query: str
    documents: list[str]
    lane: Lane = DEFAULT_LANE  # stays "bulk" for a bulk job moved to the cpu lane
    top_n: int | None = None
    return_documents: bool = False
    normalize: bool = True
    text: TextOptions = TextOptions()  # token limits, truncation, chunking (rerankq.core.text_options)
    instruction: str | None = None  # LLM rerankers: the task in words (None: the model's default)
    enqueued_at: float = Field(default_factory=time.time)
    # Result cache (see rerankq.producer.score_cache): ``cache=False`` neither reads nor writes it.
    # ``cached_scores`` holds what the producer found under ``cache_identity``; the worker uses
    # them only if that is its own model identity, so one result never mixes model versions.
    cache: bool = True
    cache_identity: str | None = None
    cached_scores: dict[int, float] = {}
    # Set when a GPU worker ran out of memory and moved the job to the cpu lane.
    rerouted_from: str | None = None


MAX_REQUESTED_MODEL_CHARS = 256


class JobOptions(TypedDict, total=False):
    """The per-job keyword arguments every SDK entry point takes."""

    model: str | None  # None: the configured default model
    top_n: int | None  # None: every document
    return_documents: bool  # attach each document's text to its result
    normalize: bool  # sigmoid into [0, 1] (default) or raw logits
    cache: bool  # read and write the result cache (default True)
    instruction: str | None  # LLM rerankers only: what relevance means here (None: the model's default)
    # Long documents (see rerankq.core.text_options): tokens per pair, per document, truncation side,
    # and chunk-and-aggregate scoring.
    max_length: int | None
    max_tokens_per_doc: int | None
    truncation_direction: str  # "right" (default) or "left"
    long_documents: str  # "truncate" (default) or "chunk"
    chunk_tokens: int | None
    chunk_overlap: int
    max_chunks_per_doc: int | None
    aggregate: str  # "max" (default), "mean" or "first"


class RankedDocument(BaseModel):
    """One document's place in the answer: its input position, its score, its text when asked."""

    model_config = ConfigDict(frozen=True)

    index: int
    score: float
    document: str | None = None
    # chunked documents: the best window's character span [start, end) and how many were scored
    span: tuple[int, int] | None = None
    chunks: int | None = None


class JobStats(BaseModel):
    """Where the job's time went, and which forward passes (batch ids) its pairs rode in."""

    pairs: int = 0  # pairs scored by the model for this job
    tokens: int = 0  # tokens those pairs held (no padding): what the model read for this job
    cache_hits: int = 0  # documents answered from the result cache
    queue_ms: float = 0.0
    tokenize_ms: float = 0.0
    infer_ms: float = 0.0
    batches: list[str] = []
    # forward passes that started after the job reached the batcher and before its first one:
    # the work it waited behind (an interactive job behind bulk work waits for at most one)
    waited_batches: int = 0
    # infer_ms in parts (format 1.2): from reaching the batcher to its first forward pass, and the
    # forward passes its pairs rode in; finished_at: when the worker had the answer (epoch seconds)
    batch_wait_ms: float = 0.0
    forward_ms: float = 0.0
    finished_at: float | None = None


class RerankResult(BaseModel):
    """What a finished job returns: ranked documents plus who served it and how long it took.
    Read with ``read_result``: fields of a newer minor format are ignored."""

    format: str = RESULT_FORMAT.version
    job_id: str
    model: str  # the exact model version that scored it ...
    revision: str | None = None  # ... and its revision (pinned hub revision, or a hash of the weights)
    alias: str | None = None  # the alias the job was sent to, if any
    device: str
    backend: str = "torch"  # what ran the forward passes: torch, onnx or onnx-int8 (format 1.1)
    results: list[RankedDocument]
    stats: JobStats = Field(default_factory=JobStats)
    rerouted_from: str | None = None  # the device that ran out of memory before ``device`` served it
    traceparent: str | None = None  # the worker's span for the job, W3C trace context, when traced (format 1.3)


def read_job(payload: Any) -> RerankJob:
    """A job message as a worker reads it: ``IncompatibleFormat`` for a major it cannot read,
    pydantic's ``ValidationError`` for a message that breaks the schema."""
    if isinstance(payload, Mapping):
        JOB_FORMAT.check(payload, RerankJob.model_fields)
    return RerankJob.model_validate(payload)


def read_result(payload: Any) -> RerankResult:
    """A stored result as a producer reads it (``IncompatibleFormat`` for a major it cannot read)."""
    if isinstance(payload, Mapping):
        RESULT_FORMAT.check(payload, RerankResult.model_fields)
    return RerankResult.model_validate(payload)


def new_job_id() -> str:
    """A UUID version 7: 48 bits of Unix milliseconds, then random bits. Written here because
    Python's uuid module gains uuid7() only in 3.14; the time lets the ledger tell an expired
    record from an id never submitted."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((random >> 64) & 0xFFF) << 64 | (0b10 << 62) | (random & (2**62 - 1))
    return str(uuid.UUID(int=value))


def created_at(job_id: str) -> float | None:
    """When a version 7 id was made (None for any other id: the gateway takes callers' own)."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        return None
    return (parsed.int >> 80) / 1000 if parsed.version == 7 else None


def build_job(
    query: Any,
    documents: Any,
    *,
    model: str,
    lane: Lane = DEFAULT_LANE,
    top_n: Any = None,
    return_documents: bool = False,
    normalize: bool = True,
    cache: bool = True,
    text: TextOptions | None = None,
    instruction: Any = None,
    settings: Settings,
) -> RerankJob:
    """Check every rule and build the job; raises ``InvalidRequest`` naming the field and the limit.
    ``model`` is the name as asked (an alias, a version or a Hugging Face id), resolved when sent."""
    check_requested_model(model)
    check_query(query, settings)
    docs = check_documents(documents, settings)
    check_top_n(top_n)
    check_instruction(instruction, settings)
    text = text or TextOptions()
    check_chunk_pairs(len(docs), text, settings)
    return RerankJob(
        job_id=new_job_id(),
        model=model,
        query=query,
        documents=docs,
        lane=lane,
        top_n=top_n,
        return_documents=bool(return_documents),
        normalize=bool(normalize),
        cache=bool(cache),
        text=text,
        instruction=instruction,
    )


def check_job(job: RerankJob, settings: Settings) -> None:
    """The worker's re-check of a job that arrived on the queue."""
    check_model_name(job.model)
    check_query(job.query, settings)
    check_documents(job.documents, settings)
    check_top_n(job.top_n)
    check_instruction(job.instruction, settings)
    check_chunk_pairs(len(job.documents), job.text, settings)
    if any(not 0 <= i < len(job.documents) for i in job.cached_scores):
        raise InvalidRequest("cached_scores", f"indices must lie in 0..{len(job.documents) - 1}")


def check_model_name(model: Any, field: str = "model") -> None:
    """A model version's (or an alias's) own name: it becomes part of Redis queue names."""
    if not isinstance(model, str) or not re.match(MODEL_NAME_PATTERN, model):
        raise InvalidRequest(field, "must match " + MODEL_NAME_PATTERN, f"got {model!r}")


def check_requested_model(model: Any) -> None:
    """A name a caller asks for: a version, an alias, or a Hugging Face id (``BAAI/bge-reranker-v2-m3``)."""
    if not isinstance(model, str) or not 0 < len(model) <= MAX_REQUESTED_MODEL_CHARS or not model.isprintable():
        raise InvalidRequest(
            "model", f"must be a model name of 1 to {MAX_REQUESTED_MODEL_CHARS} characters", f"got {model!r}"
        )


def check_option_names(options: Mapping[str, Any]) -> None:
    """A misspelled keyword (``topn=1``) is a ``TypeError`` naming it, as Python raises for any
    unexpected keyword argument, never silently ignored."""
    if unknown := sorted(set(options) - set(JobOptions.__annotations__)):
        hints = [f"{name!r}" + _did_you_mean(name) for name in unknown]
        raise TypeError(
            f"unexpected keyword argument {', '.join(hints)}; options: {', '.join(JobOptions.__annotations__)}"
        )


def _did_you_mean(name: str) -> str:
    return did_you_mean(close_match(name, JobOptions.__annotations__))


def close_match(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name``, case aside (difflib's ratio of 0.6 or more), if any: a
    hint for an error message, never a name to use instead of the one given."""
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(candidate.casefold(), candidate)
    close = difflib.get_close_matches(name.casefold(), by_folded, n=1)
    return by_folded[close[0]] if close else None


def check_query(query: Any, settings: Settings) -> None:
    if not isinstance(query, str):
        raise InvalidRequest("query", "must be a non-empty string", f"got {_kind(query)}")
    _check_visible("query", query)
    _check_text("query", query, settings.max_query_chars)


def check_instruction(instruction: Any, settings: Settings) -> None:
    """None (the model's default) or visible text within the query's limit."""
    if instruction is None:
        return
    if not isinstance(instruction, str):
        raise InvalidRequest("instruction", "must be a string of visible text or None", f"got {instruction!r:.80}")
    _check_visible("instruction", instruction)
    _check_text("instruction", instruction, settings.max_query_chars)


def _check_visible(field: str, text: str) -> None:
    if (problem := invisible_text(text)) is not None:
        raise InvalidRequest(field, *problem)


def invisible_text(text: str) -> tuple[str, str] | None:
    """Why ``text`` breaks the visible-text rule, as an ``InvalidRequest``'s (limit, detail), or
    None when it holds a visible character. The one home of the rule's words: the SDK's checks say
    them, and so does the gateway where its schema's ``visible_text_pattern`` refuses a field."""
    if not text.strip():
        return "must be a non-empty string", "got only whitespace" if text else "got an empty string"
    if not any(_visible(char) for char in text):
        return "must hold visible text", "got only whitespace, control or zero-width characters"
    return None


def check_documents(documents: Any, settings: Settings) -> list[str]:
    if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
        raise InvalidRequest("documents", "must be a list of strings", f"got {_kind(documents)}")
    if len(documents) > settings.max_documents:
        raise RequestTooLarge(
            "documents", f"at most {settings.max_documents} documents per job", f"got {len(documents)}"
        )
    check_document_texts(documents, settings)
    return list(documents)


def check_document_texts(documents: Sequence[Any], settings: Settings) -> None:
    """Each document a string within the per-document limit (no limit on how many)."""
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise InvalidRequest(f"documents[{i}]", "must be a string", f"got {_kind(doc)}")
        _check_text(f"documents[{i}]", doc, settings.max_document_chars)


def check_top_n(top_n: Any) -> None:
    if top_n is None:
        return
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise InvalidRequest("top_n", "must be a positive integer or None", f"got {top_n!r}")


def _check_text(field: str, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise RequestTooLarge(field, f"at most {max_chars} characters", f"got {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(field, "must be valid Unicode text", f"unpaired surrogate at {e.start}") from e


# Characters that carry no text: separators (spaces), controls, and format characters (zero-width
# ones). Private-use and not-yet-assigned code points count as text: fonts and newer Unicode
# versions give them glyphs.
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def _visible(char: str) -> bool:
    return unicodedata.category(char) not in INVISIBLE_CATEGORIES


@functools.cache  # 65,536 look-ups: built when a gateway needs it, not when the SDK is imported
def visible_text_pattern() -> str:
    """The same rule as a regular expression (JSON Schema's ``pattern``, searched anywhere): one
    character outside the invisible ones of the Basic Multilingual Plane."""
    ranges: list[list[int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or unicodedata.category(chr(code)) not in INVISIBLE_CATEGORIES:
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    spans = "".join(f"\\u{low:04x}" + (f"-\\u{high:04x}" if high > low else "") for low, high in ranges)
    return f"[^{spans}]"


def _kind(value: Any) -> str:
    return type(value).__name__


def score_options(job: RerankJob) -> str:
    """Every per-job option that changes a score, canonically. The worker's own settings that
    change scores (weights, default max_length) are part of its model identity instead."""
    options = f"normalize={int(job.normalize)};{job.text.pair_options()}"
    # last, so its text cannot be read as another option; absent for most jobs, whose keys stay as they were
    return options if job.instruction is None else f"{options};instruction={job.instruction}"


def model_identity(
    name: str, revision: str, kind: str, fingerprint: str, max_length: int, query_share: float, backend: str = "torch"
) -> str:
    """What cached scores are keyed on: which weights, and the worker settings that change scores.
    Workers publish it per model; the producer reads the revision back out of it for answers it
    makes from the cache alone. An ONNX backend's scores differ from torch's (int8: by about 1e-2),
    so it names itself and its scores never answer for torch's, nor torch's for it."""
    settings = f"max_length={max_length};query_share={query_share}"
    if backend != "torch":  # torch's identity stays as before the ONNX backends: its cache stays warm
        settings += f";backend={backend}"
    return f"{name}@{revision}|{kind}|{fingerprint}|{settings}"


def kind_of(identity: str) -> str:
    """The model kind in an identity (``cross-encoder``, ``qwen3-reranker``, ...), template aside."""
    parts = identity.split("|")
    return parts[1].split("+", 1)[0] if len(parts) > 1 else ""


def backend_of(identity: str | None) -> str:
    """What computed the scores under an identity: ``torch`` unless it names an ONNX backend."""
    settings = (identity or "").rsplit("|", 1)[-1]
    named = [part.split("=", 1)[1] for part in settings.split(";") if part.startswith("backend=")]
    return named[0] if named else "torch"


def revision_of(identity: str | None) -> str | None:
    if identity is None or "@" not in identity:
        return None
    return identity.split("|", 1)[0].split("@", 1)[1]


def cache_key(model: str, identity: str, options: str, query: str, document: str) -> str:
    """The result-cache key of one pair. Each field is length-prefixed before hashing, so no two
    different (identity, options, query, document) tuples can feed the hash the same bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for text in (identity, options, query, document):
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return f"{SCORE_KEY_PREFIX}{model}:{digest.hexdigest()}"


def rank_scores(
    scores: Sequence[float], top_n: int | None, documents: Sequence[str] | None = None
) -> list[RankedDocument]:
    """Sort by score, highest first (ties keep input order), cut to ``top_n``, attach text if given."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]
    return [
        RankedDocument(index=i, score=scores[i], document=documents[i] if documents is not None else None)
        for i in order
    ]


def answer_from_cache(job: RerankJob) -> RerankResult:
    """The result of a job whose every document was in the cache: no queue, no model."""
    scores = [job.cached_scores[i] for i in range(len(job.documents))]
    return RerankResult(
        job_id=job.job_id,
        model=job.model,
        revision=revision_of(job.cache_identity),
        alias=job.alias,
        device="cache",
        backend=backend_of(job.cache_identity),
        results=rank_scores(scores, job.top_n, job.documents if job.return_documents else None),
        stats=JobStats(cache_hits=len(scores)),
    )
