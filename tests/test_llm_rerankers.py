"""LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma) on tiny random models built offline:
scores equal an independent reference written from each model card's formula, one pair at a
time with no padding, whatever batch a pair rides in, with the shared prompt prefix reused and
without; instructions reach the model and the cache keeps them apart; the template is never cut;
tokenizers that cannot read the template are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from gateway_support import AUTH
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerankq import JobFailed, RerankClient
from rerankq.core.constants import TASK_RERANK, queue_name
from rerankq.core.registry import kind_template
from rerankq.core.settings import get_settings
from rerankq.errors import InvalidRequest
from rerankq.producer import job_ledger
from rerankq.testing.llm_shapes import (
    GEMMA_SPECIAL,
    build_tiny_gemma_reranker,
    build_tiny_qwen3_reranker,
    train_bpe_tokenizer,
)
from rerankq.testing.processes import GatewayProcess, WorkerProcess, start_worker, stop_worker, wait_until_consuming
from rerankq.worker.backends import Backend, OomInjectingBackend
from rerankq.worker.batcher import Batcher
from rerankq.worker.llm_backend import YesNoRerankerBackend
from rerankq.worker.loading import load_backend, resolve_model

QWEN_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
    "a prediction of either 'Yes' or 'No'."
)
QUERY = "what is the capital of france"
# lengths from a few tokens to a few hundred, so every batch mixes short and long neighbours
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "no",
    "The Seine flows through Paris before it reaches the sea at Le Havre. " * 6,
    "Berlin is the capital of Germany.",
    "A long account of European rivers, cities and the trade that linked them for centuries. " * 12,
    "France",
]
CUSTOM = "Given a question about geography, find the passage that names the city"


class CardReference:
    """The model cards' code, straight: the full vocabulary's logits at the last position of one
    unpadded pair. Qwen3-Reranker: exp(log_softmax([no, yes]))[yes]; bge-reranker-v2-gemma: the
    logit of "Yes" (sigmoid of it when normalised, as FlagEmbedding does)."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.kind = kind

    def score(self, query: str, document: str, instruction: str | None = None) -> float:
        if self.kind == "qwen3-reranker":
            return self._qwen3(query, document, instruction or QWEN_INSTRUCTION)
        return float(torch.sigmoid(torch.tensor(self._gemma(query, document, instruction or GEMMA_PROMPT))))

    def _qwen3(self, query: str, document: str, instruction: str) -> float:
        encode = self.tokenizer.encode
        text = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
        ids = encode(QWEN_PREFIX, add_special_tokens=False) + encode(text, add_special_tokens=False)
        ids += encode(QWEN_SUFFIX, add_special_tokens=False)
        logits = self._last_logits(ids)
        yes, no = self.tokenizer.convert_tokens_to_ids("yes"), self.tokenizer.convert_tokens_to_ids("no")
        return float(torch.stack([logits[no], logits[yes]]).log_softmax(0)[1].exp())

    def _gemma(self, query: str, passage: str, prompt: str) -> float:
        def tokens(text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        sep = tokens("\n")
        ids = [self.tokenizer.bos_token_id, *tokens(f"A: {query}"), *sep, *tokens(f"B: {passage}"), *sep]
        yes_loc = tokens("Yes")[0]
        return float(self._last_logits(ids + tokens(prompt))[yes_loc])

    @torch.inference_mode()
    def _last_logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llm-models")
    return {
        "qwen3-reranker": build_tiny_qwen3_reranker(root / "tiny-qwen3"),
        "bge-gemma-reranker": build_tiny_gemma_reranker(root / "tiny-gemma"),
    }


REUSE = pytest.mark.parametrize("reuse", [True, False], ids=["prefix-reused", "whole-prompt"])


@pytest.fixture(scope="module")
def llm_workers(llm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Real workers, their pairs batched across jobs: tiny-qwen3 / tiny-gemma reuse each job's
    prompt prefix (the default), tiny-qwen3-whole computes every pair's whole prompt
    (RERANKQ_LLM_PREFIX_REUSE=false; gemma's whole-prompt path is the same code, checked in-process);
    ``served(workers, kind, reuse)`` names one."""
    logs, names = (
        tmp_path_factory.mktemp("llm-logs"),
        {"qwen3-reranker": "tiny-qwen3", "bge-gemma-reranker": "tiny-gemma"},
    )
    served = names | {"qwen3-reranker/whole": "tiny-qwen3-whole"}
    started: list[WorkerProcess] = [
        start_worker(
            str(llm_folders[kind.removesuffix("/whole")]),
            logs / f"{name}.log",
            *("--kind", kind.removesuffix("/whole"), "--name", name, "--concurrency", "8"),
            env={"RERANKQ_LLM_PREFIX_REUSE": str(not kind.endswith("/whole")).lower()},
        )
        for kind, name in served.items()
    ]
    try:
        for worker in started:
            wait_until_consuming(worker)
        yield served
    finally:
        for worker in started:
            stop_worker(worker)


def served(workers: dict[str, str], kind: str, reuse: bool) -> str:
    return workers[kind if reuse else f"{kind}/whole"]


def in_process(
    folder: Path, kind: str, max_length: int | None = None, reuse: bool = True, prefix_tokens: int = 4096
) -> YesNoRerankerBackend:
    settings = get_settings().model_copy(update={"llm_prefix_reuse": reuse, "llm_prefix_cache_tokens": prefix_tokens})
    backend = load_backend(resolve_model(str(folder), None, settings, kind), "cpu", max_length, settings=settings)  # type: ignore[arg-type]
    assert isinstance(backend, YesNoRerankerBackend)
    return backend


@REUSE
@pytest.mark.parametrize("kind", ["qwen3-reranker", "bge-gemma-reranker"])
def test_one_mixed_batch_scores_as_the_model_card_does_pair_by_pair(
    llm_folders: dict[str, Path], kind: str, reuse: bool
) -> None:
    backend, reference = in_process(llm_folders[kind], kind, reuse=reuse), CardReference(llm_folders[kind], kind)
    for instruction in (None, CUSTOM):
        pairs = backend.encode(QUERY, DOCUMENTS, backend.limits(), instruction)
        assert len({pair.length for pair in pairs}) == len(DOCUMENTS)  # every pair padded in this batch
        assert all(pair.prefix_length > 0 for pair in pairs) == reuse
        got = [backend.normalize(raw) for raw in backend.forward(pairs)]
        want = [reference.score(QUERY, document, instruction) for document in DOCUMENTS]
        assert got == pytest.approx(want, abs=1e-4)
        assert max(want) - min(want) > 1e-4  # the comparison can tell documents apart


def _scored(
    backend: Backend, jobs: list[tuple[str, str | None]]
) -> tuple[list[float], list[tuple[str, str | None, str]]]:
    """One forward pass over every document of ``jobs`` (query, instruction): scores and what each pair was."""
    pairs = [
        pair for query, instruction in jobs for pair in backend.encode(query, DOCUMENTS, backend.limits(), instruction)
    ]
    asked = [(query, instruction, document) for query, instruction in jobs for document in DOCUMENTS]
    return [backend.normalize(raw) for raw in backend.forward(pairs)], asked


def test_jobs_with_one_prompt_share_its_prefix_and_a_batch_mixes_prefixes(llm_folders: dict[str, Path]) -> None:
    """A batch holding two prompts of different lengths (laid in one padded cache) computes each
    once; a later job with one of them computes none, only its documents' tokens."""
    folder = llm_folders["qwen3-reranker"]
    backend, reference = in_process(folder, "qwen3-reranker"), CardReference(folder, "qwen3-reranker")
    assert backend.prefixes is not None
    mixed, later = [(QUERY, None), ("rivers of europe and their cities", CUSTOM)], [(QUERY, None)]
    for jobs, computed in ((mixed, 2), (later, 2)):
        scores, asked = _scored(backend, jobs)
        assert scores == pytest.approx([reference.score(q, d, i) for q, i, d in asked], abs=1e-4)
        assert backend.prefixes.stats.prefixes_computed == computed
    assert backend.prefixes.stats.prefixes_reused == 1
    assert backend.encode(QUERY, DOCUMENTS[:1], backend.limits())[0].prefix_length == 0  # nothing to share
    whole = sum(pair.length for pair in backend.encode(QUERY, DOCUMENTS, backend.limits()))
    assert backend.prefixes.stats.pair_tokens < 3 * whole / 2  # three jobs' documents cost less than 1.5 whole jobs


def test_a_full_prefix_cache_drops_the_oldest_and_scores_stay_exact(llm_folders: dict[str, Path]) -> None:
    folder = llm_folders["qwen3-reranker"]
    probe = in_process(folder, "qwen3-reranker")
    first, _ = probe.encode(QUERY, DOCUMENTS[:2], probe.limits())
    backend = in_process(folder, "qwen3-reranker", prefix_tokens=first.prefix_length + 20)  # room for one
    reference, queries = CardReference(folder, "qwen3-reranker"), [QUERY, "capital of italy", QUERY]
    assert backend.prefixes is not None
    for query in queries:
        scores, asked = _scored(backend, [(query, None)])
        assert scores == pytest.approx([reference.score(q, d, i) for q, i, d in asked], abs=1e-4)
        assert 0 < backend.prefixes.tokens <= first.prefix_length + 20  # one kept, the older one dropped
    assert (backend.prefixes.stats.prefixes_computed, backend.prefixes.stats.prefixes_reused) == (3, 0)


def test_out_of_memory_splits_llm_batches_and_gives_the_cached_prefixes_back(llm_folders: dict[str, Path]) -> None:
    """The batcher's out-of-memory rule holds for prefixed batches: halve and retry, the cached
    prefixes dropped with the device's cache, and every score still the card's."""
    folder = llm_folders["qwen3-reranker"]
    inner, reference = in_process(folder, "qwen3-reranker"), CardReference(folder, "qwen3-reranker")
    assert inner.prefixes is not None
    pairs = inner.encode(QUERY, DOCUMENTS, inner.limits())
    widest = max(p.prefix_length for p in pairs) + max(p.own_length for p in pairs)
    batcher = Batcher(OomInjectingBackend(inner, batch_tokens=3 * widest, pair_tokens=None), 100_000, 32, 0)
    batcher.start()
    try:
        alone = batcher.submit(pairs[:1]).result(timeout=60)  # fits: its prefix is computed and kept
        whole = batcher.submit(pairs).result(timeout=60)  # 6 pairs do not: split, prefixes dropped
    finally:
        batcher.stop()
    want = [reference.score(QUERY, document) for document in DOCUMENTS]
    assert [inner.normalize(raw) for raw in alone.scores + whole.scores] == pytest.approx(want[:1] + want, abs=1e-4)
    assert len(whole.batch_ids) > 1 and inner.prefixes.stats.prefixes_computed == 2  # computed again after the drop


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "reuse"), [("qwen3-reranker", True), ("qwen3-reranker", False), ("bge-gemma-reranker", True)]
)
def test_jobs_through_a_worker_equal_the_reference_in_any_batch(
    llm_folders: dict[str, Path], llm_workers: dict[str, str], client: RerankClient, kind: str, reuse: bool
) -> None:
    """Six jobs at once, each document set rotated, with and without an instruction: the worker
    packs their pairs into shared length-sorted batches (with prefix reuse: three jobs share each
    prompt, and a batch mixes the two); every score is the card's."""
    reference, model = CardReference(llm_folders[kind], kind), served(llm_workers, kind, reuse)
    jobs = [(DOCUMENTS[i:] + DOCUMENTS[:i], CUSTOM if i % 2 else None) for i in range(len(DOCUMENTS))]
    handles = [
        client.submit(QUERY, docs, model=model, instruction=instruction, cache=False) for docs, instruction in jobs
    ]
    for handle, (docs, instruction) in zip(handles, jobs, strict=True):
        result = handle.result(timeout=120)
        got = {hit.index: hit.score for hit in result.results}
        assert [got[i] for i in range(len(docs))] == pytest.approx(
            [reference.score(QUERY, doc, instruction) for doc in docs], abs=1e-4
        )


@pytest.mark.slow
@REUSE
def test_the_instruction_changes_scores_and_the_cache_keeps_them_apart(
    llm_workers: dict[str, str], client: RerankClient, reuse: bool
) -> None:
    model, documents = served(llm_workers, "qwen3-reranker", reuse), ["Paris is in France.", "Rome is in Italy."]
    default = client.submit("capital of france", documents, model=model).result(timeout=60)
    custom = client.submit("capital of france", documents, model=model, instruction=CUSTOM).result(timeout=60)
    again = client.submit("capital of france", documents, model=model, instruction=CUSTOM).result(timeout=60)
    assert again.device == "cache" and custom.device != "cache"
    assert {h.index: h.score for h in again.results} == {h.index: h.score for h in custom.results}
    assert {h.index: h.score for h in default.results} != pytest.approx({h.index: h.score for h in custom.results})


@pytest.mark.slow
@REUSE
def test_a_long_document_is_chunked_and_its_best_window_scores_as_the_card_says(
    llm_folders: dict[str, Path], llm_workers: dict[str, str], client: RerankClient, reuse: bool
) -> None:
    reference, long_document = CardReference(llm_folders["qwen3-reranker"], "qwen3-reranker"), DOCUMENTS[4] * 3
    (hit,) = client.rank(
        QUERY,
        [long_document],
        model=served(llm_workers, "qwen3-reranker", reuse),
        long_documents="chunk",
        chunk_tokens=64,
        cache=False,
    )
    assert hit.chunks is not None and hit.chunks > 1 and hit.span is not None
    assert hit.score == pytest.approx(reference.score(QUERY, long_document[hit.span[0] : hit.span[1]]), abs=1e-4)


def test_truncation_cuts_the_document_never_the_template(llm_folders: dict[str, Path]) -> None:
    room = in_process(llm_folders["qwen3-reranker"], "qwen3-reranker").cutter.specials + 40  # the prompt + 40
    backend = in_process(llm_folders["qwen3-reranker"], "qwen3-reranker", max_length=room)
    tokenizer = backend.tokenizer  # type: ignore[attr-defined]
    prefix, suffix = (tokenizer.encode(text, add_special_tokens=False) for text in (QWEN_PREFIX, QWEN_SUFFIX))
    (pair,) = backend.encode(QUERY, [DOCUMENTS[4] * 4], backend.limits())
    ids = pair.features[0]["input_ids"]
    assert len(ids) <= room and ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
    text = tokenizer.decode(ids)
    assert f"<Query>: {QUERY}\n<Document>: A long account" in text  # the document cut at its end, nothing else
    with pytest.raises(InvalidRequest, match="instruction"):  # a prompt that leaves no room is refused, not cut
        backend.encode(QUERY, ["a document"], backend.limits(), instruction="be thorough " * 40)


@pytest.mark.slow
def test_an_encoder_refuses_an_instruction_by_name(
    workers: dict, client: RerankClient, gateway: GatewayProcess, redis_server: Any
) -> None:
    """At once, before anything is enqueued (the SDK and the gateway know the model's kind from
    its live workers); and a job that reaches a cross-encoder's worker anyway fails naming it."""
    depth = redis.Redis.from_url(redis_server.url).llen("rerankq.tiny-bert.interactive")
    with pytest.raises(InvalidRequest, match="instruction"):
        client.rank("query", ["a document"], model="tiny-bert", instruction=CUSTOM)
    body = {"model": "tiny-bert", "query": "q", "documents": ["d"], "instruction": CUSTOM}
    answer = httpx.post(f"{gateway.url}/v1/rerank", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 422 and "instruction" in answer.text
    assert redis.Redis.from_url(redis_server.url).llen("rerankq.tiny-bert.interactive") == depth
    job = client.build("query", ["a document"], model="tiny-bert", instruction=CUSTOM, cache=False)
    job_ledger.record_submitted(client.app.backend.client, job.job_id, job.model, job.lane, client.settings)
    client.app.send_task(TASK_RERANK, args=[job.model_dump()], task_id=job.job_id, queue=queue_name("tiny-bert"))
    with pytest.raises(JobFailed, match="instruction"):
        client.job(job.job_id).result(timeout=60)


@pytest.mark.slow
def test_every_gateway_shape_and_bulk_records_carry_the_instruction(
    llm_workers: dict[str, str], gateway: GatewayProcess, client: RerankClient
) -> None:
    model, documents = llm_workers["qwen3-reranker"], ["Paris is in France.", "Rome is in Italy."]
    want = {h.index: h.score for h in client.rank("capital", documents, model=model, instruction=CUSTOM)}
    body = {"model": model, "query": "capital", "documents": documents, "instruction": CUSTOM}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http:
        answers: dict[str, Any] = {path: http.post(path, json=body).json() for path in ("/v1/rerank", "/v2/rerank")}
        tei = http.post("/rerank", json={"model": model, "query": "capital", "texts": documents, "instruction": CUSTOM})
    for path, answer in answers.items():
        assert {h["index"]: h["relevance_score"] for h in answer["results"]} == pytest.approx(want), path
    assert {h["index"]: h["score"] for h in tei.json()} == pytest.approx(want)
    records = [{"id": "r1", "query": "capital", "documents": documents, "instruction": CUSTOM}]
    (record,) = client.rank_many(records, model=model)
    assert {h.index: h.score for h in record.results} == pytest.approx(want)


def test_templates_ship_in_the_manifests_and_reach_the_cache_key() -> None:
    qwen = kind_template("qwen3-reranker")
    assert qwen.segments == [
        QWEN_PREFIX,
        "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
        QWEN_SUFFIX,
    ]
    assert kind_template("bge-gemma-reranker").instruction == GEMMA_PROMPT
    manifest = resolve_model("qwen3-reranker-0.6b", None, get_settings())
    assert manifest.source == "Qwen/Qwen3-Reranker-0.6B" and manifest.template == qwen
    folder = resolve_model("some/hub-id", None, get_settings(), "bge-gemma-reranker")  # a folder or hub id
    assert folder.dtype_for("cuda") == "bfloat16" and folder.dtype_for("cpu") == "float32"


@pytest.mark.slow
def test_a_tokenizer_without_a_template_token_is_refused_naming_it(tmp_path: Path) -> None:
    folder = build_tiny_gemma_reranker(tmp_path / "no-bos")
    tokenizer = train_bpe_tokenizer([t for t in GEMMA_SPECIAL if t != "<bos>"], 1200, pad="<pad>", eos="<eos>")
    tokenizer.save_pretrained(folder)  # a tokenizer saved from another model: no <bos>
    check = _models_check(str(folder), "--kind", "bge-gemma-reranker")
    assert check.returncode == 1 and "template" in check.stdout and "'<bos>'" in check.stdout, check.stdout


@pytest.mark.slow
def test_answers_that_are_not_single_tokens_are_refused_naming_them(
    llm_folders: dict[str, Path], tmp_path: Path
) -> None:
    template = kind_template("qwen3-reranker").model_dump() | {"yes": "absolutely", "version": "qwen3-custom/1"}
    manifest = {"name": "odd-answers", "source": str(llm_folders["qwen3-reranker"]), "kind": "qwen3-reranker"}
    (tmp_path / "odd.toml").write_text(_toml(manifest | {"template": template}))
    check = _models_check("odd-answers", env={"RERANKQ_MODELS_DIR": str(tmp_path)})
    assert check.returncode == 1 and "'absolutely'" in check.stdout, check.stdout


def _models_check(model: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    command = [sys.executable, "-m", "rerankq", "models", "check", "--model", model, "--device", "cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _toml(data: dict[str, Any]) -> str:
    """Enough TOML for a manifest: strings, lists of strings, and one table (JSON strings are TOML's)."""
    lines, table = [], data.pop("template")
    lines += [f"{key} = {json.dumps(value)}" for key, value in data.items()]
    lines.append("[template]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if value is not None]
    return "\n".join(lines) + "\n"
