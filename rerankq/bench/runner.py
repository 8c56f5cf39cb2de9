"""Run benchmark scenarios: pick the model, start Redis, run, report."""

from __future__ import annotations

import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from rerankq.bench.inprocess import InProcessModel
from rerankq.bench.pipeline import WorkerSetup
from rerankq.bench.report import Record, machine, print_record, write_markdown
from rerankq.bench.scenarios import NOT_IN_ALL, SCENARIOS, BenchContext
from rerankq.core.registry import ModelKind
from rerankq.core.settings import get_settings
from rerankq.testing.model_shapes import SHAPE_KINDS, shape_folder
from rerankq.testing.processes import redis_for_run
from rerankq.testing.rabbitmq import rabbitmq_vhost
from rerankq.worker.loading import pick_device, resolve_model

DEFAULT_SHAPE = "minilm-l6"
BENCHMARKS_MD = Path("docs/BENCHMARKS.md")
RUN_DIR = Path(".run/bench")
Broker = Literal["redis", "rabbitmq"]


@dataclass(frozen=True)
class BenchOptions:
    scenario: str  # a name in SCENARIOS, or "all"
    model: str | None = None
    shape: str | None = None
    device: str = "auto"
    jobs: int | None = None
    docs_per_job: int | None = None
    concurrency: int = 32
    as_json: bool = False
    kind: ModelKind | None = None  # --kind for a --model folder (a shape knows its own)
    broker: Broker = "redis"  # where the jobs queue: rabbitmq = a virtual host of the run's own


def run(options: BenchOptions) -> list[Record]:
    console = Console(stderr=options.as_json)  # with --json, stdout carries only the JSON lines
    settings = get_settings()
    spec, label = _model_spec(options, console)
    kind = options.kind if options.model else SHAPE_KINDS.get(options.shape or DEFAULT_SHAPE)
    device = pick_device(options.device)
    names = [n for n in SCENARIOS if n not in NOT_IN_ALL] if options.scenario == "all" else [options.scenario]
    records: list[Record] = []
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_for_run())
        broker_url = stack.enter_context(rabbitmq_vhost("rerankq-bench")) if options.broker == "rabbitmq" else None
        run_dir = RUN_DIR / time.strftime("%Y%m%d-%H%M%S")  # worker logs of this run
        name = resolve_model(spec, None, settings, kind).name
        setup = WorkerSetup(redis_url, spec, name, device, options.concurrency, run_dir, kind, broker_url)
        ctx = BenchContext(
            setup,
            options.jobs,
            options.docs_per_job,
            lambda served_by: InProcessModel(spec, device, settings, kind, served_by),  # loaded when needed
            running_all=options.scenario == "all",
        )
        for name in names:
            console.print(f"[bold]{name}[/bold]: running on {device} with {label}, jobs on {options.broker} ...")
            for record in SCENARIOS[name](ctx):
                # `brokers` names the broker of each of its records itself
                record = {"scenario": name, "model": label, "device": device, "broker": options.broker, **record}
                print_record(console, record, options.as_json)
                records.append(record)
    if options.scenario == "all":
        command = shlex.join(["rerankq", *sys.argv[1:]])
        facts = machine(device, command) | {"model": label, "broker": options.broker}
        write_markdown(BENCHMARKS_MD, facts, records)
        console.print(f"wrote {BENCHMARKS_MD}")
    return records


def _model_spec(options: BenchOptions, console: Console) -> tuple[str, str]:
    """What the workers load (--model for them) and how the report names it."""
    if options.model:
        return options.model, options.model
    shape = options.shape or DEFAULT_SHAPE
    root = get_settings().shapes_dir
    if not (root / shape).is_dir():
        console.print(f"building shape {shape} (random weights, real architecture) in {root} ...")
    return str(shape_folder(shape, root)), f"shape {shape}"
