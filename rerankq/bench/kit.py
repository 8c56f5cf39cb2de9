"""The GPU kit's runner: one command that measures the whole GPU path and writes
``gpu-report.json`` and ``gpu-report.md``, inside a fixed time however a step behaves.

    python -m rerankq.bench.kit --out DIR [--dry-run] [--budget-s 450]

Each section (rerankq.bench.kit_sections) runs in a process group of its own with a time box:
a step that hangs is killed with every worker it started, recorded as timed out, and the run
goes on, so a GPU lent for minutes always gives back a report. ``--dry-run`` runs every step at
tiny sizes on the CPU (what CI tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from rerankq.testing.local_redis import local_redis_server

Report = dict[str, Any]

# Seconds each step may take at full size on a GPU (bge-reranker-v2-m3's shape). A dry run on a
# slow CPU gets twice as long; either way the whole run stops at --budget-s.
STEPS: dict[str, int] = {
    "prepare": 75,
    "throughput": 95,
    "score_drift": 25,
    "oom_drill": 65,
    "long_mode": 25,
    "latency": 30,
    "vs_seed_recipe": 80,
    "llm": 50,
}
MIN_STEP_S = 10  # a step with less time left than this is skipped, not started


@dataclass
class Step:
    status: str  # ok, failed, timed out, skipped
    seconds: float
    detail: str = ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rerankq.bench.kit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu-report.json and gpu-report.md go")
    parser.add_argument("--dry-run", action="store_true", help="every step at tiny sizes, on the CPU")
    parser.add_argument("--budget-s", type=float, default=450, help="the whole run ends inside this")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    report = run(args.dry_run, deadline, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-report.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu-report.md").write_text(render_markdown(report))
    print((args.out / "gpu-report.md").read_text(), flush=True)
    return 0 if all(step["status"] == "ok" for step in report["steps"].values()) else 1


def run(dry_run: bool, deadline: float, out: Path) -> Report:
    device = _device(dry_run)
    report: Report = {"dry_run": dry_run, "machine": _machine(device), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="rerankq-kit-") as work, local_redis_server() as server:
        config = Path(work) / "kit.json"
        models = {name: f"{work}/{name.replace('_', '-')}" for name in ("main_model", "drill_model", "llm_model")}
        config.write_text(
            json.dumps({"dry_run": dry_run, "device": device, "redis_url": server.url, "work": work, **models})
        )
        for name, box in STEPS.items():
            limit = min(box * (2 if dry_run else 1), deadline - time.monotonic())
            step, result = _run_step(name, config, limit, out)
            report["steps"][name] = step.__dict__
            if result is not None:
                report[name] = result
            if name == "prepare" and step.status != "ok":
                break  # no models: nothing else can run
            redis.Redis.from_url(server.url).flushall()  # each step starts from an empty Redis
    return report


def _run_step(name: str, config: Path, limit: float, out: Path) -> tuple[Step, Report | None]:
    if limit < MIN_STEP_S:
        return Step("skipped", 0.0, "no time left in the run's budget"), None
    result, log = config.with_name(f"{name}.json"), out / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "rerankq.bench.kit_sections", name, str(config), str(result)]
    started = time.monotonic()
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the step and every worker it started
            process.wait()
            return Step("timed out", time.monotonic() - started, f"killed after {limit:.0f} s"), None
    seconds = time.monotonic() - started
    if code != 0 or not result.is_file():
        return Step("failed", seconds, _tail(log)), None
    log.unlink()  # a passed step's log says nothing the report does not
    return Step("ok", seconds), json.loads(result.read_text())


def _tail(log: Path, lines: int = 12) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _device(dry_run: bool) -> str:
    import torch

    if dry_run:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run the kit with --dry-run on a machine without a GPU")
    return "cuda"


def _machine(device: str) -> dict[str, str]:
    from rerankq.bench.report import machine

    return machine(device, shlex.join(["python", "-m", "rerankq.bench.kit", *sys.argv[1:]]))


# --- the markdown report ----------------------------------------------------------------------

TARGETS = [
    ("pipeline >= 0.9 x raw fp16 forward at the longest length", lambda r: _longest(r)["ratio"] >= 0.9),
    ("model FLOP utilisation reported (a GPU in the peak table)", lambda r: _longest(r)["forward_mfu"] is not None),
    ("the OOM drill loses 0 jobs", lambda r: r["oom_drill"]["lost"] == 0),
    (
        "rerankq's gateway ahead of the seed recipe at 8 and 32 clients",
        lambda r: all(r["vs_seed_recipe"][f"clients_{n}"]["ratio"] > 1 for n in (8, 32)),
    ),
    (
        "LLM reranker: pipeline >= 0.9 x raw forward at the longer length",
        lambda r: (
            r["llm"][max((k for k in r["llm"] if k.startswith("words_")), key=lambda k: int(k[6:]))]["ratio"] >= 0.9
        ),
    ),
]


def _longest(report: Report) -> Report:
    lengths = [key for key in report["throughput"] if key.startswith("tokens_")]
    return dict(report["throughput"][max(lengths, key=lambda key: int(key.split("_")[1]))])


def render_markdown(report: Report) -> str:
    kind = "dry run (tiny sizes, CPU)" if report["dry_run"] else "full run"
    lines = [f"# rerankq GPU kit report: {kind}", ""]
    lines += [f"- **{name}**: {value}" for name, value in report["machine"].items()]
    lines += ["", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        detail = step["detail"].replace("\n", " ⏎ ").replace("|", "\\|")[-300:]
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {detail} |")
    lines += ["", "## Targets", ""]
    if report["dry_run"]:
        lines += [
            "A dry run proves that every measurement runs; at its sizes, on a CPU, the verdicts mean nothing.",
            "",
        ]
    lines += [f"- {text}: {_verdict(check, report)}" for text, check in TARGETS]
    for name in STEPS:
        if name in report and name != "prepare":
            lines += ["", f"## {name}", "", "| measure | value |", "|---|---|"]
            lines += [f"| {key} | {_format(value)} |" for key, value in _flatten(report[name])]
    return "\n".join([*lines, ""])


def _verdict(check: Any, report: Report) -> str:
    try:
        return "met" if check(report) else "MISSED"
    except (KeyError, TypeError, ValueError):  # its section failed or timed out
        return "not measured"


def _flatten(section: Report, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "—" if value is None else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
