"""A worker never starts on a Celery or kombu it was not built for: the private names its delivery
layer relies on are checked before the model loads (rerankq.worker.private_hooks), and a
worker whose kombu lacks one exits with one line naming the versions and the supported range.
CI runs this file at both ends of the declared ranges (the lock, and the lowest versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from rerankq.worker.private_hooks import (
    CHECKED,
    HOOKS,
    REDIS_CHANNEL,
    Hook,
    declared_ranges,
    hook_problems,
    installed_versions,
    range_problems,
    require_supported_libraries,
)

pytestmark = pytest.mark.delivery


def test_the_installed_libraries_are_inside_the_declared_ranges_and_have_every_hook() -> None:
    installed, declared = installed_versions(), declared_ranges()
    assert set(declared) == set(CHECKED), "pyproject.toml declares a range for each checked library"
    assert range_problems(installed, declared) == []
    assert hook_problems(HOOKS) == []
    require_supported_libraries()


def test_the_guard_names_each_kind_of_mismatch() -> None:
    hooks = (
        Hook(REDIS_CHANNEL, "_no_such_poll", "overrides", "test", ("timeout",)),
        Hook(REDIS_CHANNEL, "_brpop_read", "overrides", "test", ("timeout",)),  # kombu's takes **options
        Hook("kombu.transport.virtual.base:Transport", "_deliver", "calls", "test", ("message",)),
        Hook(REDIS_CHANNEL, "sep", "reads", "test", value="|"),
    )
    assert hook_problems(hooks) == [
        "kombu.transport.redis.Channel._no_such_poll is missing",
        "kombu.transport.redis.Channel._brpop_read takes (**options), not (timeout)",
        "kombu.transport.virtual.base.Transport._deliver takes (message, queue), not (message)",
        "kombu.transport.redis.Channel.sep is '\\x06\\x16', not '|'",
    ]


def test_a_version_outside_the_range_is_named_with_the_range() -> None:
    declared = {"celery": SpecifierSet(">=5.4,<5.8"), "kombu": SpecifierSet(">=5.7,<5.8")}
    installed = {"celery": "5.8.0", "kombu": "5.6.2", "redis": "6.4.0"}
    assert range_problems(installed, declared) == [
        "celery 5.8.0 is outside celery<5.8,>=5.4",
        "kombu 5.6.2 is outside kombu<5.8,>=5.7",
    ]


@pytest.mark.slow
def test_a_worker_whose_kombu_lacks_a_hook_refuses_to_start_in_one_line(model_dirs: dict[str, Path]) -> None:
    """The real command, in a process whose kombu lost ``_brpop_start`` (as an older or newer kombu
    would lack it): it exits before loading the model, and never says ready."""
    run_without_hook = (
        "import sys, kombu.transport.redis as r; del r.Channel._brpop_start; "
        "from rerankq.cli import main; sys.argv[0] = 'rerankq'; main()"
    )
    command = [sys.executable, "-c", run_without_hook, "worker", "--model", str(model_dirs["tiny-bert"])]
    ran = subprocess.run([*command, "--device", "cpu"], capture_output=True, text=True, timeout=120)
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
    assert ran.returncode == 2, ran.stderr
    assert len(lines) == 1, lines
    installed = installed_versions()
    assert lines[0].startswith(
        f"rerankq worker: celery {installed['celery']}, kombu {installed['kombu']}, redis-py {installed['redis']} "
        "are not what this rerankq was built and tested with "
        "(kombu.transport.redis.Channel._brpop_start is missing); install versions inside celery"
    )
    assert all(f"{name}{declared}" in lines[0] for name, declared in declared_ranges().items())
