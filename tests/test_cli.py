"""The command line as users meet it (the real `rerankq` process): an expected failure is one line
and a fix on stderr with the documented exit code, never a traceback; options are named the same
in every command; advice names only flags that exist."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import typer

from rerankq.cli.app import app
from rerankq.cli.support import EXIT_UNAVAILABLE, EXIT_USAGE
from rerankq.core.constants import queue_name
from rerankq.testing.local_redis import free_port
from rerankq.testing.processes import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
DOWN = f"redis://:pw@127.0.0.1:{free_port()}/0"  # nothing listens there


def rerankq(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerankq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--json"], ["cache", "stats"], ["models", "list"], ["models", "alias", "show"]],
)
def test_redis_down_is_one_line_with_the_url_and_exit_3(command: list[str]) -> None:
    done = rerankq(*command, "--redis-url", DOWN)
    assert_one_line(done, EXIT_UNAVAILABLE, "redis://:****@127.0.0.1", "unreachable", "RERANKQ_REDIS_URL")
    assert done.stderr.startswith(f"rerankq {' '.join(word for word in command if not word.startswith('-'))}:")


def test_a_url_that_is_no_redis_url_names_the_setting_and_exits_2() -> None:
    done = rerankq("status", "--redis-url", "localhost:6391")
    assert_one_line(done, EXIT_USAGE, "'localhost:6391'", "RERANKQ_REDIS_URL", "is not a Redis URL")
    done = rerankq("status", env={"RERANKQ_REDIS_URL": "localhost:6391"})
    assert_one_line(done, EXIT_USAGE, "RERANKQ_REDIS_URL")


def test_a_worker_for_a_hub_model_offline_fails_at_once_naming_the_way_out(tmp_path: Path) -> None:
    offline = rerankq("worker", "--model", "bge-reranker-v2-m3", "--redis-url", DOWN, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == EXIT_USAGE and "Traceback" not in offline.stderr
    last = offline.stderr.strip().splitlines()[-1]
    for hint in ("HF_HUB_OFFLINE=1", "rerankq worker --model all-minilm-l6-v2", "rerankq models list"):
        assert hint in last
    # online, but the hub does not answer (its port is closed): no minute of retries either
    unreachable = rerankq(
        "worker",
        "--model",
        "bge-reranker-v2-m3",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1", "HF_HOME": str(tmp_path)},
    )
    assert unreachable.returncode == EXIT_UNAVAILABLE and "does not answer" in unreachable.stderr
    assert unreachable.stderr.count("Retrying") == 0


def test_models_check_of_an_unknown_name_exits_2_and_advises_only_real_flags() -> None:
    done = rerankq("models", "check", "--model", "no-such-model", "--device", "cpu")
    assert_one_line(done, EXIT_USAGE, "no-such-model", "--model path/to/folder")
    assert "pass --model that/folder" not in done.stderr


def test_status_shows_every_queue_that_holds_jobs_even_of_names_nobody_knows(redis_server: Any) -> None:
    store = redis.Redis.from_url(redis_server.url)
    store.lpush(queue_name("ghost-model"), b"{}")  # a job for a model no worker or manifest knows
    try:
        listed = json.loads(rerankq("status", "--json", "--redis-url", redis_server.url).stdout)
        ghost = [lane for lane in listed["lanes"] if lane["model"] == "ghost-model"]
        assert [(lane["lane"], lane["waiting"]) for lane in ghost if lane["waiting"]] == [("interactive", 1)]
        table = rerankq("status", "--redis-url", redis_server.url).stdout
        assert "ghost-model" in table
    finally:
        store.delete(queue_name("ghost-model"))


def test_bulk_run_refuses_an_unknown_model_before_reading(tmp_path: Path, redis_server: Any) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "query": "q", "documents": ["a"]}) + "\n")
    done = rerankq("bulk", "run", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", "no-such-model")
    assert_one_line(done, EXIT_USAGE, "unknown model 'no-such-model'", "rerankq models list")
    assert not (tmp_path / "out.jsonl").exists()


def test_bulk_run_says_at_every_tick_that_no_worker_serves_the_lane(tmp_path: Path, redis_server: Any) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "query": "q", "documents": ["a", "b"]}) + "\n")
    command = [sys.executable, "-m", "rerankq", "bulk", "run", str(source), "-o", str(tmp_path / "out.jsonl")]
    command += ["--model", "bge-reranker-v2-m3", "--log-every", "0.2", "--redis-url", redis_server.url]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    waiting = []
    for line in process.stderr:  # the run waits for a worker that never comes: read until told twice
        if "no live worker consumes the bulk lane of bge-reranker-v2-m3" in line:
            waiting.append(line)
            if len(waiting) == 2:
                break
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert len(waiting) == 2 and "rerankq worker --model bge-reranker-v2-m3" in waiting[0]


# --- the options themselves, read from the command tree ------------------------------------------


def _commands(group: Any = None, path: str = "rerankq") -> dict[str, Any]:
    """Every command of the tree, by its full name (Typer's own click classes: duck-typed)."""
    found: dict[str, Any] = {}
    for name, command in (group or typer.main.get_command(app)).commands.items():
        if hasattr(command, "commands"):
            found |= _commands(command, f"{path} {name}")
        else:
            found[f"{path} {name}"] = command
    return found


def _options(command: Any) -> dict[str, Any]:
    return {opt: param for param in command.params for opt in getattr(param, "opts", [])}


def test_servers_take_host_and_port_and_default_to_loopback() -> None:
    for name in ("gateway", "exporter", "flower"):
        options = _options(_commands()[f"rerankq {name}"])
        assert {"--host", "--port", "--redis-url"} <= set(options), name
        assert options["--host"].default == "127.0.0.1", name


def test_every_command_that_talks_to_redis_takes_redis_url_and_models_are_named_with_model() -> None:
    commands = _commands()
    redis_free = {"rerankq bench", "rerankq models check", "rerankq models diff"}
    for path, command in commands.items():
        if path not in redis_free:
            assert "--redis-url" in _options(command), path
        if "model" in {param.name for param in command.params}:
            assert "--model" in _options(command), path
    assert rerankq("--version").stdout.startswith("rerankq ")


def _flags_quoted_in_code(skip: set[str]) -> dict[str, str]:
    """Every ``--flag`` in a string literal of rerankq's code, with a file it is in."""
    quoted: dict[str, str] = {}
    for path in (ROOT / "rerankq").rglob("*.py"):
        strings = [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)]
        for text in (value for value in strings if isinstance(value, str) and path.name not in skip):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text):
                quoted[flag] = str(path.relative_to(ROOT))
    return quoted


