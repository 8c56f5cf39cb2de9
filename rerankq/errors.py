"""rerankq's exceptions. Catch ``RerankError`` to catch them all::

RerankError
├── InvalidRequest   (also ValueError)    bad input; names the field and the limit; nothing enqueued
│   └── RequestTooLarge                    too many documents or characters (HTTP 413 at the gateway)
├── UnknownModel     (also LookupError)   no model of that name; lists the known ones
├── NoWorkers                              the model is known but no live worker consumes its lane
├── QueueFull                              the lane's queue is deeper than its limit: retry later
├── JobNotFound      (also LookupError)   no job with that id (never submitted, or expired)
├── BrokerUnavailable (also ConnectionError) Redis cannot be reached (down, restarting): retry shortly
├── ModelLoadError                         a worker cannot load or serve a model (missing file, bad config)
│   ├── HubUnreachable                     weights not in the local cache, and the Hugging Face hub unreachable
│   └── ModelCheckFailed                   a model failed a validation check; says which, what is wrong, the fix
├── IncompatibleFormat                     a job, result or alias record of a format major this release cannot read
├── UnsupportedLibraries                   a worker's Celery, kombu or redis-py is not one this release was tested on
├── JobFailed                              the worker reported a failure for this job id
│   └── JobCancelled                       the job was cancelled before a worker started it
└── JobTimeout       (also TimeoutError)   no result within the caller's timeout; the job may still finish
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# pydantic's names for the member of a union a value was tried against: not part of a field's path
_UNION_TAGS = frozenset({"str", "string", "object", "int", "float", "bool", "list", "dict"})


class RerankError(Exception):
    """Base class of every error rerankq raises on purpose."""


class InvalidRequest(RerankError, ValueError):
    """A request field broke a rule; ``field`` names it (``documents[3]``) and ``limit`` states the rule."""

    def __init__(self, field: str, limit: str, detail: str = "") -> None:
        self.field = field
        self.limit = limit
        self.detail = detail
        # args hold the fields so Celery's JSON error transport can rebuild the exception
        super().__init__(field, limit, detail)

    def __str__(self) -> str:
        message = f"invalid {self.field}: {self.limit}"
        return f"{message} ({self.detail})" if self.detail else message


def invalid_request(errors: Sequence[Mapping[str, Any]], default_field: str, echo_input: bool = True) -> InvalidRequest:
    """The first of pydantic's (or FastAPI's) validation errors as an ``InvalidRequest`` naming
    the field as users write it (``documents[3].text``): the one home of that translation.
    ``echo_input=False`` where the message travels on (a worker's failure goes into task events
    and logs, which must hold no query or document text)."""
    if not errors:
        return InvalidRequest(default_field, "is invalid")
    first = errors[0]
    if first.get("type") == "json_invalid":  # FastAPI: the body is not JSON; loc ends in a position
        position = first.get("loc", ())[-1:]
        return InvalidRequest("body", "must be valid JSON", f"{first.get('msg')} at character {position[0]}")
    detail = f"got {first['input']!r}" if echo_input and "input" in first and _short(first["input"]) else ""
    return InvalidRequest(field_path(first.get("loc", ())) or default_field, error_message(first), detail)


def error_message(error: Mapping[str, Any]) -> str:
    """pydantic's message for one error, without the "Value error, " it puts before a validator's."""
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


def field_path(loc: Sequence[int | str]) -> str:
    """``("body", "documents", 3, "object", "text")`` -> ``documents[3].text``: list positions in
    brackets; FastAPI's "body" and pydantic's union tags dropped."""
    path = ""
    for before, part in zip((None, *loc), loc, strict=False):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "body" and before is None:
            continue
        elif not (part in _UNION_TAGS or part.startswith("function-")):
            path += f".{part}"
    return path.lstrip(".")


def did_you_mean(suggestion: str | None) -> str:
    """`` (did you mean 'top_n'?)``, to follow a refused name; empty without a suggestion."""
    return f" (did you mean {suggestion!r}?)" if suggestion else ""


def _short(value: Any) -> bool:
    return isinstance(value, int | float | bool | None) or (isinstance(value, str) and len(value) <= 80)


class RequestTooLarge(InvalidRequest):
    """A size limit: too many documents, or a text with too many characters."""


class UnknownModel(RerankError, LookupError):
    """No model answers to ``model``. ``known`` lists the names that do; ``suggestion`` is the one
    most like it (a name in the wrong case, a typo), when one is: a hint, never used instead."""

    def __init__(self, model: str, known: list[str], suggestion: str | None = None) -> None:
        self.model = model
        self.known = known
        self.suggestion = suggestion
        super().__init__(model, known, suggestion)

    def __str__(self) -> str:
        unknown = f"unknown model {self.model!r}{did_you_mean(self.suggestion)}"
        return f"{unknown}; known models: {', '.join(self.known) or 'none'}"


class NoWorkers(RerankError):
    """No live worker consumes the lane. ``is_default``: the model is RERANKQ_DEFAULT_MODEL, where
    requests that name no model go (TEI's ``/rerank`` never names one), so the setting is named too."""

    def __init__(self, model: str, lane: str, is_default: bool = False) -> None:
        self.model = model
        self.lane = lane
        self.is_default = is_default
        super().__init__(model, lane, is_default)

    def __str__(self) -> str:
        start = f"start one with `rerankq worker --model {self.model}`"
        if self.is_default:
            default = "the default model (RERANKQ_DEFAULT_MODEL), where requests that name no model go"
            start += ", or set RERANKQ_DEFAULT_MODEL to a model your workers serve"
            return f"no live worker consumes the {self.lane} lane of model {self.model!r}, {default}; {start}"
        return f"no live worker consumes the {self.lane} lane of model {self.model!r}; {start}"


class QueueFull(RerankError):
    def __init__(self, queue: str, depth: int, limit: int, retry_after_s: int) -> None:
        self.queue = queue
        self.depth = depth
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(queue, depth, limit, retry_after_s)

    def __str__(self) -> str:
        return f"queue {self.queue} holds {self.depth} jobs (limit {self.limit}); retry in {self.retry_after_s}s"


class JobNotFound(RerankError, LookupError):
    """No job with that id: never submitted to this Redis, or (``expired_after_s``) its record
    and result expired that long after it was submitted."""

    def __init__(self, job_id: str, expired_after_s: float | None = None) -> None:
        self.job_id = job_id
        self.expired_after_s = expired_after_s
        super().__init__(job_id, expired_after_s)

    def __str__(self) -> str:
        if self.expired_after_s is not None:
            kept = f"{self.expired_after_s:g} s (RERANKQ_RESULT_TTL_S)"
            return f"no job {self.job_id!r} any more: records and results are kept {kept} after submission"
        return f"no job {self.job_id!r}: never submitted to this Redis (or its record expired)"


class BrokerUnavailable(RerankError, ConnectionError):
    """Redis, the queue, could not be used. Raised while sending (nothing was enqueued) or while
    waiting (the job may still finish: ask again once Redis is back). ``answered``: Redis was
    reached and refused (a database number out of range, wrong credentials); else it was not
    reached at all. ``url`` has its password masked."""

    def __init__(self, action: str, detail: str, url: str = "", answered: bool = False) -> None:
        self.action = action
        self.detail = detail
        self.url = url
        self.answered = answered
        super().__init__(action, detail, url, answered)

    def __str__(self) -> str:
        where = f"Redis at {self.url} (RERANKQ_REDIS_URL)" if self.url else "the queue (Redis)"
        if self.answered:
            return f"{where} answered {self.detail!r} while {self.action}: check the URL's database number and password"
        return f"{where} is unreachable while {self.action}: {self.detail}; start Redis or fix the URL, then retry"


class ModelLoadError(RerankError):
    """A model cannot be loaded; the message says what is missing or mismatched and how to fix it."""


class HubUnreachable(ModelLoadError):
    """Weights that are not in the local Hugging Face cache, while the hub cannot be reached."""


class ModelCheckFailed(ModelLoadError):
    """One of ``rerankq models check``'s checks failed (the worker runs the same ones at start)."""

    def __init__(self, check: str, problem: str, fix: str) -> None:
        self.check = check
        self.problem = problem
        self.fix = fix
        super().__init__(check, problem, fix)

    def __str__(self) -> str:
        return f"{self.check} check failed: {self.problem}\n  fix: {self.fix}"


class IncompatibleFormat(RerankError):
    """A record from another release whose format this one cannot read (rerankq.core.wire_format)."""

    def __init__(self, kind: str, found: str, supported: str, hint: str) -> None:
        self.kind = kind
        self.found = found
        self.supported = supported
        self.hint = hint
        super().__init__(kind, found, supported, hint)

    def __str__(self) -> str:
        reads = f"it reads {self.supported}"
        return f"{self.kind} format {self.found} cannot be read by this release ({reads}): {self.hint}"


class UnsupportedLibraries(RerankError):
    """A worker refuses to start: the installed celery, kombu or redis-py is outside the ranges this
    release declares, or lacks a name its delivery layer relies on (rerankq.worker.private_hooks)."""

    def __init__(self, versions: str, problems: str, supported: str) -> None:
        self.versions = versions
        self.problems = problems
        self.supported = supported
        super().__init__(versions, problems, supported)

    def __str__(self) -> str:
        return (
            f"{self.versions} are not what this rerankq was built and tested with ({self.problems}); "
            f"install versions inside {self.supported}"
        )


class JobFailed(RerankError):
    """The worker finished the job with an error."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(job_id, reason)

    def __str__(self) -> str:
        return f"job {self.job_id} failed: {self.reason}"


class JobCancelled(JobFailed):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, "cancelled")

    def __str__(self) -> str:
        return f"job {self.job_id} was cancelled"


class JobTimeout(RerankError, TimeoutError):
    """No result arrived in time. The job is not cancelled; fetch it later by ``job_id``."""

    def __init__(self, job_id: str, timeout: float, status: str, hint: str = "") -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        self.hint = hint
        super().__init__(job_id, timeout, status, hint)

    def __str__(self) -> str:
        message = f"job {self.job_id} gave no result within {self.timeout:g}s (status: {self.status})"
        return f"{message}: {self.hint}" if self.hint else message
