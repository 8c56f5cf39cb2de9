"""LLM rerankers: a causal language model asked whether a document meets a query, scored by its
answer token (Qwen3-Reranker, bge-reranker-v2-gemma).

The prompt comes from the model's manifest (``rerankq.core.registry.PromptTemplate``): its
segments are tokenized one by one and joined, as the model cards do, and only the document's
segment is ever cut. Pairs are right-padded in a batch and each is read at its own last real
token, so a pair scores the same whatever batch it rides in. Only the two answer rows of the
output layer are computed (the full vocabulary's logits would cost as much as a small model).
With prefix reuse on (``RERANKQ_LLM_PREFIX_REUSE``), the prompt a job's pairs share is computed
once per job (rerankq.worker.prompt_prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rerankq.core.registry import PromptTemplate
from rerankq.errors import InvalidRequest
from rerankq.worker.backends import Backend, EncodedPair, pad_features, sigmoid
from rerankq.worker.prompt_prefix import PrefixCache, PrefixRunner, shared_prefix_length
from rerankq.worker.text_windows import PairLimits, TextCutter

MIN_TEXT_TOKENS = 16  # what a pair must keep for query and document beside the prompt
MAX_KEPT_CUTTERS = 256  # instructions whose prompt length is kept


class TemplateTokenError(ValueError):
    """The tokenizer cannot read the template as the model was trained to."""


def answer_token_ids(tokenizer: Any, template: PromptTemplate) -> tuple[int, int | None]:
    """The ids of the answer tokens; each must be exactly one token of this tokenizer."""
    return _single_token(tokenizer, template.yes, "answer"), (
        _single_token(tokenizer, template.no, "answer") if template.no is not None else None
    )


def check_special_tokens(tokenizer: Any, template: PromptTemplate) -> None:
    """Every marker of the template (``<|im_start|>``, ``<bos>``, ...) is one token of the tokenizer."""
    for token in template.special_tokens:
        _single_token(tokenizer, token, "template")


def _single_token(tokenizer: Any, text: str, role: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TemplateTokenError(
            f"the tokenizer has no single token for the {role} token {text!r} (it reads as {pieces}): "
            "this is not the tokenizer the model was trained with"
        )
    return int(ids[0])


class YesNoRerankerBackend(Backend):
    """A causal LM scored by ``logit(yes) - logit(no)`` at the pair's last token (``logit(yes)``
    when the template has no "no"); ``normalize`` (sigmoid) gives the model card's probability."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: PromptTemplate,
        kind: str,
        device: str,
        max_length: int,
        prefixes: PrefixCache | None = None,
    ):
        super().__init__(device, max_length)
        self.kind = kind
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # each row is read at its own last token
        self.template = template
        check_special_tokens(tokenizer, template)
        yes, no = answer_token_ids(tokenizer, template)
        self.answer_rows = [yes] if no is None else [yes, no]  # the output layer's rows that are read
        self._cutters: dict[str | None, TextCutter] = {}
        self.cutter = self.cutter_for(None)
        self.prefixes = prefixes
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked either way
        self._runner = None if prefixes is None else PrefixRunner(self.model.get_decoder(), pad, prefixes)

    def cutter_for(self, instruction: str | None) -> TextCutter:
        """The cutter with the template's tokens (this instruction's) set aside in every pair; one
        per instruction, kept (a job asks for it once to chunk and once to encode)."""
        if instruction not in self._cutters:
            if len(self._cutters) >= MAX_KEPT_CUTTERS:
                self._cutters.clear()
            filled = [
                self.template.fill(s, instruction or self.template.instruction, "", "") for s in self.template.segments
            ]
            overhead = sum(len(ids) for ids in self.tokenizer(filled, add_special_tokens=False)["input_ids"])
            self._cutters[instruction] = TextCutter(self.tokenizer, paired=True, overhead=overhead)
        return self._cutters[instruction]

    def encode(
        self, query: str, documents: Sequence[str], limits: PairLimits, instruction: str | None = None
    ) -> list[EncodedPair]:
        prompt = self.cutter_for(instruction).specials
        if prompt + MIN_TEXT_TOKENS > limits.max_length:
            raise InvalidRequest(
                "instruction" if instruction else "max_length",
                f"the prompt takes {prompt} of the pair's {limits.max_length} tokens, leaving too few "
                f"for query and document (at least {MIN_TEXT_TOKENS})",
                "raise max_length or shorten the instruction",
            )
        return super().encode(query, documents, limits, instruction)

    def encode_pairs(
        self, query: str, documents: Sequence[str], max_length: int, instruction: str | None = None
    ) -> list[EncodedPair]:
        template, instruction = self.template, instruction or self.template.instruction
        at = template.document_segment()
        fixed = [self._tokens(template.fill(s, instruction, query, "")) for s in template.segments]
        per_document = self.tokenizer(
            [template.fill(template.segments[at], instruction, query, document) for document in documents],
            add_special_tokens=False,
        )["input_ids"]
        pairs = []
        for document_ids in per_document:
            excess = sum(map(len, fixed)) - len(fixed[at]) + len(document_ids) - max_length
            if excess > 0:  # a safety net (the cutter left room): the document's end goes, never the
                # template, nor the segment's own text before the document (instruction, query)
                document_ids = document_ids[: max(len(fixed[at]), len(document_ids) - excess)]
            pairs.append([i for part in [*fixed[:at], document_ids, *fixed[at + 1 :]] for i in part])
        # a prompt only one pair reads is not worth a pass of its own
        reused = self._runner is not None and len(pairs) > 1
        shared = shared_prefix_length(pairs, [i for part in fixed for i in part]) if reused else 0
        return [EncodedPair(({"input_ids": ids, "attention_mask": [1] * len(ids)},), len(ids), shared) for ids in pairs]

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    @torch.inference_mode()
    def forward(self, batch: Sequence[EncodedPair]) -> list[float]:
        if self._runner is not None and any(pair.prefix_length for pair in batch):
            ids = [pair.features[0]["input_ids"] for pair in batch]
            last = self._runner.last_hidden(ids, [pair.prefix_length for pair in batch], self.device)
        else:
            last = self._last_hidden(batch)
            if self.prefixes is not None:
                self.prefixes.stats.pair_tokens += sum(pair.length for pair in batch)
        logits = self._answer_logits(last)
        raw = logits[:, 0] - logits[:, 1] if logits.shape[1] == 2 else logits[:, 0]
        values: list[float] = raw.float().tolist()
        return values

    def _last_hidden(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """Whole pairs, right-padded: the last layer's hidden state at each pair's last token."""
        features = pad_features(self.tokenizer, [pair.features[0] for pair in batch], self.device)
        mask = features["attention_mask"]
        hidden = self.model.get_decoder()(input_ids=features["input_ids"], attention_mask=mask).last_hidden_state
        last: torch.Tensor = hidden[torch.arange(len(batch), device=hidden.device), mask.sum(dim=1) - 1]
        return last

    def free_memory(self) -> None:
        if self.prefixes is not None:
            self.prefixes.clear()
        super().free_memory()

    def _answer_logits(self, last: torch.Tensor) -> torch.Tensor:
        """The output layer's rows of the answer tokens only, with any final soft-capping."""
        head, rows = self.model.get_output_embeddings(), self.answer_rows
        logits = torch.nn.functional.linear(last, head.weight[rows], None if head.bias is None else head.bias[rows])
        if cap := getattr(self.model.config, "final_logit_softcapping", None):
            logits = torch.tanh(logits / cap) * cap
        return logits

    def normalize(self, raw: float) -> float:
        return sigmoid(raw)
