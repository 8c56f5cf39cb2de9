"""The dead-worker drill of docs/reliability.md, with default settings: 120 interactive jobs of 8
documents to a worker of the real offline model, SIGKILL 1.5 s later, a new worker started at
once. Prints how many jobs the killed worker held and the seconds from the kill until the last
job finished (JSON). Starts its own redis-server.

    HF_HUB_OFFLINE=1 python ops/scripts/recovery_drill.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import redis

from rerankq import RerankClient
from rerankq.core.constants import CLAIMS_KEY_PREFIX
from rerankq.testing.local_redis import local_redis_server
from rerankq.testing.processes import start_worker, stop_worker, wait_until_consuming

MODEL, JOBS, DOCUMENTS, KILL_AFTER_S = "all-minilm-l6-v2", 120, 8, 1.5


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="rerankq-drill-"))
    with local_redis_server() as server:
        os.environ["RERANKQ_REDIS_URL"] = server.url
        name = f"drill-{uuid.uuid4().hex[:6]}"
        first = start_worker(MODEL, logs / "first.log", "--name", name)
        wait_until_consuming(first)
        with RerankClient(server.url) as client:
            documents = [[f"document {i}-{j} about queues " * 6 for j in range(DOCUMENTS)] for i in range(JOBS)]
            handles = [client.submit(f"query {i}", documents[i], model=name, cache=False) for i in range(JOBS)]
            time.sleep(KILL_AFTER_S)  # the drill's own schedule, not a wait on a condition
            first.process.kill()
            first.process.wait()
            killed_at = time.monotonic()
            store = redis.Redis.from_url(server.url)
            held = sum(store.hlen(key) for key in store.scan_iter(match=f"{CLAIMS_KEY_PREFIX}*"))
            second = start_worker(MODEL, logs / "second.log", "--name", name)
            try:
                for handle in handles:
                    handle.result(timeout=300)
                last_done_s = time.monotonic() - killed_at
            finally:
                stop_worker(second)
    print(json.dumps({"jobs": JOBS, "held_by_the_killed_worker": held, "all_done_s_after_kill": round(last_done_s, 1)}))


if __name__ == "__main__":
    main()
