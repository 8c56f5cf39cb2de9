"""Bulk reranking: many records through a model's bulk lane, with bounded work in flight.

A record is one query against any number of documents, each a string or ``{"id", "text"}``.
A record with more than ``bulk_job_documents`` documents travels as several jobs whose scores
are merged here (a pair's score never depends on its neighbours), so no task is unbounded.
At most ``max_in_flight`` jobs wait in Redis at a time: records are read only as fast as results
come back, and every result is deleted once read. Workers take bulk jobs only when their
interactive lane is empty (see rerankq.worker.batcher for the order within a worker).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from rerankq.core.aliases import Route
from rerankq.core.contract import (
    JobOptions,
    RerankJob,
    RerankResult,
    check_document_texts,
    check_query,
    check_top_n,
    rank_scores,
)
from rerankq.errors import InvalidRequest, JobFailed, invalid_request
from rerankq.producer.result_watcher import ResultWatcher

if TYPE_CHECKING:
    from rerankq.producer.client import RerankClient

RecordId = str | int


class BulkDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: RecordId | None = None
    text: str


def _document_kind(value: Any) -> str:
    return "object" if isinstance(value, Mapping | BulkDocument) else "string"


# A tagged union, so a bad document gets one error that names its real problem
Document = Annotated[
    Annotated[str, Tag("string")] | Annotated[BulkDocument, Tag("object")], Discriminator(_document_kind)
]


class BulkRecord(BaseModel):
    """One input record: ``{"id": ..., "query": ..., "documents": [...]}``, and for LLM rerankers
    an optional ``instruction`` (the run's own when absent); other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: RecordId
    query: str
    documents: list[Document]
    instruction: str | None = None

    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]

    def document_ids(self) -> list[RecordId | None]:
        return [None if isinstance(doc, str) else doc.id for doc in self.documents]


class BulkRanked(BaseModel):
    """One document's place: its position in the record, its score, and its id where given."""

    index: int
    score: float
    id: RecordId | None = None


class RecordResult(BaseModel):
    """One record's outcome: ranked documents, or ``error`` saying why it failed."""

    id: RecordId | None
    position: int  # 0-based place in the input
    results: list[BulkRanked] = []
    error: str | None = None
    pairs: int = 0  # documents scored (by the model or from the cache)
    cache_hits: int = 0
    model: str | None = None  # the model version that scored it (one per record, even behind an alias)
    revision: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _OpenRecord:
    """A record whose jobs are not all back yet; scores land at their document's position."""

    record_id: RecordId
    position: int
    document_ids: list[RecordId | None]
    jobs_left: int
    scores: list[float] = field(init=False)
    cache_hits: int = 0
    error: str | None = None
    served_by: tuple[str | None, str | None] = (None, None)  # (model, revision)

    def __post_init__(self) -> None:
        self.scores = [0.0] * len(self.document_ids)

    def add(self, offset: int, outcome: RerankResult | JobFailed) -> None:
        self.jobs_left -= 1
        if isinstance(outcome, JobFailed):
            self.error = self.error or outcome.reason
            return
        for ranked in outcome.results:
            self.scores[offset + ranked.index] = ranked.score
        self.cache_hits += outcome.stats.cache_hits
        self.served_by = (outcome.model, outcome.revision or self.served_by[1])

    def result(self, top_n: int | None) -> RecordResult:
        if self.error is not None:
            return RecordResult(id=self.record_id, position=self.position, error=self.error)
        ranked = [
            BulkRanked(index=doc.index, score=doc.score, id=self.document_ids[doc.index])
            for doc in rank_scores(self.scores, top_n)
        ]
        return RecordResult(
            id=self.record_id,
            position=self.position,
            results=ranked,
            pairs=len(self.scores),
            cache_hits=self.cache_hits,
            model=self.served_by[0],
            revision=self.served_by[1],
        )


def parse_record(item: BulkRecord | Mapping[str, Any] | Exception) -> BulkRecord:
    """A record from a mapping; an exception in its place (a reader's parse error) is its failure."""
    if isinstance(item, BulkRecord):
        return item
    if isinstance(item, Exception):
        raise InvalidRequest("record", "must be a JSON object", str(item)) from item
    if not isinstance(item, Mapping):
        raise InvalidRequest("record", "must be an object with id, query and documents", f"got {type(item).__name__}")
    try:
        return BulkRecord.model_validate(item)
    except ValidationError as e:
        raise invalid_request(e.errors(), "record") from e


def record_id_of(item: object) -> RecordId | None:
    """The id to report a failed record under, when it has a usable one."""
    record_id = item.get("id") if isinstance(item, Mapping) else getattr(item, "id", None)
    return record_id if isinstance(record_id, str | int) and not isinstance(record_id, bool) else None


