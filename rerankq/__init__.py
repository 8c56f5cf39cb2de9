"""rerankq: cross-encoder reranking behind a Celery task queue on Redis.

The public API, re-exported here the way httpx does it::

    from rerankq import RerankClient, AsyncRerankClient, RerankResult, RerankError

``import rerankq`` is light: the names below are imported on first use (PEP 562), so a web app,
the gateway and ``rerankq --version`` never load the worker side, and nothing here imports torch.
The worker lives in ``rerankq.worker``, the HTTP gateway in ``rerankq.gateway``.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from rerankq.errors import (
    BrokerUnavailable,
    HubUnreachable,
    IncompatibleFormat,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    ModelCheckFailed,
    ModelLoadError,
    NoWorkers,
    QueueFull,
    RequestTooLarge,
    RerankError,
    UnknownModel,
    UnsupportedLibraries,
)

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports them lazily
    from rerankq.core.contract import JobStats, RankedDocument, RerankResult
    from rerankq.core.settings import Settings, get_settings
    from rerankq.producer.async_client import AsyncRerankClient
    from rerankq.producer.client import RerankClient
    from rerankq.producer.job_handles import AsyncJobHandle, JobHandle
    from rerankq.producer.job_status import JobStatus
    from rerankq.producer.rank_many import BulkDocument, BulkRanked, BulkRecord, RecordResult


def _version() -> str:
    try:
        return metadata.version("rerankq")
    except metadata.PackageNotFoundError:  # a bare checkout on sys.path, never installed
        return "0+unknown"


__version__ = _version()

# public name -> the module that defines it (imported on first access)
_LAZY = {
    "AsyncRerankClient": "rerankq.producer.async_client",
    "RerankClient": "rerankq.producer.client",
    "AsyncJobHandle": "rerankq.producer.job_handles",
    "JobHandle": "rerankq.producer.job_handles",
    "JobStatus": "rerankq.producer.job_status",
    "JobStats": "rerankq.core.contract",
    "RankedDocument": "rerankq.core.contract",
    "RerankResult": "rerankq.core.contract",
    "BulkDocument": "rerankq.producer.rank_many",
    "BulkRanked": "rerankq.producer.rank_many",
    "BulkRecord": "rerankq.producer.rank_many",
    "RecordResult": "rerankq.producer.rank_many",
    "Settings": "rerankq.core.settings",
    "get_settings": "rerankq.core.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rerankq' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AsyncJobHandle",
    "AsyncRerankClient",
    "BrokerUnavailable",
    "BulkDocument",
    "BulkRanked",
    "BulkRecord",
    "HubUnreachable",
    "IncompatibleFormat",
    "InvalidRequest",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStats",
    "JobStatus",
    "JobTimeout",
    "ModelCheckFailed",
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
    "UnsupportedLibraries",
    "__version__",
    "get_settings",
]
