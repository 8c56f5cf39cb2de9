"""``rerankq usage``: per-key totals the gateways counted in Redis (rerankq.core.usage)."""

from __future__ import annotations

import json
import re
from contextlib import closing

import typer
from rich.console import Console
from rich.table import Table

from rerankq.core.redis_clients import connect
from rerankq.core.settings import Settings
from rerankq.core.usage import COUNTERS, read_usage

DURATION = re.compile(r"^(\d+)([mhd])$")
SECONDS = {"m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> float:
    """``30m``, ``24h``, ``7d`` as seconds; BadParameter otherwise."""
    match = DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(f"must be a number and m, h or d (30m, 24h, 7d); got {text!r}", param_hint="--since")
    return int(match.group(1)) * SECONDS[match.group(2)]


def print_usage(settings: Settings, since: str, as_json: bool) -> None:
    since_s = parse_duration(since)
    with closing(connect(settings.redis_url, settings.redis_sentinel_master, socket_connect_timeout=5)) as client:
        totals = read_usage(client, since_s)
    if as_json:
        typer.echo(json.dumps({"since_s": since_s, "keys": totals}))
        return
    table = Table("key", *COUNTERS, title=f"usage by API key, last {since} (whole UTC hours)")
    for name, counts in totals.items():
        table.add_row(name, *(str(counts[counter]) for counter in COUNTERS))
    console = Console()
    console.print(table if totals else f"no usage counted in the last {since}")
