"""The ETA a bulk run shows, on a fake clock over a real checkpoint: none while it would mean
nothing (one record done, or none lately), the recent rate when records flow, and a stalled count
followed by a burst (results are written in input order) moves it no further than the window."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest
from rich.console import Console

from rerankq.bulk.checkpoint import Checkpoint
from rerankq.bulk.progress import ETA_WINDOW_S, Bar, Tally, log_line


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    """A bulk run as its display sees it: every second records may become final, and the display's
    update (one per finished record, and one a second while waiting) samples the tally."""

    total: int
    clock: FakeClock = field(default_factory=FakeClock)
    checkpoint: Checkpoint = field(default_factory=lambda: Checkpoint("in.jsonl", 1, "tiny-bert", None))

    def __post_init__(self) -> None:
        self.tally = Tally(self.checkpoint, self.total, clock=self.clock)

    def tick(self, records: int = 0) -> float | None:
        """One second passes and ``records`` more are final; the ETA shown then."""
        self.clock.now += 1
        self.checkpoint.records_done += records
        self.tally.sample()
        return self.tally.eta_s()

    def seconds(self, count: int, records_each: int = 0) -> list[float | None]:
        return [self.tick(records_each) for _ in range(count)]


def eta_shown(tally: Tally) -> str:
    return log_line(tally).rsplit("ETA ", 1)[1]


def test_one_record_done_then_minutes_without_progress_shows_no_eta() -> None:
    """The reported case: 1/202 while the next records take minutes; it used to climb to 0:54:46."""
    run = Run(total=202)
    run.tick(records=1)

    etas = run.seconds(300)

    assert etas == [None] * 300
    assert eta_shown(run.tally) == "?"


def test_no_record_finished_within_the_window_shows_no_eta() -> None:
    run = Run(total=2000)
    run.seconds(120, records_each=1)
    assert run.tally.eta_s() is not None

    stalled = run.seconds(int(ETA_WINDOW_S) + 60)

    assert stalled[-60:] == [None] * 60
    assert eta_shown(run.tally) == "?"


def test_steady_progress_gives_remaining_over_the_recent_rate() -> None:
    """Workers loading the model make the first records slow; the ETA follows the rate since."""
    run = Run(total=2000)
    for _ in range(6):  # warming up: one record every 5 s
        run.seconds(4)
        run.tick(records=1)
    run.seconds(90, records_each=2)

    remaining = 2000 - run.tally.records
    assert run.tally.eta_s() == pytest.approx(remaining / 2, rel=0.05)


def test_a_burst_after_a_stalled_count_moves_the_eta_no_further_than_the_window_allows() -> None:
    """One record a second all along, but the head of the line takes 45 s: the count stalls, then
    jumps by the 45 records finished behind it. The ETA after the jump stays at the true rate's."""
    run = Run(total=2000)
    run.seconds(120, records_each=1)
    run.seconds(45)

    after = [run.tick(records=45), *run.seconds(10, records_each=1)]

    remaining = [2000 - records for records in range(165, 176)]
    assert after == pytest.approx(remaining, rel=0.1)


@pytest.mark.parametrize(("steady_s", "records_each"), [(0, 0), (90, 2)], ids=["stalled", "steady"])
def test_the_bar_shows_the_same_eta_as_the_log_lines(steady_s: int, records_each: int) -> None:
    run = Run(total=2000)
    run.tick(records=1)
    run.seconds(30)
    run.seconds(steady_s, records_each)
    screen = io.StringIO()
    bar = Bar(Console(file=screen, force_terminal=True, width=200), run.tally, lambda: "", every_s=3600)

    bar.update(run.tally)
    bar.close()

    assert f"ETA {eta_shown(run.tally)} " in screen.getvalue()
