"""The in-process batcher: pairs from every job this worker holds share forward passes.

Celery's pool hands each reserved job to its own thread; each thread tokenizes its pairs and
submits them here. One batcher thread owns the model. It sorts pending pairs by token length,
cuts batches by a padded-token budget and a pair cap, runs one forward pass per batch and routes
every score back to its job. Written by hand because celery-batches couples batching to prefetch
(it waits for N messages), while we need token-aware packing of work that is already reserved.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rerankq.core import tracing
from rerankq.worker.backends import Backend, EncodedPair
from rerankq.worker.oom import AdaptiveBudget, PairTooLarge

log = logging.getLogger("rerankq.batcher")

BUSY_FOR_S = 2.0  # interactive pairs seen this recently: keep bulk forward passes short


@dataclass(frozen=True)
class ScoredJob:
    """Raw scores for one submission, in submission order, and the batches that computed them."""

    scores: list[float]
    batch_ids: list[str]
    waited_batches: int = 0  # forward passes started after this job arrived and before its first
    waited_s: float = 0.0  # from submission to its first forward pass
    forward_s: float = 0.0  # the forward passes its pairs rode in, each counted once


class BatchObserver(Protocol):
    """Told about every forward pass (rerankq.worker.metrics.BatchMetrics turns this into metrics)."""

    def batch(self, lengths: Sequence[int], seconds: float) -> None: ...

    def oom_split(self) -> None: ...

    def budget(self, tokens: int) -> None: ...


class _Unobserved:
    def batch(self, lengths: Sequence[int], seconds: float) -> None:
        pass

    def oom_split(self) -> None:
        pass

    def budget(self, tokens: int) -> None:
        pass


@dataclass
class BatchStats:
    """Running totals over successful forward passes (padded tokens are pairs x longest pair), and
    how often a small backlog was held back for jobs still being prepared."""

    batches: int = 0
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    held: int = 0

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    def add(self, lengths: Sequence[int]) -> None:
        self.batches += 1
        self.pairs += len(lengths)
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(lengths) * max(lengths)


@dataclass(eq=False)
class _Submission:
    pairs: Sequence[EncodedPair]
    future: Future[ScoredJob]
    priority: int = 0  # 0 most urgent (interactive work)
    trace: tracing.JobTrace | None = None
    after_batch: int = 0  # the last forward pass started before this submission arrived
    waited_batches: int = 0
    scores: list[float] = field(init=False)
    remaining: int = field(init=False)
    batch_ids: list[str] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    waited_s: float = 0.0
    forward_s: float = 0.0

    def __post_init__(self) -> None:
        self.scores = [0.0] * len(self.pairs)
        self.remaining = len(self.pairs)


@dataclass(frozen=True, slots=True)
class _Item:
    submission: _Submission
    position: int

    @property
    def pair(self) -> EncodedPair:
        return self.submission.pairs[self.position]

    @property
    def length(self) -> int:
        return self.pair.length


def plan_batches(items: Sequence[_Item], token_budget: int, max_batch_pairs: int) -> list[list[_Item]]:
    """Longest first (by the tokens each pair computes itself: an LLM pair's own part, after the
    prompt prefix it shares); a batch closes when one more pair would exceed the padded-token
    budget (pairs x the widest row: the longest shared prefix plus the longest own part, which is
    what each row attends to and holds keys and values for) or the pair cap. A pair longer than
    the budget runs alone."""
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    prefix = own = 0
    for item in sorted(items, key=lambda it: it.pair.own_length, reverse=True):
        pair = item.pair
        wider = max(prefix, pair.prefix_length) + max(own, pair.own_length)
        if current and ((len(current) + 1) * wider > token_budget or len(current) >= max_batch_pairs):
            batches.append(current)
            current, prefix, own = [], 0, 0
        current.append(item)
        prefix, own = max(prefix, pair.prefix_length), max(own, pair.own_length)
    if current:
        batches.append(current)
    return batches


class Batcher:
    """Cross-job batching over one backend.

    Tuning knobs (also settings ``RERANKQ_TOKEN_BUDGET`` etc.):

    ``token_budget``
        Most padded tokens (pairs x longest pair in the batch) one forward pass may hold.
    ``max_batch_pairs``
        Most pairs in one forward pass, whatever their length.
    ``max_wait_ms``
        How long to wait for more work when the pending pairs would make a small batch. The
        batcher waits only while another job is being prepared (see ``preparing``), so a lone
        job on an idle worker runs at once.
    ``cross_job``
        Off: each job gets forward passes of its own, one job at a time (the common Celery
        recipe, kept for comparison in the benchmarks).
    ``max_consecutive_ooms``
        Out-of-memory errors in a row after which the jobs involved give up on this device.
    ``bulk_window_batches``
        Less urgent work (priority above 0: bulk) is taken oldest job first, this many batches'
        worth at a time, so bulk jobs finish in order and free their slots steadily.
    ``busy_token_budget``
        While interactive jobs are about (one arrived in the last ``BUSY_FOR_S`` seconds), bulk
        forward passes hold at most this many padded tokens: a forward pass cannot be
        interrupted, so its size is what an interactive job may wait behind. With no interactive
        traffic, bulk batches are full size.

    Priority: the batcher always serves the most urgent pending work first, and checks again
    between batches. Interactive pairs that arrive while a bulk window runs wait for at most the
    batch in progress; the rest of the window goes back to the pending pool.

    On out-of-memory the batcher frees cached device memory, halves its token budget (see
    ``AdaptiveBudget``) and retries the batch in halves, down to single pairs. A pair that fails
    alone fails its job with ``PairTooLarge``; the task then moves the job to the cpu lane.
    """

    def __init__(
        self,
        backend: Backend,
        token_budget: int,
        max_batch_pairs: int,
        max_wait_ms: float,
        max_consecutive_ooms: int = 16,
        cross_job: bool = True,
        bulk_window_batches: int = 4,
        busy_token_budget: int = 2048,
        observer: BatchObserver | None = None,
    ) -> None:
        self.backend = backend
        self.cross_job = cross_job
        self.stats = BatchStats()
        self.budget = AdaptiveBudget(token_budget)
        self.max_batch_pairs = max_batch_pairs
        self.max_wait_ms = max_wait_ms
        self.max_consecutive_ooms = max_consecutive_ooms
        self.bulk_window_batches = bulk_window_batches
        self.busy_token_budget = busy_token_budget
        self.observer = observer or _Unobserved()
        self.observer.budget(self.budget.current)
        self._interactive_at = -math.inf  # when interactive pairs last arrived (monotonic)
        self._pending: dict[int, list[_Item]] = {}  # by priority, oldest first
        self._preparing = 0
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._batch_seq = itertools.count(1)
        self._last_batch = 0  # number of the latest forward pass started (read by job threads)
        self._batch_prefix = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="rerankq-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Wrap a job's work before ``submit`` (cache look-up, tokenizing): while any job is in
        here, the batcher gives a small backlog up to ``max_wait_ms`` to grow."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()

    def submit(
        self, pairs: Sequence[EncodedPair], priority: int = 0, trace: tracing.JobTrace | None = None
    ) -> Future[ScoredJob]:
        """Queue one job's pairs; the future resolves when all of them are scored. Lower
        ``priority`` runs first (0: interactive). ``trace``: the job's span, which the spans of
        the forward passes serving it link to."""
        submission = _Submission(pairs, Future(), priority, trace, self._last_batch)
        if not pairs:
            submission.future.set_result(ScoredJob([], []))
            return submission.future
        if priority == 0:
            self._interactive_at = time.monotonic()
        with self._cond:
            self._pending.setdefault(priority, []).extend(_Item(submission, i) for i in range(len(pairs)))
            self._cond.notify_all()
        return submission.future

    def _loop(self) -> None:
        while True:
            items = self._collect()
            if items is None:
                return
            priority = items[0].submission.priority
            batches = plan_batches(items, self._token_budget(priority), self.max_batch_pairs)
            for done, batch in enumerate(batches):
                if done and self._more_urgent_than(priority):
                    self._put_back([item for rest in batches[done:] for item in rest])
                    break
                self._run(batch)

    def _token_budget(self, priority: int) -> int:
        busy = priority > 0 and time.monotonic() - self._interactive_at < BUSY_FOR_S
        return min(self.budget.current, self.busy_token_budget) if busy else self.budget.current

    def _collect(self) -> list[_Item] | None:
        """Wait for work, give a small backlog ``max_wait_ms`` to grow while more is being
        prepared, then take the most urgent lane's pairs (one job's worth without cross-job batching)."""
        with self._cond:
            while self._running and not self._pending:
                self._cond.wait()
            if not self._running:
                return None
            if not self.cross_job:
                return self._take_first_job()
            deadline = time.monotonic() + self.max_wait_ms / 1000
            if self._preparing and self._is_small():
                self.stats.held += 1  # what tests (and the totals line) see of this wait
            while self._preparing and self._is_small() and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return self._take_most_urgent()

    def _take_most_urgent(self) -> list[_Item]:
        """All interactive pairs; of less urgent work, the oldest pairs, a window of a few batches."""
        priority = min(self._pending)
        queue = self._pending.pop(priority)
        if priority == 0:
            return queue
        window = self.bulk_window_batches * self.max_batch_pairs
        taken, rest = queue[:window], queue[window:]
        if rest:
            self._pending[priority] = rest
        return taken

    def _take_first_job(self) -> list[_Item]:
        priority = min(self._pending)
        queue = self._pending.pop(priority)
        first = queue[0].submission
        items = [item for item in queue if item.submission is first]
        if rest := [item for item in queue if item.submission is not first]:
            self._pending[priority] = rest
        return items

    def _more_urgent_than(self, priority: int) -> bool:
        with self._cond:
            return any(p < priority for p in self._pending)

    def _put_back(self, items: list[_Item]) -> None:
        """Return untouched pairs to the front of their lane: they are older than anything there."""
        with self._cond:
            priority = items[0].submission.priority
            self._pending[priority] = items + self._pending.get(priority, [])

    def _is_small(self) -> bool:
        """Whether everything pending would make one small batch (then waiting for more pays)."""
        count = sum(map(len, self._pending.values()))
        if count >= self.max_batch_pairs:
            return False
        longest = max(item.length for queue in self._pending.values() for item in queue)
        return count * longest < self.budget.current

    def _run(self, batch: list[_Item], oom_splits: int = 0) -> None:
        """The one place a forward pass happens."""
        number = self._last_batch = next(self._batch_seq)
        batch_id = f"{self._batch_prefix}:{number}"
        started = time.perf_counter()
        try:
            with self._forward_span(batch, batch_id, oom_splits):
                scores = self.backend.forward([item.submission.pairs[item.position] for item in batch])
        except torch.OutOfMemoryError:
            self._split_after_oom(batch, oom_splits)
            return
        except Exception as e:  # a failed forward pass fails its jobs, never the batcher
            log.exception("forward pass %s failed (%d pairs)", batch_id, len(batch))
            self._fail(batch, e)
            return
        elapsed = time.perf_counter() - started
        lengths = [item.length for item in batch]
        self.observer.batch(lengths, elapsed)
        if self.budget.recover():
            self.observer.budget(self.budget.current)
        self.stats.add(lengths)
        for submission in {item.submission for item in batch}:
            if not submission.batch_ids:  # its first forward pass
                submission.waited_s = started - submission.submitted_at
            submission.forward_s += elapsed
        self._route(batch, scores, batch_id, number)

    def _forward_span(self, batch: list[_Item], batch_id: str, oom_splits: int) -> AbstractContextManager[object]:
        """One span per forward pass, linked to the span of every job it serves (none untraced)."""
        if not tracing.enabled():  # the hot path without tracing: no pass over the batch
            return nullcontext()
        served = dict.fromkeys(item.submission for item in batch)  # each job once, in batch order
        jobs = [submission.trace for submission in served if submission.trace is not None]
        if not jobs:
            return nullcontext()
        lengths = [item.length for item in batch]
        attributes: tracing.Attributes = {
            "rerankq.batch_id": batch_id,
            "rerankq.pairs": len(batch),
            "rerankq.tokens.real": sum(lengths),
            "rerankq.tokens.padded": len(lengths) * max(lengths),
            "rerankq.device": self.backend.device,
            "rerankq.backend": self.backend.served_by,
            "rerankq.oom_splits": oom_splits,  # halvings after out-of-memory that led to this batch
        }
        return tracing.shared_span("rerankq.forward", jobs, attributes)

    def _split_after_oom(self, batch: list[_Item], oom_splits: int = 0) -> None:
        self.backend.free_memory()
        self.budget.shrink(len(batch), len(batch) * max(item.length for item in batch))
        self.observer.oom_split()
        self.observer.budget(self.budget.current)
        if len(batch) == 1 or self.budget.consecutive_ooms > self.max_consecutive_ooms:
            reason = "a pair does not fit alone" if len(batch) == 1 else "too many out-of-memory errors in a row"
            self._fail(batch, PairTooLarge(f"out of memory on {self.backend.device}: {reason}"))
            return
        half = len(batch) // 2
        self._run(batch[:half], oom_splits + 1)
        self._run(batch[half:], oom_splits + 1)

    @staticmethod
    def _fail(batch: list[_Item], error: Exception) -> None:
        for submission in {item.submission for item in batch}:
            if not submission.future.done():
                submission.future.set_exception(error)

    @staticmethod
    def _route(batch: list[_Item], scores: list[float], batch_id: str, number: int) -> None:
        for item, score in zip(batch, scores, strict=True):
            submission = item.submission
            submission.scores[item.position] = score
            submission.remaining -= 1
            if not submission.batch_ids:  # its first forward pass: how many ran ahead of it
                submission.waited_batches = number - 1 - submission.after_batch
            if batch_id not in submission.batch_ids:
                submission.batch_ids.append(batch_id)
            if submission.remaining == 0 and not submission.future.done():
                submission.future.set_result(
                    ScoredJob(
                        submission.scores,
                        submission.batch_ids,
                        submission.waited_batches,
                        submission.waited_s,
                        submission.forward_s,
                    )
                )
