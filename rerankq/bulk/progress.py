"""How a bulk run shows its progress: a rich progress bar on a terminal, else a log line every
``--log-every`` seconds (for cron, Airflow or ``kubectl logs``), while records finish and while
none do. At every such tick, a lane no live worker consumes is named (``note``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rerankq.bulk.checkpoint import Checkpoint


class Tally:
    """The run's counters (its checkpoint's: resumed runs included), with rates and ETA over this
    process's share of the run."""

    def __init__(self, checkpoint: Checkpoint, total: int | None) -> None:
        self.checkpoint = checkpoint
        self.total = total
        self.started = time.monotonic()
        self.records_at_start, self.pairs_at_start = checkpoint.records_done, checkpoint.pairs

    @property
    def records(self) -> int:  # final records (output or errors)
        return self.checkpoint.records_done

    @property
    def failed(self) -> int:
        return self.checkpoint.failed

    @property
    def pairs(self) -> int:
        return self.checkpoint.pairs

    @property
    def cache_hits(self) -> int:
        return self.checkpoint.cache_hits

    @property
    def pairs_per_s(self) -> float:
        return (self.pairs - self.pairs_at_start) / max(time.monotonic() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        done_here = self.records - self.records_at_start
        if self.total is None or done_here == 0:
            return None
        return (self.total - self.records) * (time.monotonic() - self.started) / done_here

    def summary(self) -> str:
        rate = f", {self.pairs_per_s:.0f} pairs/s" if self.pairs > self.pairs_at_start else ""
        return (
            f"{self.records} records, {self.records - self.failed} ranked, {self.failed} failed, "
            f"{self.pairs} pairs ({self.cache_hits} from the cache){rate}"
        )


class Display(Protocol):
    def update(self, tally: Tally) -> None: ...

    def close(self) -> None: ...


Note = Callable[[], str]  # why records wait, if they wait for something ("" when not)


class Bar:
    def __init__(self, console: Console, tally: Tally, note: Note, every_s: float) -> None:
        self._note = note
        self._every_s = every_s
        self._noted = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]rerankq bulk"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f} pairs/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("cache hits {task.fields[hits]}  failed {task.fields[failed]}"),
            console=console,
        )
        self._task = self._progress.add_task(
            "bulk", total=tally.total, completed=tally.records, rate=0, hits=0, failed=0
        )
        self._progress.start()

    def update(self, tally: Tally) -> None:
        rate, hits, failed = tally.pairs_per_s, tally.cache_hits, tally.failed
        self._progress.update(self._task, completed=tally.records, rate=rate, hits=hits, failed=failed)
        if time.monotonic() - self._noted >= self._every_s:
            self._noted = time.monotonic()
            if note := self._note():
                self._progress.console.print(f"[yellow]waiting[/]: {note}", soft_wrap=True)

    def close(self) -> None:
        self._progress.stop()


class LogLines:
    def __init__(self, console: Console, note: Note, every_s: float) -> None:
        self._console = console
        self._note = note
        self._every_s = every_s
        self._last = time.monotonic()

    def update(self, tally: Tally) -> None:
        if time.monotonic() - self._last >= self._every_s:
            self._last = time.monotonic()
            note = self._note()
            line = f"{log_line(tally)}; waiting: {note}" if note else log_line(tally)
            self._console.print(line, highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def log_line(tally: Tally) -> str:
    share = f" ({100 * tally.records / tally.total:.1f}%)" if tally.total else ""
    eta = tally.eta_s()
    return (
        f"bulk: {tally.records}/{tally.total if tally.total is not None else '?'} records{share}, "
        f"{tally.pairs_per_s:.0f} pairs/s, {tally.cache_hits} cache hits, {tally.failed} failed, "
        f"ETA {timedelta(seconds=round(eta)) if eta is not None else '?'}"
    )


def display_for(console: Console, tally: Tally, note: Note, log_every_s: float) -> Display:
    return Bar(console, tally, note, log_every_s) if console.is_terminal else LogLines(console, note, log_every_s)
