"""``rerankq bulk run`` as users run it: a real CLI process, real Redis, real workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pty_support import run_on_a_terminal
from test_bulk_api import BATCH_TOLERANCE, depth
from worker_support import paused

from rerankq import RerankClient
from rerankq.testing.processes import WorkerProcess
from rerankq.testing.waiting import wait_until

MODEL = "tiny-bert"


def make_records(count: int, docs: int = 5, with_ids: bool = True) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    records = []
    for i in range(count):
        texts = [f"{tag} record {i} passage {j} " + "lorem ipsum " * (1 + (i * j) % 7) for j in range(docs)]
        documents: list[Any] = [{"id": f"r{i}d{j}", "text": t} for j, t in enumerate(texts)] if with_ids else texts
        records.append({"id": i, "query": f"{tag} question {i}", "documents": documents})
    return records


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def bulk_command(source: Path, output: Path, *args: str, model: str = MODEL) -> list[str]:
    command = [sys.executable, "-m", "rerankq", "bulk", "run", str(source), "--output", str(output)]
    return [*command, "--model", model, *args]


def run_bulk(source: Path, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bulk_command(source, output, *args), capture_output=True, text=True, timeout=300)


def _lines(log: Path) -> int:
    return log.read_bytes().count(b"\n")


def progress(output: Path) -> dict[str, Any]:
    path = output.with_name(output.name + ".progress.json")
    return json.loads(path.read_text()) if path.exists() else {"records_done": 0}


def assert_ranked_like_interactive(
    client: RerankClient, record: dict[str, Any], ranked: dict[str, Any], model: str = MODEL
) -> None:
    texts = [doc["text"] if isinstance(doc, dict) else doc for doc in record["documents"]]
    expected = client.rank(record["query"], texts, model=model, cache=False)
    assert ranked["id"] == record["id"]
    assert [r["index"] for r in ranked["results"]] == [e.index for e in expected]
    assert [r["score"] for r in ranked["results"]] == pytest.approx([e.score for e in expected], abs=BATCH_TOLERANCE)


def test_jsonl_round_trip_keeps_ids_order_and_scores(
    tmp_path: Path, client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = make_records(25)
    records[3]["documents"] = [doc["text"] for doc in records[3]["documents"]]  # plain strings: no ids
    output = tmp_path / "out.jsonl"
    done = run_bulk(write_jsonl(tmp_path / "in.jsonl", records), output, "--log-every", "0.1")

    assert done.returncode == 0, done.stderr
    ranked = read_jsonl(output)
    assert [r["id"] for r in ranked] == list(range(25))
    for record, result in zip(records[:5], ranked, strict=False):
        assert_ranked_like_interactive(client, record, result)
    first = ranked[0]["results"]
    assert {r["id"] for r in first} == {f"r0d{j}" for j in range(5)}
    assert all("id" not in r for r in ranked[3]["results"])
    assert "done: 25 records, 25 ranked, 0 failed" in done.stderr
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists()
    again = run_bulk(tmp_path / "in.jsonl", output)  # finished: nothing more to do
    assert again.returncode == 0 and read_jsonl(output) == ranked


def test_top_n_keeps_the_best_documents(
    tmp_path: Path, client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = make_records(3, docs=8)
    output = tmp_path / "out.jsonl"
    assert run_bulk(write_jsonl(tmp_path / "in.jsonl", records), output, "--top-n", "2").returncode == 0
    for record, ranked in zip(records, read_jsonl(output), strict=True):
        texts = [doc["text"] for doc in record["documents"]]
        expected = client.rank(record["query"], texts, model=MODEL, top_n=2)
        assert [r["index"] for r in ranked["results"]] == [e.index for e in expected]


def test_failed_records_go_to_the_errors_file_and_the_exit_status(tmp_path: Path, faulty_model: str) -> None:
    long_text = " ".join(["word"] * 60)  # over the faulty worker's 24 tokens: out of memory
    records: list[Any] = [
        {"id": "a", "query": "q", "documents": ["short one"]},
        "{broken json",
        {"id": "b", "query": "q", "documents": ["fine", long_text]},
        {"id": "c", "documents": ["no query"]},
        {"id": "d", "query": "q", "documents": ["short two"]},
    ]
    output, errors = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    command = bulk_command(
        write_jsonl(tmp_path / "in.jsonl", records), output, "--errors", str(errors), model=faulty_model
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert done.returncode == 1
    assert [r["id"] for r in read_jsonl(output)] == ["a", "d"]
    failed = read_jsonl(errors)
    assert [(f["id"], f["line"]) for f in failed] == [(None, 2), ("b", 3), ("c", 4)]
    assert (
        "JSON object" in failed[0]["error"] and "out of memory" in failed[1]["error"] and "query" in failed[2]["error"]
    )
    assert "5 records, 2 ranked, 3 failed" in done.stderr and str(errors) in done.stderr


def test_kill_9_mid_run_then_the_same_command_finishes_exactly_once(
    tmp_path: Path, client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    """Also: while the workers stop taking bulk jobs, the run keeps exactly --max-in-flight in Redis."""
    model = "all-minilm-l6-v2"  # real weights: slow enough on CPU to stop the run part way
    records = make_records(150, docs=16)
    source, output = write_jsonl(tmp_path / "in.jsonl", records), tmp_path / "out.jsonl"
    command = bulk_command(source, output, "--max-in-flight", "3", model=model)
    log = tmp_path / "bulk.log"  # a progress line each time the run waits with its window full
    with log.open("wb") as stderr:
        process = subprocess.Popen([*command, "--log-every", "0.1"], stderr=stderr)
    try:
        wait_until(lambda: progress(output)["records_done"] >= 5, timeout=60)
        with paused(client, model, ("bulk",)):
            wait_until(lambda: depth(client.settings.redis_url, model, "bulk") == 3, timeout=30)
            lines = _lines(log)  # two more waits: the run has looked for room since, and sent nothing more
            wait_until(lambda: _lines(log) >= lines + 2, timeout=30)
            assert depth(client.settings.redis_url, model, "bulk") == 3
            process.kill()  # SIGKILL: no chance to flush or clean up
            process.wait()
    finally:
        process.kill()
    assert 5 <= progress(output)["records_done"] < 150
    with output.open("ab") as file:
        file.write(b'{"id": 999, "results": [{"index"')  # a torn line, as a kill mid-write leaves

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ranked = read_jsonl(output)
    assert [r["id"] for r in ranked] == list(range(150))
    for i in (0, 75, 149):
        assert_ranked_like_interactive(client, records[i], ranked[i], model)


def test_ctrl_c_stops_cleanly_and_resumes(
    tmp_path: Path, client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = make_records(40)
    source, output = write_jsonl(tmp_path / "in.jsonl", records), tmp_path / "out.jsonl"
    with paused(client, MODEL, ("bulk",)):
        process = subprocess.Popen(bulk_command(source, output), stderr=subprocess.PIPE, text=True)
        wait_until(lambda: depth(client.settings.redis_url, MODEL, "bulk") > 0, timeout=60)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "run the same command again to resume" in stderr
    resumed = run_bulk(source, output)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["id"] for r in read_jsonl(output)] == list(range(40))


def test_refuses_to_overwrite_or_to_resume_a_different_run(tmp_path: Path, workers: dict[str, WorkerProcess]) -> None:
    source, output = write_jsonl(tmp_path / "in.jsonl", make_records(2)), tmp_path / "out.jsonl"
    output.write_text("someone else's file\n")
    refused = run_bulk(source, output)
    assert refused.returncode == 2 and "--restart" in refused.stderr
    assert output.read_text() == "someone else's file\n"

    assert run_bulk(source, output, "--restart").returncode == 0
    changed = run_bulk(source, output, "--top-n", "1")
    assert changed.returncode == 2 and "top_n" in changed.stderr
    missing = run_bulk(tmp_path / "nope.jsonl", tmp_path / "x.jsonl")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_parquet_in_and_out(tmp_path: Path, client: RerankClient, workers: dict[str, WorkerProcess]) -> None:
    records = make_records(12)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(records), source, row_group_size=5)
    output = tmp_path / "out.parquet"
    done = run_bulk(source, output)

    assert done.returncode == 0, done.stderr
    table = pq.read_table(output)
    assert table.schema.field("id").type == pa.int64()
    ranked = table.to_pylist()
    assert [r["id"] for r in ranked] == list(range(12))
    assert {r["id"] for r in ranked[0]["results"]} == {f"r0d{j}" for j in range(5)}
    assert_ranked_like_interactive(client, records[7], ranked[7])
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, workers: dict[str, WorkerProcess]) -> None:
    source, output = write_jsonl(tmp_path / "in.jsonl", make_records(10)), tmp_path / "out.jsonl"
    code, screen = run_on_a_terminal(bulk_command(source, output))
    assert code == 0
    assert "rerankq bulk" in screen and "10/10" in screen and "pairs/s" in screen
    assert "bulk: " not in screen  # the log lines are for pipes and files
