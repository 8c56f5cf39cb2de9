"""``rerankq models list`` as users read it (the real process, real Redis): every model name whole,
piped or on an 80-column terminal, and no empty aliases table when there are no aliases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pty_support import run_on_a_terminal

from rerankq.core.registry import load_manifests

NAMES = sorted(load_manifests(None))
ALIAS_HEADER = "┃ routes to"  # the aliases table's (the versions table has an "aliases" column)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def own_db(redis_server: Any) -> Iterator[str]:
    """A database of the session's Redis that no other test uses, emptied before and after: its
    aliases (none, or the test's) and live workers (none) are the test's alone."""
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    store = redis.Redis.from_url(url)
    store.flushdb()
    yield url
    store.flushdb()
    store.close()


def environment(columns: str | None) -> dict[str, str]:
    """This environment, but ``COLUMNS`` as given and no static aliases (RERANKQ_MODEL_ALIASES)."""
    kept = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "RERANKQ_MODEL_ALIASES")}
    return kept | ({"COLUMNS": columns} if columns else {})


def rerankq(*args: str, columns: str | None) -> list[str]:
    """The command's output lines, stdout piped."""
    command = [sys.executable, "-m", "rerankq", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment(columns))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def on_a_terminal(*args: str, columns: str) -> list[str]:
    """The command's output lines, stdout a terminal ``columns`` wide (colours stripped)."""
    code, seen = run_on_a_terminal([sys.executable, "-m", "rerankq", *args], environment(columns))
    assert code == 0, seen[-2000:]
    return ANSI.sub("", seen).splitlines()


def first_cells(lines: list[str]) -> set[str]:
    """What each table row holds in its first column."""
    return {line.split("│")[1].strip() for line in lines if line.startswith("│")}


@pytest.mark.parametrize("columns", [None, "80"], ids=["piped", "piped-80-columns"])
def test_piped_every_model_name_is_whole_and_no_empty_aliases_table(own_db: str, columns: str | None) -> None:
    lines = rerankq("models", "list", "--redis-url", own_db, columns=columns)

    assert set(NAMES) <= first_cells(lines), "\n".join(lines)
    assert not any(ALIAS_HEADER in line for line in lines)
    assert lines[-1] == "no aliases (rerankq models alias set ALIAS VERSION)"


def test_on_an_80_column_terminal_every_model_name_is_whole(own_db: str) -> None:
    lines = on_a_terminal("models", "list", "--redis-url", own_db, columns="80")

    assert set(NAMES) <= first_cells(lines), "\n".join(lines)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)


def test_alias_show_without_aliases_says_so_in_one_line(own_db: str) -> None:
    lines = rerankq("models", "alias", "show", "--redis-url", own_db, columns="80")

    assert lines == ["no aliases (rerankq models alias set ALIAS VERSION)"]


def test_a_set_alias_is_listed_whole_in_the_aliases_table(own_db: str) -> None:
    split, note = ["bge-reranker-v2-gemma=90", "qwen3-reranker-0.6b=10"], "gray release for the zh traffic, watch p99"
    rerankq("models", "alias", "set", "zh", *split, "--note", note, "--force", "--redis-url", own_db, columns=None)

    lines = rerankq("models", "list", "--redis-url", own_db, columns="80")

    assert any(ALIAS_HEADER in line for line in lines)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    routes = "bge-reranker-v2-gemma 90 %, qwen3-reranker-0.6b 10 %"
    assert any(row[:2] == ["zh", routes] and row[-1] == note for row in rows), "\n".join(lines)
    assert not any(line.startswith("no aliases") for line in lines)