class BulkRanker:
    """One pass over a stream of records (``RerankClient.rank_many`` builds it)."""

    # Records read but not yet yielded, in multiples of max_in_flight: with ``ordered``, results
    # that finish early wait here for earlier ones, and a stuck record stops the reading.
    WINDOW_PER_JOB = 4

    def __init__(self, client: RerankClient, max_in_flight: int, options: JobOptions) -> None:
        if max_in_flight < 1:
            raise InvalidRequest("max_in_flight", "must be at least 1", f"got {max_in_flight}")
        check_top_n(options.get("top_n"))
        self.client = client
        self.max_in_flight = max_in_flight
        self.options = options
        self.model = options.get("model")  # None: the default (alias or model)
        settings = client.settings
        self.job_documents = min(settings.bulk_job_documents, settings.max_documents)
        self._open: dict[int, _OpenRecord] = {}
        self._done: dict[int, RecordResult] = {}
        self._unsent: deque[tuple[int, int, RerankJob]] = deque()  # (position, offset, job)
        self._in_flight: dict[str, tuple[int, int]] = {}  # job id -> (position, offset)
        self._next_position = 0  # ordered: the next record to yield
        self._exhausted = False

    def run(
        self,
        records: Iterable[BulkRecord | Mapping[str, Any] | Exception],
        ordered: bool = False,
        on_wait: Callable[[], object] | None = None,
    ) -> Iterator[RecordResult]:
        source = enumerate(records)
        watcher = ResultWatcher(self.client.app)
        try:
            while True:
                self._fill(source, watcher)
                yield from self._completed(ordered)
                if self._exhausted and not self._open and not self._done:
                    return
                if on_wait is not None:
                    on_wait()
                for job_id, outcome in watcher.finished():
                    position, offset = self._in_flight.pop(job_id)
                    self._settle(position, offset, outcome)
        finally:
            watcher.close(self.client.settings.visibility_timeout_s * 4)

    def _fill(self, source: Iterator[tuple[int, Any]], watcher: ResultWatcher) -> None:
        """Send jobs while fewer than ``max_in_flight`` are out; read a record only when every job
        of the records before it is sent."""
        while len(watcher) < self.max_in_flight:
            if self._unsent:
                position, offset, job = self._unsent.popleft()
                if (answer := self.client.dispatch(job)) is None:  # None: published
                    watcher.watch(job.job_id)
                    self._in_flight[job.job_id] = (position, offset)
                else:
                    self._settle(position, offset, answer)
            elif self._exhausted or len(self._open) + len(self._done) >= self.WINDOW_PER_JOB * self.max_in_flight:
                return
            elif (item := next(source, None)) is None:
                self._exhausted = True
            else:
                self._open_record(*item)

    def _open_record(self, position: int, item: Any) -> None:
        try:
            record = parse_record(item)
            jobs = self._jobs_for(record)
        except InvalidRequest as e:
            self._done[position] = RecordResult(id=record_id_of(item), position=position, error=str(e))
            return
        self._open[position] = _OpenRecord(record.id, position, record.document_ids(), len(jobs))
        self._unsent.extend((position, offset, job) for offset, job in jobs)
        if not jobs:  # no documents: nothing to score
            self._done[position] = self._open.pop(position).result(self.options.get("top_n"))

    def _jobs_for(self, record: BulkRecord) -> list[tuple[int, RerankJob]]:
        """The record's documents in jobs of at most ``bulk_job_documents``, each with its offset."""
        texts, settings = record.texts(), self.client.settings
        check_query(record.query, settings)
        check_document_texts(texts, settings)
        step = self.job_documents
        route = self.client.resolve(self.model)  # once per record: its jobs never mix versions
        return [
            (offset, self._build(record.query, texts[offset : offset + step], route, record.instruction))
            for offset in range(0, len(texts), step)
        ]

    def _build(self, query: str, documents: list[str], route: Route, instruction: str | None) -> RerankJob:
        """Every document's score comes back (top_n applies to the merged record)."""
        options: JobOptions = {**self.options, "model": route.model, "top_n": None}
        if instruction is not None:
            options["instruction"] = instruction
        job = self.client.build(query, documents, lane="bulk", **options)
        return job.model_copy(update={"alias": route.alias}) if route.alias else job

    def _settle(self, position: int, offset: int, outcome: RerankResult | JobFailed) -> None:
        record = self._open[position]
        record.add(offset, outcome)
        if record.jobs_left == 0:
            del self._open[position]
            self._done[position] = record.result(self.options.get("top_n"))

    def _completed(self, ordered: bool) -> Iterator[RecordResult]:
        if not ordered:
            done, self._done = self._done, {}
            yield from done.values()
            return
        while self._next_position in self._done:
            yield self._done.pop(self._next_position)
            self._next_position += 1
