"""Bounds on what one request may make the gateway do, checked before any work.

Every list the API accepts is bounded by a setting (documents, ``rank_fields``, the fields and the
nesting of a document object), so no small body expands into a large amount of work: 200,000
``rank_fields`` over 1,000 object documents (a 1 MB body) once held the event loop for 40 s. A
document object is echoed back with ``return_documents``, so every string in it must be text
UTF-8 can carry: refused here with a 422 naming it, not discovered when the answer is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerankq.core.settings import Settings
from rerankq.errors import InvalidRequest, RequestTooLarge


def check_documents_request(documents: Sequence[Any], rank_fields: Sequence[Any] | None, settings: Settings) -> None:
    if len(documents) > settings.max_documents:
        limit = f"at most {settings.max_documents} documents per job"
        raise RequestTooLarge("documents", limit, f"got {len(documents)}")
    if rank_fields is not None:
        check_rank_fields(rank_fields, settings)
    for i, document in enumerate(documents):
        if isinstance(document, dict):
            check_document_object(f"documents[{i}]", document, settings)


def check_rank_fields(rank_fields: Sequence[Any], settings: Settings) -> None:
    if not rank_fields:
        raise InvalidRequest("rank_fields", "must name at least one field (leave it out to rank by text)")
    if len(rank_fields) > settings.max_rank_fields:
        limit = f"at most {settings.max_rank_fields} fields (RERANKQ_MAX_RANK_FIELDS)"
        raise RequestTooLarge("rank_fields", limit, f"got {len(rank_fields)}")
    for i, field in enumerate(rank_fields):
        _check_text(f"rank_fields[{i}]", field)


def check_document_object(where: str, document: dict[str, Any], settings: Settings) -> None:
    """Fields and nesting within their limits; every key and string valid Unicode. Walked without
    recursion: the walk itself must not be what a deep value breaks."""
    pending: list[tuple[str, Any, int]] = [(where, document, 1)]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            _check_container(path, value, depth, settings)
            for key, child in items:
                if isinstance(key, str):
                    _check_text(f"{path} key", key)
                pending.append((f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]", child, depth + 1))


def _check_container(path: str, value: dict[str, Any] | list[Any], depth: int, settings: Settings) -> None:
    if depth > settings.max_document_depth:
        limit = f"values nested at most {settings.max_document_depth} deep (RERANKQ_MAX_DOCUMENT_DEPTH)"
        raise RequestTooLarge(path, limit)
    if len(value) > settings.max_document_fields:
        limit = f"at most {settings.max_document_fields} fields or items (RERANKQ_MAX_DOCUMENT_FIELDS)"
        raise RequestTooLarge(path, limit, f"got {len(value)}")


def _check_text(field: str, text: Any) -> None:
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(field, "must be valid Unicode text", f"unpaired surrogate at {e.start}") from e
