"""``rerankq demo`` on the user's own Redis: it ranks the samples and leaves that Redis running,
and says so (it used to say it had stopped it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

pytestmark = pytest.mark.slow


def test_the_demo_on_a_given_redis_leaves_it_running_and_says_so(redis_server, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "rerankq", "demo", "--model", "all-minilm-l6-v2", "--redis-url", redis_server.url]
    ran = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    said = " ".join(ran.stdout.split())
    assert "what is artificial intelligence" in said  # the English sample was ranked
    assert f"worker stopped; Redis at {redis_server.url} left running (not the demo's)" in said
    assert "worker and Redis stopped" not in said
    assert redis.Redis.from_url(redis_server.url).ping()