def test_advice_in_messages_names_only_flags_that_exist() -> None:
    """Every ``--flag`` quoted in a string of rerankq's code is an option of some rerankq command
    (a refusal that says "pass --languages" to a command without it sends users nowhere). Files
    that build other programs' command lines (redis-server, Celery's worker, Flower) and the GPU
    kit's and the seed recipe's own argparse programs (rerankq.bench) are skipped."""
    known = {"--help", "--version"}
    for command in _commands().values():
        for param in command.params:
            known |= {*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])}
    quoted = _flags_quoted_in_code(skip={"local_redis.py", "main.py", "flower.py", "kit.py", "kit_sections.py"})
    assert "--redis-url" in quoted  # the scan sees the code's flags at all
    assert {flag: where for flag, where in quoted.items() if flag not in known} == {}


def test_help_texts_wrap_with_the_terminal_not_with_the_source() -> None:
    done = rerankq("bulk", "run", "--help", env={"COLUMNS": "200"})
    assert "Re-running the same command resumes an interrupted run." in done.stdout


@pytest.mark.slow
def test_a_worker_refusal_is_one_line_naming_the_worker_flags(
    model_dirs: dict[str, Path], workers: dict[str, WorkerProcess], tmp_path: Path
) -> None:
    """A model whose golden ranking is wrong (the tiny random BERT) is refused at start, with advice
    that names options `rerankq worker` has."""
    done = rerankq("worker", "--model", str(model_dirs["tiny-bert"]), "--check-ranking", timeout=180)
    assert done.returncode == EXIT_USAGE and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rerankq worker: ranking check failed") and "--languages" in last
