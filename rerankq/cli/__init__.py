"""Every ``rerankq`` command (typer): the app, its options (derived from the settings), exit codes
and one-line failures, and the commands' own modules. ``main`` is the console script."""

from rerankq.cli.app import main

__all__ = ["main"]
