"""Provoke real CUDA out-of-memory and show split + CPU fallback finishing every job.

Runs on a GPU machine with no network: builds a tiny XLM-RoBERTa cross-encoder with an 8192-token
position table (rerankq/shapes.py), caps this process's GPU memory with
``torch.cuda.set_per_process_memory_fraction``, and pushes jobs through the real batcher. Jobs
whose pairs do not fit even alone are finished by a CPU backend, as the cpu lane would. Every
score is compared with a CPU reference.

    python ops/scripts/gpu_oom_drill.py --memory-mb 64
    python ops/scripts/gpu_oom_drill.py --device cpu --inject   # dry run of this script, no GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from rerankq.shapes import build_tiny_xlm_roberta
from rerankq.worker.backends import Backend, CrossEncoderBackend, OomInjectingBackend
from rerankq.worker.batcher import Batcher
from rerankq.worker.oom import PairTooLarge


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--memory-mb", type=int, default=64, help="GPU memory this process may use")
    parser.add_argument("--inject", action="store_true", help="inject OOMs instead of capping memory")
    args = parser.parse_args()

    folder = build_tiny_xlm_roberta(Path(tempfile.mkdtemp()) / "drill-xlmr", max_position_embeddings=8194)
    device_backend = _backend(folder, args.device)
    if args.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_mb * (1 << 20) / total)
    if args.inject:
        device_backend = OomInjectingBackend(device_backend, batch_tokens=20_000, pair_tokens=4096)
    cpu_backend = _backend(folder, "cpu")

    jobs = [[f"short document {j} of job {i}" * 4 for j in range(64)] for i in range(16)]
    jobs.append(["short one", "word " * 6000])  # a pair of ~6000 tokens
    batcher = Batcher(device_backend, token_budget=262_144, max_batch_pairs=512, max_wait_ms=50)
    batcher.start()
    futures = [batcher.submit(device_backend.encode("drill query", docs, device_backend.limits(8192))) for docs in jobs]
    report = {"jobs": len(jobs), "on_device": 0, "cpu_fallback": 0, "max_abs_diff_vs_cpu": 0.0}
    for docs, future in zip(jobs, futures, strict=True):
        try:
            scores = future.result(timeout=600).scores
            report["on_device"] += 1
        except PairTooLarge:
            scores = cpu_backend.forward(cpu_backend.encode("drill query", docs, cpu_backend.limits(8192)))
            report["cpu_fallback"] += 1
        reference = cpu_backend.forward(cpu_backend.encode("drill query", docs, cpu_backend.limits(8192)))
        diff = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
        report["max_abs_diff_vs_cpu"] = max(report["max_abs_diff_vs_cpu"], diff)
    batcher.stop()
    report |= {"oom_splits": batcher.budget.oom_splits, "token_budget_after": batcher.budget.current}
    print(json.dumps(report))
    return 0 if report["on_device"] + report["cpu_fallback"] == len(jobs) else 1


def _backend(folder: Path, device: str) -> Backend:
    backend = CrossEncoderBackend(CrossEncoder(str(folder), device=device, max_length=8192), device, 8192)
    if device.startswith("cuda"):
        backend.model.half()
    return backend


if __name__ == "__main__":
    raise SystemExit(main())
