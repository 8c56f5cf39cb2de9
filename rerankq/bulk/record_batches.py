"""A bulk run's trace: one span for the run, and under it one span per record batch (the records
written between two checkpoints). Jobs sent while a batch's span is open link to it; each job is
a trace of its own (``rerankq.core.tracing.link_headers``), so a run of a million records stays
one small trace. Nothing here records unless tracing is on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from rerankq.core import tracing
from rerankq.producer.rank_many import RecordResult


class RecordBatches:
    """The open record batch's span (current, so the jobs sent meanwhile link to it) and what it wrote."""

    def __init__(self, model: str) -> None:
        self.attributes = {"rerankq.model": model, "rerankq.lane": "bulk"}
        self._opened: AbstractContextManager[Any] | None = None
        self._span: Any = None
        self.records = self.failed = self.pairs = 0

    def record(self, result: RecordResult) -> None:
        self.records += 1
        self.failed += not result.ok
        self.pairs += result.pairs

    def cut(self) -> None:
        """Close the batch and open the next."""
        self.close()
        self._opened = tracing.span("rerankq.bulk.records", self.attributes)
        self._span = self._opened.__enter__()
        self.records = self.failed = self.pairs = 0

    def close(self) -> None:
        if self._opened is None:
            return
        written = {"rerankq.records": self.records, "rerankq.failed": self.failed, "rerankq.pairs": self.pairs}
        self._span.set_attributes(written)
        self._opened.__exit__(None, None, None)
        self._opened = None


@contextmanager
def traced_run(model: str, source_name: str) -> Iterator[RecordBatches]:
    """The run's span around the records, with the first batch open."""
    batches = RecordBatches(model)
    with tracing.span("rerankq.bulk.run", batches.attributes | {"rerankq.input": source_name}):
        batches.cut()
        try:
            yield batches
        finally:
            batches.close()
