"""rerankq's exceptions. Catch ``RerankError`` to catch them all::

RerankError
├── InvalidRequest   (also ValueError)    bad input; names the field and the limit; nothing enqueued
├── ModelLoadError                         a worker cannot load or serve a model (missing file, bad config)
├── JobFailed                              the worker reported a failure for this job id
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


class ModelLoadError(RerankError):
    """A model cannot be loaded; the message says what is missing or mismatched and how to fix it."""


class JobFailed(RerankError):
    """The worker finished the job with an error."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(job_id, reason)

    def __str__(self) -> str:
        return f"job {self.job_id} failed: {self.reason}"


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
