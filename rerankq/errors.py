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
│   └── ModelCheckFailed                   a model failed a validation check; says which, what is wrong, the fix
├── IncompatibleFormat                     a job, result or alias record of a format major this release cannot read
├── JobFailed                              the worker reported a failure for this job id
│   └── JobCancelled                       the job was cancelled before a worker started it
└── JobTimeout       (also TimeoutError)   no result within the caller's timeout; the job may still finish
"""

from __future__ import annotations


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


class RequestTooLarge(InvalidRequest):
    """A size limit: too many documents, or a text with too many characters."""


class UnknownModel(RerankError, LookupError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = known
        super().__init__(model, known)

    def __str__(self) -> str:
        return f"unknown model {self.model!r}; known models: {', '.join(self.known) or 'none'}"


class NoWorkers(RerankError):
    def __init__(self, model: str, lane: str) -> None:
        self.model = model
        self.lane = lane
        super().__init__(model, lane)

    def __str__(self) -> str:
        return (
            f"no live worker consumes the {self.lane} lane of model {self.model!r}; "
            f"start one with `rerankq worker --model {self.model}`"
        )


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
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(job_id)

    def __str__(self) -> str:
        return f"no job {self.job_id!r} (never submitted, or its result expired)"


class BrokerUnavailable(RerankError, ConnectionError):
    """Redis, the queue, could not be reached. Raised while sending (nothing was enqueued) or
    while waiting (the job may still finish: ask again once Redis is back)."""

    def __init__(self, action: str, detail: str) -> None:
        self.action = action
        self.detail = detail
        super().__init__(action, detail)

    def __str__(self) -> str:
        return f"the queue (Redis) is unreachable while {self.action}: {self.detail}; retry shortly"


class ModelLoadError(RerankError):
    """A model cannot be loaded; the message says what is missing or mismatched and how to fix it."""


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
    """A record from another release whose format this one cannot read (rerankq.producer.wire_format)."""

    def __init__(self, kind: str, found: str, supported: str, hint: str) -> None:
        self.kind = kind
        self.found = found
        self.supported = supported
        self.hint = hint
        super().__init__(kind, found, supported, hint)

    def __str__(self) -> str:
        reads = f"it reads {self.supported}"
        return f"{self.kind} format {self.found} cannot be read by this release ({reads}): {self.hint}"


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
