"""Model backends: tokenize on the job's thread (pre), one padded forward pass per batch (forward).

Pairs are tokenized once, unpadded, when a job arrives; the batcher pads them per batch. That
way token lengths are known for packing and no text is tokenized twice (a cross-encoder's fast
tokenizer cuts documents by token count, not by cutting their text and tokenizing it again).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import torch

from rerankq.core.settings import BackendName
from rerankq.errors import InvalidRequest
from rerankq.worker.text_windows import PairLimits, TextCutter

Features = dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """One (query, document) pair, tokenized. ``length`` is what padding costs per pair; an LLM
    reranker's first ``prefix_length`` tokens are its job's shared prompt, computed once for the job
    (rerankq.worker.prompt_prefix), and only the rest is computed per pair."""

    features: tuple[Features, ...]
    length: int
    prefix_length: int = 0

    @property
    def own_length(self) -> int:
        return self.length - self.prefix_length


class ScoringModel(Protocol):
    """What the encoder backends call: a sentence-transformers model, or its ONNX export
    (rerankq.worker.onnx_backend.OnnxModel). Features in, named outputs out."""

    tokenizer: Any

    def eval(self) -> Self: ...

    def __call__(self, features: dict[str, Any]) -> dict[str, torch.Tensor]: ...


class Backend(ABC):
    """One loaded model on one device."""

    kind: str
    cutter: TextCutter  # cuts queries and documents by this model's tokens (rerankq.worker.text_windows)
    served_by: BackendName = "torch"  # what runs the forward passes (RERANKQ_BACKEND)

    def __init__(self, device: str, max_length: int) -> None:
        self.device = device
        self.max_length = max_length

    def limits(self, max_length: int | None = None) -> PairLimits:
        """Plain limits: the worker's max_length (or one given), nothing else."""
        return PairLimits(max_length or self.max_length)

    def encode(
        self, query: str, documents: Sequence[str], limits: PairLimits, instruction: str | None = None
    ) -> list[EncodedPair]:
        """Tokenize one job's pairs: the query cut to its share of ``max_length``, each document
        to what fits beside it (``max_tokens_per_doc`` at most, from the side the limits keep)."""
        cutter = self.cutter_for(instruction)
        query, budget = cutter.fit_query(query, limits)
        return self.encode_pairs(query, cutter.cut(documents, budget, limits.direction), limits.max_length, instruction)

    def cutter_for(self, instruction: str | None) -> TextCutter:
        """The cutter for one job's pairs. An encoder has nowhere to put an instruction and
        refuses one; an LLM reranker's prompt (with the instruction) takes room in every pair."""
        if instruction is not None:
            raise InvalidRequest(
                "instruction",
                f"only LLM rerankers read an instruction; this model is a {self.kind}",
                "leave instruction out for it",
            )
        return self.cutter

    @abstractmethod
    def encode_pairs(
        self, query: str, documents: Sequence[str], max_length: int, instruction: str | None = None
    ) -> list[EncodedPair]:
        """Tokenize pairs that fit (``longest_first`` truncation to ``max_length`` as a safety net);
        ``instruction`` reaches only backends whose ``cutter_for`` took it."""

    @abstractmethod
    def forward(self, batch: Sequence[EncodedPair]) -> list[float]:
        """Raw scores for one batch, in batch order."""

    @abstractmethod
    def normalize(self, raw: float) -> float:
        """Map a raw score into [0, 1]."""

    def free_memory(self) -> None:
        """Give cached device memory back after an out-of-memory error."""
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def warm_up(self) -> None:
        self.forward(self.encode("warm-up query", ["warm-up document"], self.limits()))


class CrossEncoderBackend(Backend):
    """A sentence-transformers ``CrossEncoder`` with one logit per pair; normalised by sigmoid."""

    kind = "cross-encoder"
    output = "scores"  # the model output forward reads (and an ONNX export keeps)

    def __init__(self, model: ScoringModel, device: str, max_length: int, served_by: BackendName = "torch") -> None:
        super().__init__(device, max_length)
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.cutter = TextCutter(self.tokenizer, paired=True)
        self.served_by = served_by

    def encode(
        self, query: str, documents: Sequence[str], limits: PairLimits, instruction: str | None = None
    ) -> list[EncodedPair]:
        """As ``Backend.encode``, in one tokenizer pass where the tokenizer is a fast one: query and
        documents tokenized once each, cut by token count (the cut the text cutter makes, without
        cutting the text and tokenizing it again), joined by the tokenizer's own post-processor
        (the template its pair call applies). On 20 documents of 32-128 words that halves the
        tokenize time a web request waits for. The same tokens as cutting the text and tokenizing
        it again, where the cut keeps a text's start; a cut that keeps its end starts mid-text, and
        a SentencePiece tokenizer marks the first word of such a text as a word start, so those
        (``truncation_direction: left``) are still cut as text and tokenized again."""
        cutter = self.cutter_for(instruction)
        if limits.direction != "right" or getattr(self.tokenizer, "backend_tokenizer", None) is None:
            return super().encode(query, documents, limits, instruction)  # or a slow (Python) tokenizer
        query_tokens, *document_tokens = self.tokenizer([query, *documents], add_special_tokens=False).encodings
        budget = cutter.fit_query_tokens(query_tokens, limits)
        for tokens in document_tokens:
            tokens.truncate(budget, direction=limits.direction)
        post_process = self.tokenizer.backend_tokenizer.post_process
        names = [name for name in self.tokenizer.model_input_names if name in _ENCODING_FIELDS]
        pairs = [post_process(query_tokens, tokens, add_special_tokens=True) for tokens in document_tokens]
        return [EncodedPair(features=(_features(pair, names),), length=len(pair.ids)) for pair in pairs]

    def encode_pairs(
        self, query: str, documents: Sequence[str], max_length: int, instruction: str | None = None
    ) -> list[EncodedPair]:
        encoded = self.tokenizer(
            [query] * len(documents), list(documents), truncation="longest_first", max_length=max_length
        )
        return [EncodedPair(features=(features,), length=len(features["input_ids"])) for features in _unbatch(encoded)]

    @torch.inference_mode()
    def forward(self, batch: Sequence[EncodedPair]) -> list[float]:
        features = pad_features(self.tokenizer, [pair.features[0] for pair in batch], self.device)
        scores = self.model({**features, "modality": "text"})[self.output]
        values: list[float] = scores.float().reshape(len(batch), -1)[:, 0].tolist()
        return values

    def normalize(self, raw: float) -> float:
        return sigmoid(raw)


