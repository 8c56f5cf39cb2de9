"""rerankq's producer SDK: what web apps and batch jobs import. Light: never imports torch."""

from rerankq.errors import (
    BrokerUnavailable,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    ModelLoadError,
    NoWorkers,
    QueueFull,
    RequestTooLarge,
    RerankError,
    UnknownModel,
)
from rerankq.producer.aio import AsyncRerankClient
from rerankq.producer.bulk import BulkDocument, BulkRanked, BulkRecord, RecordResult
from rerankq.producer.client import RerankClient
from rerankq.producer.contract import JobStats, RankedDocument, RerankResult
from rerankq.producer.job_status import JobStatus
from rerankq.producer.jobs import AsyncJobHandle, JobHandle
from rerankq.producer.settings import Settings, get_settings

__all__ = [
    "AsyncJobHandle",
    "AsyncRerankClient",
    "BrokerUnavailable",
    "BulkDocument",
    "BulkRanked",
    "BulkRecord",
    "InvalidRequest",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStats",
    "JobStatus",
    "JobTimeout",
    "ModelLoadError",
    "NoWorkers",
    "QueueFull",
    "RankedDocument",
    "RecordResult",
    "RequestTooLarge",
    "RerankClient",
    "RerankError",
    "RerankResult",
    "Settings",
    "UnknownModel",
    "get_settings",
]
