"""A command run with a pseudo-terminal for its standard streams, as when a user runs it by hand:
what it prints there (rich draws bars and sizes tables only on a terminal)."""

from __future__ import annotations

import os
import pty
import subprocess


def run_on_a_terminal(command: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """The command's exit code and everything it wrote to the terminal."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return process.wait(timeout=timeout), seen.decode(errors="replace")
