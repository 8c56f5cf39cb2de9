"""One typed settings object for both sides, read from ``RERANKQ_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob rerankq reads. Environment: ``RERANKQ_<FIELD>`` (e.g. ``RERANKQ_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="RERANKQ_", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    # With a sentinel:// redis_url (or cache_url): the name the sentinels monitor the primary under.
    redis_sentinel_master: str = "mymaster"
    default_model: str = "bge-reranker-v2-m3"
    # Your own model manifests (and, beside them, local weights): they add to the manifests shipped
    # in the package and override one of the same name. None: the shipped ones alone.
    models_dir: Path | None = None

    # Result cache. A separate Redis lets the cache evict (allkeys-lru) while the broker never does.
    cache_enabled: bool = True
    cache_url: str | None = None  # None: the broker's Redis
    cache_ttl_s: int = Field(7 * 86_400, ge=1)
    cache_timeout_s: float = Field(0.25, gt=0)  # a slow or dead cache must not stall reranking
    identity_refresh_s: float = Field(5.0, ge=0)  # how long a producer trusts a model identity it read
    # How long a producer (SDK, gateway, bulk run) trusts the alias table it read: the longest an
    # alias change (a rollout step, a rollback) takes to reach every producer.
    alias_refresh_s: float = Field(2.0, ge=0)

    # Input limits, enforced by the producer before anything is enqueued and again by the worker.
    max_documents: int = Field(1000, ge=1)
    max_query_chars: int = Field(20_000, ge=1)
    max_document_chars: int = Field(100_000, ge=1)

    # Delivery guarantees. The visibility timeout must exceed the job time limit, or Redis
    # would hand a still-running job to a second worker.
    job_time_limit_s: int = Field(300, ge=1)
    visibility_timeout_s: int = Field(3600, ge=1)
    max_deliveries: int = Field(3, ge=1)
    result_ttl_s: int = Field(86_400, ge=1)

    # Worker-side batching (see rerankq.worker.batcher.Batcher for what each knob does).
    token_budget: int = Field(16_384, ge=1)
    max_batch_pairs: int | None = Field(None, ge=1)  # None: 128 on a GPU, 32 on CPU (batch_pairs_for)
    max_wait_ms: float = Field(5.0, ge=0)
    max_length: int | None = Field(None, ge=8)  # None: the model manifest's max_length
    # Long documents (rerankq.producer.text_options): the query's most of max_length (the document always
    # keeps the rest), the default windows per document when chunking, and the most chunk pairs
    # one job may ask for (documents x max_chunks_per_doc), refused before enqueueing.
    query_share: float = Field(0.75, gt=0, lt=1)
    max_chunks_per_doc: int = Field(10, ge=1)
    max_chunk_pairs: int = Field(10_000, ge=1)
    # Padded tokens in one bulk forward pass while interactive jobs are about: what an
    # interactive job may wait behind (a forward pass cannot be interrupted).
    bulk_busy_token_budget: int = Field(2048, ge=1)
    # Off: each job gets its own forward pass (the common Celery recipe; for comparison only).
    cross_job_batching: bool = True
    torch_threads: int | None = Field(None, ge=1)  # None: torch's default (one per core)
    # At start a worker scores the golden set and refuses a model that ranks a pair the wrong way
    # round. Off only for random-weight models (tests, benchmark shapes); NaN, constant or all-zero
    # scores refuse a model either way (see rerankq.worker.validation).
    check_ranking: bool = True

    # Out-of-memory handling (see rerankq.worker.batcher / rerankq.worker.oom).
    max_consecutive_ooms: int = Field(16, ge=1)
    # Fault injection, off unless set: the backend raises torch.OutOfMemoryError when a batch holds
    # more padded tokens, or a pair more tokens, than these. For tests and drills without a GPU.
    fault_oom_batch_tokens: int | None = Field(None, ge=1)
    fault_oom_pair_tokens: int | None = Field(None, ge=1)
    # Fault injection, off unless set: a job whose query contains this text kills its worker
    # process mid-job (as a segfault or the kernel's OOM killer would). For reliability drills.
    fault_crash_marker: str | None = None

    # Bulk runs (rerankq.producer.bulk): a record with more documents becomes several jobs of this size;
    # a run keeps at most this many jobs in Redis at once. Keep the sum over concurrent runs below
    # the workers' total --concurrency, so interactive jobs always find a free job slot.
    bulk_job_documents: int = Field(64, ge=1)
    bulk_max_in_flight: int = Field(16, ge=1)

    # A job of at most slow_job_pairs documents that takes longer than this on a worker (queue
    # wait included) is logged as a warning ("slow_job"). None: 200 ms on a GPU, off on CPU.
    slow_job_ms: float | None = Field(None, gt=0)
    slow_job_pairs: int = Field(20, ge=1)
    # Serve the worker's Prometheus metrics on this port (0: off); see rerankq.worker.metrics.
    worker_metrics_port: int = Field(0, ge=0, le=65535)

    # Worker presence (rerankq.producer.presence): how often each worker refreshes its entry; an entry
    # older than three intervals counts as a dead worker.
    presence_interval_s: float = Field(5.0, gt=0)

    # HTTP gateway (gateway/). API keys: comma-separated, each a key or "sha256:<hex digest>".
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    # Static aliases (JSON): a name for one model version, or a traffic split by weight, e.g.
    # {"rerank-v3.5": "bge-reranker-v2-m3", "zh": {"zh-v1": 90, "zh-v2": 10}}. Aliases set with
    # `rerankq models alias` live in Redis and override these (see rerankq.producer.aliases).
    model_aliases: dict[str, str | dict[str, int]] = {}
    gateway_timeout_s: float = Field(30.0, gt=0)  # longer: 504 with the job id, poll /v1/jobs/{id}
    max_queue_depth: int = Field(1000, ge=1)  # jobs waiting in one lane; more: 429
    retry_after_s: int = Field(2, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # refused before parsing: 413
    max_waiting_requests: int = Field(2000, ge=1)  # requests one gateway process holds open; more: 503
    # An idle keep-alive connection is closed after this long. Longer than clients and load
    # balancers keep theirs (httpx 5 s, aiohttp 15 s, AWS ALB and nginx 60 s), so the client always
    # closes first: at uvicorn's default of 5 s a request sent on a connection the gateway was
    # closing that instant was reset (seen in the burst drill).
    gateway_keep_alive_s: int = Field(65, ge=1)
    public_metrics: bool = False  # serve /metrics without an API key
    callback_secret: SecretStr | None = None  # HMAC-SHA256 key signing job callbacks
    callback_attempts: int = Field(6, ge=1)
    callback_timeout_s: float = Field(10.0, gt=0)
    # Callbacks to private, loopback or link-local addresses are refused (server-side request
    # forgery); allow them only where every client is trusted (see rerankq.gateway.callback_targets).
    callback_allow_private: bool = False

    # `rerankq flower`: "user:password" pairs, comma-separated, for Flower's basic auth.
    flower_basic_auth: SecretStr | None = None

    # Where `rerankq bench --shape` builds random-weight models of a real architecture.
    shapes_dir: Path = Path.home() / ".cache" / "rerankq" / "shapes"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _visibility_outlasts_jobs(self) -> Settings:
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must be larger than "
                f"job_time_limit_s ({self.job_time_limit_s})"
            )
        return self

    def batch_pairs_for(self, device: str) -> int:
        """On CPU, throughput per token stops growing past a few dozen pairs, while smaller batches
        of length-sorted pairs carry less padding (measured: 32 pairs per pass gave +23 % over
        128 on the CPU benchmark). A GPU needs wide batches to fill."""
        if self.max_batch_pairs is not None:
            return self.max_batch_pairs
        return 128 if device.startswith("cuda") else 32

    def slow_job_ms_for(self, device: str) -> float | None:
        if self.slow_job_ms is not None:
            return self.slow_job_ms
        return 200.0 if device.startswith("cuda") else None

    @property
    def effective_cache_url(self) -> str:
        return self.cache_url or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
