"""Child processes that live and die together, for ``rerankq serve``: each child's output prefixed
with its name, one process group for all of them, and a stop that leaves none behind.

Written here, not taken from a library: supervisord and honcho run from config files and daemonize
or need their own install, and Python's ``subprocess`` gives the pieces (process groups, pipes) but
not the policy: stop everything when one child dies, and within a deadline when asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

STOP_GRACE_S = 8.0  # from SIGTERM to SIGKILL: workers finish their batch, the gateway its requests
KILL_WAIT_S = 1.5  # of which the last part is for Redis, stopped after the rest; done within 10 s


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def exit_code(self) -> int | None:
        return self.process.poll()


class Supervisor:
    """Starts children in one process group of their own (a terminal's Ctrl-C reaches only us, so
    we choose the order of the stop) and copies each line they print to ``out`` as
    ``name | line``."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self._group: int | None = None
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0 if self._group is None else self._group,
            preexec_fn=_die_with_parent(),
        )
        self._group = self._group if self._group is not None else process.pid
        child = Child(name, process)
        self.children.append(child)
        pump = threading.Thread(target=self._pump, args=(child,), name=f"serve-{name}", daemon=True)
        pump.start()
        self._pumps.append(pump)
        return child

    def say(self, line: str, name: str = "serve") -> None:
        with self._lock:
            self.out.write(f"{name:<10}| {line}\n")
            self.out.flush()

    def dead(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((child for child in self.children if child.exit_code() is not None), None)

    def stop(self, last: Sequence[str] = ()) -> None:
        """SIGTERM to every child (those named in ``last`` once the others are gone: Redis outlives
        the workers that still store results), then SIGKILL to the whole group, grandchildren too."""
        first = [child for child in self.children if child.name not in last]
        then = [child for child in self.children if child.name in last]
        _terminate(first, STOP_GRACE_S - KILL_WAIT_S)
        _terminate(then, KILL_WAIT_S)
        if self._group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # every member already gone
                os.killpg(self._group, signal.SIGKILL)
        for child in self.children:
            child.process.wait()
        for pump in self._pumps:
            pump.join(timeout=KILL_WAIT_S)

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        for raw in iter(child.process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.say(line, child.name)


def _terminate(children: Sequence[Child], grace_s: float) -> None:
    """SIGTERM to each, then wait for all of them until one shared deadline."""
    alive = [child for child in children if child.exit_code() is None]
    for child in alive:
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in alive:
        with contextlib.suppress(subprocess.TimeoutExpired):  # the group's SIGKILL follows
            child.process.wait(max(deadline - time.monotonic(), 0.01))


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, children get SIGTERM when serve itself dies (even by SIGKILL), so none outlives it.
    The libc function is looked up here, before fork: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal
