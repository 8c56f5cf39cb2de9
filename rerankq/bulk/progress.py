"""How a bulk run shows its progress: a rich progress bar on a terminal, else a log line every
``--log-every`` seconds (for cron, Airflow or ``kubectl logs``), while records finish and while
none do. At every such tick, a lane no live worker consumes is named (``note``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from rerankq.bulk.checkpoint import Checkpoint

ETA_WINDOW_S = 60.0
"""The ETA's rate is the records finished over this many recent seconds: results are written in
input order, so one slow record stalls the count and the records behind it then land at once; a
window that long absorbs the jump, and a count stalled longer than it shows no ETA at all."""
# No ETA before this process has finished ETA_MIN_RECORDS records and run ETA_MIN_ELAPSED_S
# seconds: a rate from one record (or from a second's worth) is noise, and its ETA only climbs.
ETA_MIN_RECORDS = 5
ETA_MIN_ELAPSED_S = 10.0
SAMPLE_EVERY_S = 1.0  # the window's resolution: at most one sample a second, however fast records go


class Tally:
    """The run's counters (its checkpoint's: resumed runs included), with rates and ETA over this
    process's share of the run. ``clock`` is injectable so tests can move time."""

    def __init__(self, checkpoint: Checkpoint, total: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.checkpoint = checkpoint
        self.total = total
        self.clock = clock
        self.started = clock()
        self.records_at_start, self.pairs_at_start = checkpoint.records_done, checkpoint.pairs
        self._samples: deque[tuple[float, int]] = deque([(self.started, self.records_at_start)])

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
        return (self.pairs - self.pairs_at_start) / max(self.clock() - self.started, 1e-9)

    def sample(self) -> None:
        """Note how many records are final now; every display update calls this. Kept: the samples
        of the last ETA_WINDOW_S seconds and the newest one before them, where the window starts."""
        now, (last_at, last_records) = self.clock(), self._samples[-1]
        if self.records != last_records and now - last_at >= SAMPLE_EVERY_S:
            self._samples.append((now, self.records))
        while len(self._samples) > 1 and self._samples[1][0] <= now - ETA_WINDOW_S:
            self._samples.popleft()

    def eta_s(self) -> float | None:
        """Seconds left at the rate of the last ETA_WINDOW_S seconds; None while that means
        nothing (too early, or no record finished within the window: the count is stalled)."""
        now = self.clock()
        if self.total is None or not self._eta_means_something(now):
            return None
        since, records_then = self._window_start(now)
        finished = self.records - records_then
        if finished <= 0:
            return None
        return (self.total - self.records) * (now - since) / finished

    def _eta_means_something(self, now: float) -> bool:
        done_here = self.records - self.records_at_start
        return done_here >= ETA_MIN_RECORDS and now - self.started >= ETA_MIN_ELAPSED_S

    def _window_start(self, now: float) -> tuple[float, int]:
        """The newest sample at or before the window's start (the run's start if it is younger)."""
        return next((s for s in reversed(self._samples) if s[0] <= now - ETA_WINDOW_S), self._samples[0])

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
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("cache hits {task.fields[hits]}  failed {task.fields[failed]}"),
            console=console,
        )
        self._task = self._progress.add_task(
            "bulk", total=tally.total, completed=tally.records, rate=0, hits=0, failed=0, eta=eta_text(tally)
        )
        self._progress.start()

    def update(self, tally: Tally) -> None:
        tally.sample()
        rate, hits, failed, eta = tally.pairs_per_s, tally.cache_hits, tally.failed, eta_text(tally)
        self._progress.update(self._task, completed=tally.records, rate=rate, hits=hits, failed=failed, eta=eta)
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
        tally.sample()
        if time.monotonic() - self._last >= self._every_s:
            self._last = time.monotonic()
            note = self._note()
            line = f"{log_line(tally)}; waiting: {note}" if note else log_line(tally)
            self._console.print(line, highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def log_line(tally: Tally) -> str:
    share = f" ({100 * tally.records / tally.total:.1f}%)" if tally.total else ""
    return (
        f"bulk: {tally.records}/{tally.total if tally.total is not None else '?'} records{share}, "
        f"{tally.pairs_per_s:.0f} pairs/s, {tally.cache_hits} cache hits, {tally.failed} failed, "
        f"ETA {eta_text(tally)}"
    )


def eta_text(tally: Tally) -> str:
    """The ETA as both displays show it: H:MM:SS, or "?" while there is none."""
    eta = tally.eta_s()
    return str(timedelta(seconds=round(eta))) if eta is not None else "?"


def display_for(console: Console, tally: Tally, note: Note, log_every_s: float) -> Display:
    return Bar(console, tally, note, log_every_s) if console.is_terminal else LogLines(console, note, log_every_s)
