"""``rerankq bulk run``: stream an input file through a model's bulk lane into an output file.

Results are written in input order (``rank_many(ordered=True)``), failures to the errors file,
and progress is checkpointed every second (see ``checkpoint``), so the same command resumes an
interrupted run. A Parquet output is built from a JSON Lines work file once every record is in.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console

from rerankq.bulk.checkpoint import Checkpoint
from rerankq.bulk.formats import (
    BulkFileError,
    SourceRecord,
    count_records,
    error_line,
    format_of,
    jsonl_to_parquet,
    output_line,
    read_records,
)
from rerankq.bulk.progress import Tally, display_for
from rerankq.bulk.record_batches import traced_run
from rerankq.core.constants import DEFAULT_ALIAS
from rerankq.core.live_workers import serving
from rerankq.producer.client import RerankClient
from rerankq.producer.rank_many import RecordResult

CHECKPOINT_EVERY_S = 1.0
EXIT_FAILED_RECORDS = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BulkOptions:
    input: Path
    output: Path
    errors: Path | None = None  # None: OUTPUT.errors.jsonl
    model: str | None = None
    top_n: int | None = None
    restart: bool = False
    log_every_s: float = 10.0

    @property
    def errors_path(self) -> Path:
        return self.errors or self.output.with_name(self.output.name + ".errors.jsonl")

    @property
    def work_path(self) -> Path:
        """Where results are appended: the output itself, or a JSON Lines file for a Parquet output."""
        if format_of(self.output) == "jsonl":
            return self.output
        return self.output.with_name(self.output.name + ".partial.jsonl")


class BulkUsageError(Exception):
    """The run cannot start as asked (missing input, foreign output, changed settings)."""


def run_bulk(options: BulkOptions, client: RerankClient, console: Console) -> int:
    """Run (or resume) to the end; returns the exit status."""
    model = options.model or DEFAULT_ALIAS  # an alias is resolved per record (see BulkRanker)
    checkpoint = start_or_resume(options, model)
    progress_path = Checkpoint.path_for(options.output)
    client.resolve(model)  # UnknownModel before anything is read
    if checkpoint.complete:  # a finished run, run again: only the summary
        tally = Tally(checkpoint, None)
    else:
        streamed = stream(options, client, checkpoint, console)
        if streamed is None:
            return EXIT_INTERRUPTED
        tally = streamed
        if options.work_path != options.output:
            jsonl_to_parquet(options.work_path, options.output)
            options.work_path.unlink()
        checkpoint.complete = True
        checkpoint.save(progress_path)
    console.print(f"done: {tally.summary()}; output {options.output}", highlight=False, soft_wrap=True)
    if checkpoint.failed:
        console.print(f"{checkpoint.failed} records failed: see {options.errors_path}", highlight=False, soft_wrap=True)
        return EXIT_FAILED_RECORDS
    return 0


def start_or_resume(options: BulkOptions, model: str) -> Checkpoint:
    if not options.input.is_file():
        raise BulkUsageError(f"no input file {options.input}")
    fresh = Checkpoint(str(options.input.resolve()), options.input.stat().st_size, model, options.top_n)
    progress_path = Checkpoint.path_for(options.output)
    written = [path for path in (options.output, options.work_path, options.errors_path) if path.exists()]
    if options.restart:
        for path in [*written, progress_path]:
            path.unlink(missing_ok=True)
        return fresh
    saved = Checkpoint.load(progress_path)
    if saved is None:
        if written:
            raise BulkUsageError(
                f"{written[0]} exists but no run recorded its progress in {progress_path}; "
                "pass --restart to overwrite it, or choose another output"
            )
        return fresh
    if why := saved.mismatch(fresh):
        raise BulkUsageError(f"{progress_path} belongs to another run ({why}); pass --restart to start over")
    return saved


def idle_lanes(client: RerankClient, model: str) -> str:
    """The bulk lanes of ``model``'s versions that no live worker consumes: records sent there wait
    in Redis until one starts (a queue-driven autoscaler may start one)."""
    alias = client.aliases.table().get(model)
    versions = list(alias.targets) if alias else [client.resolve(model).model]
    idle = [version for version in versions if not serving(client.workers.read(), version, "bulk")]
    return "; ".join(
        f"no live worker consumes the bulk lane of {version} (start one: rerankq worker --model {version})"
        for version in idle
    )


class Sink:
    """The output (work) and errors files, appended in input order and cut back to the
    checkpoint on resume. The errors file is created on the first failure."""

    def __init__(self, options: BulkOptions, checkpoint: Checkpoint) -> None:
        self.output = _open_at(options.work_path, checkpoint.output_bytes)
        self._errors_path = options.errors_path
        self.errors = _open_at(self._errors_path, checkpoint.errors_bytes) if checkpoint.errors_bytes else None

    def write(self, result: RecordResult, line: int) -> None:
        if result.ok:
            self.output.write(output_line(result))
            return
        if self.errors is None:
            self.errors = _open_at(self._errors_path, 0)
        self.errors.write(error_line(result, line))

    def flush(self, checkpoint: Checkpoint) -> None:
        """Flush both files and record how long they are."""
        self.output.flush()
        checkpoint.output_bytes = self.output.tell()
        if self.errors is not None:
            self.errors.flush()
            checkpoint.errors_bytes = self.errors.tell()

    def close(self) -> None:
        self.output.close()
        if self.errors is not None:
            self.errors.close()


def _open_at(path: Path, length: int) -> BinaryIO:
    """Open for appending after the first ``length`` bytes (what a checkpoint says is final)."""
    size = path.stat().st_size if path.exists() else 0
    if size < length:
        raise BulkUsageError(f"{path} holds {size} bytes, less than its progress record ({length}); pass --restart")
    file = path.open("r+b" if path.exists() else "w+b")
    file.truncate(length)
    file.seek(length)
    return file


def stream(options: BulkOptions, client: RerankClient, checkpoint: Checkpoint, console: Console) -> Tally | None:
    """Rank every record not yet final; returns the run's counters, or None when interrupted
    (Ctrl-C, SIGTERM): the checkpoint on disk then says where to resume."""
    fmt = format_of(options.input)
    progress_path = Checkpoint.path_for(options.output)
    tally = Tally(checkpoint, _total(options.input))
    origins: deque[SourceRecord] = deque()  # records handed to rank_many, not yet written
    records = _values(read_records(options.input, fmt, checkpoint.resume_at, checkpoint.line), origins)
    display = display_for(console, tally, lambda: idle_lanes(client, checkpoint.model), options.log_every_s)
    results = client.rank_many(records, model=checkpoint.model, top_n=checkpoint.top_n, ordered=True,
                               on_wait=lambda: display.update(tally))  # fmt: skip
    sink = Sink(options, checkpoint)
    saved_at = time.monotonic()
    try:
        with interrupts_deferred_inside() as atomic, traced_run(checkpoint.model, options.input.name) as batches:
            for result in results:
                with atomic():  # a record is written and counted together, or not at all
                    _record(checkpoint, result, origins.popleft(), sink)
                    batches.record(result)
                    if time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
                        _save(sink, checkpoint, progress_path)
                        saved_at = time.monotonic()
                        batches.cut()
                display.update(tally)
    except KeyboardInterrupt:
        console.print(f"interrupted after {tally.records} records; run the same command again to resume")
        return None
    finally:
        display.close()
        _save(sink, checkpoint, progress_path)
        sink.close()
    return tally


def _save(sink: Sink, checkpoint: Checkpoint, path: Path) -> None:
    sink.flush(checkpoint)
    checkpoint.save(path)


@contextmanager
def interrupts_deferred_inside() -> Iterator[Callable[[], AbstractContextManager[None]]]:
    """Ctrl-C and SIGTERM (a Kubernetes Job being stopped) raise KeyboardInterrupt, except
    inside an ``atomic()`` block, which they let finish first. Python delivers signals to the
    main thread only; elsewhere (a notebook's worker thread) this changes nothing."""
    state = {"atomic": False, "pending": False}

    def handle(signum: int, frame: object) -> None:
        if state["atomic"]:
            state["pending"] = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def atomic() -> Iterator[None]:
        state["atomic"] = True
        try:
            yield
        finally:
            state["atomic"] = False
        if state["pending"]:
            state["pending"] = False
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield atomic
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield atomic
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _values(source: Iterator[SourceRecord], origins: deque[SourceRecord]) -> Iterator[Any]:
    for record in source:
        origins.append(record)
        yield record.value


def _record(checkpoint: Checkpoint, result: RecordResult, origin: SourceRecord, sink: Sink) -> None:
    sink.write(result, origin.line)
    checkpoint.records_done += 1
    checkpoint.resume_at, checkpoint.line = origin.resume_at, origin.line
    checkpoint.failed += not result.ok
    checkpoint.pairs += result.pairs
    checkpoint.cache_hits += result.cache_hits


def _total(path: Path) -> int | None:
    try:
        return count_records(path, format_of(path))
    except BulkFileError:
        return None
