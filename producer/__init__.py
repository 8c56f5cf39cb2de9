"""rerankq's producer SDK: what web apps and batch jobs import. Light: never imports torch."""

from producer.aio import AsyncRerankClient
from producer.client import RerankClient
from producer.contract import JobStats, RankedDocument, RerankResult
from producer.errors import InvalidRequest, JobFailed, JobTimeout, ModelLoadError, RerankError
from producer.jobs import AsyncJobHandle, JobHandle, JobStatus
from producer.settings import Settings, get_settings

__all__ = [
    "AsyncJobHandle",
    "AsyncRerankClient",
    "InvalidRequest",
    "JobFailed",
    "JobHandle",
    "JobStats",
    "JobStatus",
    "JobTimeout",
    "ModelLoadError",
    "RankedDocument",
    "RerankClient",
    "RerankError",
    "RerankResult",
    "Settings",
    "get_settings",
]