class BiEncoderBackend(Backend):
    """A sentence-transformers bi-encoder scored by cosine similarity of the two embeddings.

    Not a reranker: it never sees query and document together. Served so that an offline
    model can stand behind the same worker interface, and labelled as such everywhere.
    """

    kind = "bi-encoder"
    output = "sentence_embedding"

    def __init__(self, model: ScoringModel, device: str, max_length: int, served_by: BackendName = "torch") -> None:
        super().__init__(device, max_length)
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.cutter = TextCutter(self.tokenizer, paired=False)
        self.served_by = served_by

    def encode_pairs(
        self, query: str, documents: Sequence[str], max_length: int, instruction: str | None = None
    ) -> list[EncodedPair]:
        encoded = _unbatch(self.tokenizer([query, *documents], truncation=True, max_length=max_length))
        query_features = encoded[0]
        return [
            EncodedPair(features=(query_features, doc), length=len(query_features["input_ids"]) + len(doc["input_ids"]))
            for doc in encoded[1:]
        ]

    @torch.inference_mode()
    def forward(self, batch: Sequence[EncodedPair]) -> list[float]:
        sequences = [pair.features[0] for pair in batch] + [pair.features[1] for pair in batch]
        features = pad_features(self.tokenizer, sequences, self.device)
        embeddings = self.model({**features, "modality": "text"})[self.output].float()
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        queries, documents = embeddings[: len(batch)], embeddings[len(batch) :]
        values: list[float] = (queries * documents).sum(dim=-1).tolist()
        return values

    def normalize(self, raw: float) -> float:
        return min(1.0, max(0.0, (raw + 1.0) / 2.0))


class OomInjectingBackend(Backend):
    """Fault injection for tests and drills, off unless configured: raises the real
    ``torch.OutOfMemoryError`` that CUDA raises when a batch or a pair is larger than a limit."""

    def __init__(self, inner: Backend, batch_tokens: int | None, pair_tokens: int | None) -> None:
        super().__init__(inner.device, inner.max_length)
        self.inner = inner
        self.kind = inner.kind
        self.cutter = inner.cutter
        self.served_by = inner.served_by
        self.batch_tokens = batch_tokens
        self.pair_tokens = pair_tokens

    def encode(
        self, query: str, documents: Sequence[str], limits: PairLimits, instruction: str | None = None
    ) -> list[EncodedPair]:
        return self.inner.encode(query, documents, limits, instruction)  # the inner model's own checks

    def cutter_for(self, instruction: str | None) -> TextCutter:
        return self.inner.cutter_for(instruction)

    def encode_pairs(
        self, query: str, documents: Sequence[str], max_length: int, instruction: str | None = None
    ) -> list[EncodedPair]:
        return self.inner.encode_pairs(query, documents, max_length, instruction)

    def forward(self, batch: Sequence[EncodedPair]) -> list[float]:
        longest = max(pair.length for pair in batch)
        if self.pair_tokens is not None and longest > self.pair_tokens:
            raise torch.OutOfMemoryError(f"injected: a pair of {longest} tokens > {self.pair_tokens}")
        if self.batch_tokens is not None and len(batch) * longest > self.batch_tokens:
            raise torch.OutOfMemoryError(f"injected: batch of {len(batch) * longest} tokens > {self.batch_tokens}")
        return self.inner.forward(batch)

    def normalize(self, raw: float) -> float:
        return self.inner.normalize(raw)

    def free_memory(self) -> None:
        self.inner.free_memory()


# a tokenizers.Encoding's fields, by the names models take them as
_ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}


def _features(encoding: Any, names: list[str]) -> Features:
    return {name: list(getattr(encoding, _ENCODING_FIELDS[name])) for name in names}


def _unbatch(encoded: Any) -> list[Features]:
    keys = list(encoded.keys())
    return [dict(zip(keys, values, strict=True)) for values in zip(*(encoded[k] for k in keys), strict=True)]


def pad_features(tokenizer: Any, features: list[Features], device: str) -> dict[str, torch.Tensor]:
    padded = tokenizer.pad(features, padding=True, return_tensors="pt")
    return {name: tensor.to(device) for name, tensor in padded.items()}


def sigmoid(x: float) -> float:
    # float64 and overflow-safe; equals torch.sigmoid on float32 logits within float32 precision
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
