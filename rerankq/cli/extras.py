"""Commands whose dependencies come with an extra (pyproject.toml): a missing one is one line
that names the extra, instead of a ModuleNotFoundError traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def needs_extra(command: str, extra: str) -> Iterator[None]:
    """Wrap a command's heavy imports: ``with needs_extra("worker", "worker"): from ... import ...``."""
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] == "rerankq":  # a module of ours missing is a bug, not an extra
            raise
        typer.echo(f'rerankq {command}: {e}; it comes with the {extra} extra: pip install "rerankq[{extra}]"', err=True)
        raise typer.Exit(2) from e
