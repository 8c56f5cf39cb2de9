"""Names shared by producers and workers: task names, queue names, Redis key prefixes."""

from __future__ import annotations

from typing import Final, Literal

TASK_RERANK: Final = "rerankq.rerank"
# Celery state of a job moved to its model's cpu lane, until a CPU worker starts it.
STATE_REROUTED: Final = "REROUTED"

Lane = Literal["interactive", "bulk", "cpu"]
LANES: Final[tuple[Lane, ...]] = ("interactive", "bulk", "cpu")
DEFAULT_LANE: Final[Lane] = "interactive"

KEY_PREFIX: Final = "rerankq"
DELIVERIES_KEY_PREFIX: Final = f"{KEY_PREFIX}:deliveries:"
SCORE_KEY_PREFIX: Final = f"{KEY_PREFIX}:score:"  # + "<model>:<hash>" -> score (result cache)
MODEL_IDENTITY_KEY_PREFIX: Final = f"{KEY_PREFIX}:identity:"  # + "<model>" -> identity of the serving weights
CACHE_STATS_KEY: Final = f"{KEY_PREFIX}:cache:stats"  # hash: hits, misses

# Model names become part of Redis queue names; keep them to a safe alphabet.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def queue_name(model: str, lane: Lane = DEFAULT_LANE) -> str:
    """The Redis queue one model's jobs of one lane travel on, e.g. ``rerankq.bge-reranker-v2-m3.interactive``."""
    return f"{KEY_PREFIX}.{model}.{lane}"


def deliveries_key(job_id: str) -> str:
    return f"{DELIVERIES_KEY_PREFIX}{job_id}"


def model_identity_key(model: str) -> str:
    return f"{MODEL_IDENTITY_KEY_PREFIX}{model}"
