"""Names shared by producers and workers: task names, queue names, Redis key prefixes."""

from __future__ import annotations

from typing import Final, Literal

TASK_RERANK: Final = "rerankq.rerank"
# Celery state of a job moved to its model's cpu lane, until a CPU worker starts it.
STATE_REROUTED: Final = "REROUTED"

Lane = Literal["interactive", "bulk", "cpu"]
LANES: Final[tuple[Lane, ...]] = ("interactive", "bulk", "cpu")
DEFAULT_LANE: Final[Lane] = "interactive"
# A worker looks at its lanes in this order (kombu's "priority" queue order), and its batcher
# serves pairs in this order too: web traffic, then jobs moved off a GPU, then bulk work.
LANE_PRIORITY: Final[dict[Lane, int]] = {"interactive": 0, "cpu": 1, "bulk": 2}

KEY_PREFIX: Final = "rerankq"
DELIVERIES_KEY_PREFIX: Final = f"{KEY_PREFIX}:deliveries:"
SCORE_KEY_PREFIX: Final = f"{KEY_PREFIX}:score:"  # + "<model>:<hash>" -> score (result cache)
MODEL_IDENTITY_KEY_PREFIX: Final = f"{KEY_PREFIX}:identity:"  # + "<model>" -> identity of the serving weights
CACHE_STATS_KEY: Final = f"{KEY_PREFIX}:cache:stats"  # hash: hits, misses
JOB_KEY_PREFIX: Final = f"{KEY_PREFIX}:job:"  # + "<job id>" -> {model, lane, submitted_at}: the job exists
CANCEL_KEY_PREFIX: Final = f"{KEY_PREFIX}:cancel:"  # + "<job id>": workers skip the job
WORKERS_KEY: Final = f"{KEY_PREFIX}:workers"  # hash: worker id -> presence (model, lanes, device, seen_at)
# Dead-worker recovery (rerankq.worker.recovery): every worker process beats here while it lives
# (also while it drains on shutdown, unlike its presence entry) ...
HEARTBEATS_KEY: Final = f"{KEY_PREFIX}:heartbeats"  # hash: worker id -> unix time of its last beat
# ... and names here every message it holds, so a sweeper can give a dead worker's messages back.
CLAIMS_KEY_PREFIX: Final = f"{KEY_PREFIX}:claims:"  # + "<worker id>" -> hash: delivery tag -> claimed at
CLAIMANTS_KEY: Final = f"{KEY_PREFIX}:claimants"  # set: worker ids that may hold messages
# + "<queue>": jobs gateways have admitted to a queue and are still sending (the queue limit's
# reservations, rerankq.gateway.admission); expires if a gateway dies mid-send
ADMITTED_KEY_PREFIX: Final = f"{KEY_PREFIX}:admitted:"
# hash: queue name -> unix time a live worker last announced it consumes that queue (kept after
# the worker is gone, so a job waiting on a queue nobody consumes can say since when)
LANES_SEEN_KEY: Final = f"{KEY_PREFIX}:lanes:seen"
CALLBACKS_DUE_KEY: Final = f"{KEY_PREFIX}:callbacks:due"  # sorted set: job id by next attempt time
CALLBACKS_KEY: Final = f"{KEY_PREFIX}:callbacks"  # hash: job id -> {url, attempts}
REJECTED_KEY: Final = f"{KEY_PREFIX}:rejected"  # list, newest first: messages workers refused, with why
ALIASES_KEY: Final = f"{KEY_PREFIX}:aliases"  # hash: alias -> {"targets": {version: weight}, "set_at"}
ALIAS_HISTORY_KEY_PREFIX: Final = f"{KEY_PREFIX}:aliases:history:"  # + "<alias>" -> list of earlier values
# Named API keys (rerankq.gateway): per-key counters, owners, usage. Keys carry the key's name,
# never the key.
RATE_KEY_PREFIX: Final = f"{KEY_PREFIX}:rate:"  # + "<key name>:<what>:<minute>" -> count in that window
JOB_OWNER_KEY_PREFIX: Final = f"{KEY_PREFIX}:job-owner:"  # + "<job id>" -> the name of the key that made it
QUEUED_BY_KEY_PREFIX: Final = f"{KEY_PREFIX}:queued-by:"  # + "<key name>:<queue>" -> sorted set: job id by time
USAGE_KEY_PREFIX: Final = f"{KEY_PREFIX}:usage:"  # + "<UTC hour, YYYYMMDDHH>" -> hash: "<key name>:<counter>" -> n
# The alias a request without a model name goes to; without such an alias, RERANKQ_DEFAULT_MODEL.
DEFAULT_ALIAS: Final = "default"

