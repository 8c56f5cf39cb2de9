"""Benchmark output: a table per scenario, one JSON line per record, and docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Record = dict[str, Any]
Check = Callable[[Record], bool]
SEED_TARGETS = {1: 1.0, 8: 1.2, 32: 1.3}  # rerankq's pairs/s over the seed recipe's, by clients

# What users are promised (issue 5), per scenario: (the field judged, the target in words, the check).
TARGETS: dict[str, tuple[str, str, Check]] = {
    "throughput": (
        "ratio",
        ">= 0.95 (MiniLM), >= 0.85 (tiny model)",
        lambda r: r["ratio"] >= (0.85 if "tiny" in r["model"] else 0.95),
    ),
    "naive": (
        "ratio",
        ">= 2x for 1-document jobs, >= 1.1x for 8-document jobs (CPU)",
        lambda r: r["ratio"] >= (2.0 if r["docs_per_job"] == 1 else 1.1),
    ),
    "mixed": ("ratio", ">= 1.1x on CPU", lambda r: r["ratio"] >= 1.1),
    "cache": (
        "speedup",
        "warm p50 <= 5 ms and >= 50x faster than cold",
        lambda r: r["warm_ms_p50"] <= 5 and r["speedup"] >= 50,
    ),
    "latency": ("overhead_ms_p50", "<= 3 ms (tiny model)", lambda r: r["overhead_ms_p50"] <= 3),
    "tracing": ("ratio", "traces on (every span exported) add <= 15 % to a job's p50", lambda r: r["ratio"] <= 1.15),
    "scale": ("ratio", ">= 1.8x (2 cores)", lambda r: r["ratio"] >= 1.8),
    "priority": (
        "ratio",
        "interactive p95 under bulk <= 2x idle; bulk >= 0.9x the pipeline's pairs/s",
        lambda r: r["ratio"] <= 2 and r["bulk_ratio"] >= 0.9,
    ),
    "startup": ("check_cost_s", "model checks add <= 5 s to a worker start", lambda r: r["check_cost_s"] <= 5),
    "backends": (
        "ratio",
        "onnx: scores within 1e-4 of torch; onnx-int8: >= 1.5x torch float32 pairs/s, and with real weights "
        "Spearman >= 0.99 and the best passage kept in >= 97% of close-candidate jobs",
        lambda r: (
            r["max_abs_diff"] <= 1e-4
            if r["backend"] == "onnx"
            else r["ratio"] >= 1.5
            and (r["model"].startswith("shape") or (r["spearman"] >= 0.99 and r["close_top1"] >= 0.97))
        ),
    ),
    "prefix": (
        "ratio",
        ">= 1.7x the whole prompt's pairs/s for 16-document jobs, >= 1x for 1-document jobs (Qwen3-Reranker-0.6B, CPU)",
        lambda r: r["ratio"] >= (1.7 if r["docs_per_job"] >= 16 else 1.0),
    ),
    "seed": (
        "ratio",
        "rerankq's gateway >= 1.0x the seed recipe's pairs/s at 1 client, >= 1.2x at 8, >= 1.3x at 32",
        lambda r: r["ratio"] >= SEED_TARGETS.get(r["clients"], 1.0),
    ),
}


def _keeps_ranking(record: Record) -> bool:
    return bool(record["spearman"] >= 0.99 and record["close_top1"] >= 0.97)


def machine(device: str, command: str) -> dict[str, str]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "gpu": gpu,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
    }


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def verdict(record: Record) -> str:
    if record["scenario"] not in TARGETS:  # `brokers`: a comparison, no promise
        return "none (a comparison)"
    _, target, check = TARGETS[record["scenario"]]
    return f"{'met' if check(record) else 'MISSED'} (target {target})"


def print_record(console: Console, record: Record, as_json: bool) -> None:
    table = Table("field", "value", title=f"rerankq bench {record['scenario']}", title_justify="left")
    for name, value in record.items():
        if name != "scenario":
            table.add_row(name, _format(value))
    table.add_row("target", verdict(record))
    console.print(table)
    if as_json:
        print(json.dumps(record), flush=True)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if value and abs(value) < 0.001:
            return f"{value:.1e}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format(v)}" for k, v in value.items())
    return str(value)


def write_markdown(path: Path, facts: dict[str, str], records: list[Record]) -> None:
    """Replace this machine + model's (+ broker's, when not Redis) section of ``path`` (other
    sections stay)."""
    key = f"{facts['device']} · {facts['model']}"
    if facts.get("broker", "redis") != "redis":
        key += f" · jobs on {facts['broker']}"
    section = _section(key, facts, records)
    text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    pattern = re.compile(rf"<!-- bench: {re.escape(key)} -->.*?<!-- /bench -->\n", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _section(key: str, facts: dict[str, str], records: list[Record]) -> str:
    lines = [f"<!-- bench: {key} -->", f"## {key}", ""]
    lines += [f"- **{name}**: {value}" for name, value in facts.items() if name != "command"]
    lines += [f"- **command**: `{facts['command']}`", "", "| scenario | measured | target |", "|---|---|---|"]
    for record in records:
        measured = "; ".join(
            f"{name} {_format(value)}"
            for name, value in record.items()
            if name not in ("scenario", "model", "device", "broker")
        )
        lines.append(f"| {record['scenario']} | {measured} | {verdict(record)} |")
    return "\n".join([*lines, "", "<!-- /bench -->", ""])


_HEADER = """# rerankq benchmarks

Written by `rerankq bench all` (one section per device and model; a new run replaces its own
section). Every number is a ratio measured side by side in one run on the machine named.
The text above the tables (kept when the tables are rewritten) says what each scenario measures.

"""