# kombu's Redis transport keeps a queue's higher message priorities in sibling lists named
# queue + separator + step; a queue's depth is the sum over all of them. A worker checks at
# start-up that its kombu names them so (rerankq.worker.private_hooks).
KOMBU_PRIORITY_SEP: Final = "\x06\x16"
KOMBU_PRIORITY_STEPS: Final = (0, 3, 6, 9)

# Model names become part of Redis queue names; keep them to a safe alphabet.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def queue_name(model: str, lane: Lane = DEFAULT_LANE) -> str:
    """The Redis queue one model's jobs of one lane travel on, e.g. ``rerankq.bge-reranker-v2-m3.interactive``."""
    return f"{KEY_PREFIX}.{model}.{lane}"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold one kombu queue's waiting messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in KOMBU_PRIORITY_STEPS]


def queue_of_list(key: str) -> str:
    """The queue one of ``queue_keys``'s lists belongs to."""
    return key.split(KOMBU_PRIORITY_SEP, 1)[0]


def lane_of(queue: str) -> str:
    """The lane of a queue named by ``queue_name`` ("unknown" for any other queue)."""
    lane = queue.rsplit(".", 1)[-1]
    return lane if lane in LANE_PRIORITY else "unknown"


def lane_order(queue: str) -> int:
    """Sort key: a queue's place in LANE_PRIORITY (most urgent first); other queues last."""
    lane = lane_of(queue)
    return LANE_PRIORITY[lane] if lane in LANE_PRIORITY else len(LANE_PRIORITY)


def by_priority(lanes: tuple[Lane, ...]) -> tuple[Lane, ...]:
    return tuple(sorted(dict.fromkeys(lanes), key=LANE_PRIORITY.__getitem__))


def worker_id(model: str, pid: int, host: str) -> str:
    """A worker process's name: its Celery hostname and its key in presence, heartbeats and claims."""
    return f"{KEY_PREFIX}-{model}-{pid}@{host}"


def worker_process(worker: str) -> tuple[int, str] | None:
    """The (pid, host) a ``worker_id`` names; None for any other name."""
    name, _, host = worker.rpartition("@")
    prefix, _, pid = name.rpartition("-")
    return (int(pid), host) if prefix.startswith(f"{KEY_PREFIX}-") and pid.isdigit() else None


def job_key(job_id: str) -> str:
    return f"{JOB_KEY_PREFIX}{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{CANCEL_KEY_PREFIX}{job_id}"


def deliveries_key(job_id: str) -> str:
    return f"{DELIVERIES_KEY_PREFIX}{job_id}"


def model_identity_key(model: str) -> str:
    return f"{MODEL_IDENTITY_KEY_PREFIX}{model}"


def alias_history_key(alias: str) -> str:
    return f"{ALIAS_HISTORY_KEY_PREFIX}{alias}"


def claims_key(worker_id: str) -> str:
    return f"{CLAIMS_KEY_PREFIX}{worker_id}"


def admitted_key(queue: str) -> str:
    return f"{ADMITTED_KEY_PREFIX}{queue}"


def rate_key(key_name: str, what: str, window: int) -> str:
    return f"{RATE_KEY_PREFIX}{key_name}:{what}:{window}"


def job_owner_key(job_id: str) -> str:
    return f"{JOB_OWNER_KEY_PREFIX}{job_id}"


def queued_by_key(key_name: str, queue: str) -> str:
    return f"{QUEUED_BY_KEY_PREFIX}{key_name}:{queue}"


def usage_key(hour: str) -> str:
    return f"{USAGE_KEY_PREFIX}{hour}"
