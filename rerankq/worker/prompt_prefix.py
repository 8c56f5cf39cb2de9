"""Shared prompt prefixes for LLM rerankers: the key/value cache of the tokens a job's pairs share
(system prompt, instruction, query), computed once and attended to by every document's tokens.

A Qwen3-Reranker pair is mostly prompt, and all of it before the document is the same for every
document of a job. Causal attention makes a pair's last hidden state depend only on the tokens
before it, so running the shared tokens once and each pair's own tokens (document, template
suffix) against their keys and values gives the same scores as the whole pair, to float error.

- The shared part is found on token ids, never on text: a pair's ids are exactly the model card's
  (the template's segments tokenized one by one), and the prefix is the longest run of leading ids
  that every pair of the job shares with the template around an empty document. Jobs with the same
  query and instruction have the same prefix ids, so they share one entry of ``PrefixCache``.
- A batch may mix prefixes of different lengths: each row's prefix is laid left-aligned in a
  padded cache and the attention mask hides the padding, while each row's positions continue
  after its own prefix (rotary embeddings are relative, and the cached keys carry theirs).
- The cache is transformers' public ``DynamicCache``, filled through ``Cache.update``; its forward
  argument is ``cache`` from transformers 5 on and ``past_key_values`` before (read from the
  signature, not the version).
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, heads, tokens, dim]


def shared_prefix_length(pairs: Sequence[Sequence[int]], empty: Sequence[int]) -> int:
    """Leading ids that every pair shares with ``empty`` (the prompt around an empty document),
    leaving each pair at least one token of its own (its score is read at its last token)."""
    shared = min(len(ids) for ids in pairs) - 1
    for ids in pairs:
        shared = min(shared, _common_length(ids, empty, shared))
    return max(shared, 0)


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    for i in range(min(limit, len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(limit, len(a), len(b))


@dataclass
class PrefixStats:
    """What the prefix path computed: the bench reports tokens per pair with and without it."""

    prefixes_computed: int = 0
    prefix_tokens_computed: int = 0
    prefixes_reused: int = 0
    pair_tokens: int = 0  # what the pairs computed besides the prefixes, padding excluded


class PrefixCache:
    """Prefix keys and values by prefix ids, least recently used dropped first, holding at most
    ``max_tokens`` prefix tokens (each costs 2 x layers x kv-heads x head-dim numbers). A prefix
    longer than that is computed for its batch and not kept."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.stats = PrefixStats()
        self._entries: OrderedDict[tuple[int, ...], LayerKV] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()  # the batcher thread fills it; warm-up and clear may come from others

    def get(self, ids: tuple[int, ...]) -> LayerKV | None:
        with self._lock:
            kv = self._entries.get(ids)
            if kv is not None:
                self._entries.move_to_end(ids)
                self.stats.prefixes_reused += 1
            return kv

    def put(self, ids: tuple[int, ...], kv: LayerKV) -> None:
        with self._lock:
            self.stats.prefixes_computed += 1
            self.stats.prefix_tokens_computed += len(ids)
            if len(ids) > self.max_tokens or ids in self._entries:
                return
            while self._entries and self._tokens + len(ids) > self.max_tokens:
                dropped, _ = self._entries.popitem(last=False)
                self._tokens -= len(dropped)
            self._entries[ids] = kv
            self._tokens += len(ids)

    def clear(self) -> None:
        """Give the memory back (after an out-of-memory error)."""
        with self._lock:
            self._entries.clear()
            self._tokens = 0

    @property
    def tokens(self) -> int:
        return self._tokens


class PrefixRunner:
    """Runs a causal LM's decoder over pairs that start with cached prefixes."""

    def __init__(self, decoder: Any, pad_id: int, cache: PrefixCache) -> None:
        self.decoder = decoder
        self.pad_id = pad_id
        self.cache = cache
        self._argument = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"

    def last_hidden(self, pairs: Sequence[Sequence[int]], prefix_lengths: Sequence[int], device: str) -> torch.Tensor:
        """The last layer's hidden state at each pair's last token, [pairs, hidden]."""
        prefixes = [tuple(ids[:length]) for ids, length in zip(pairs, prefix_lengths, strict=True)]
        kv = {ids: self._prefix(ids, device) for ids in dict.fromkeys(prefixes) if ids}
        own = [list(ids[length:]) for ids, length in zip(pairs, prefix_lengths, strict=True)]
        self.cache.stats.pair_tokens += sum(map(len, own))
        width, longest = max(prefix_lengths), max(map(len, own))
        input_ids = torch.tensor([ids + [self.pad_id] * (longest - len(ids)) for ids in own], device=device)
        own_mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in own], device=device)
        prefix_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prefixes], device=device)
        positions = torch.tensor(prefix_lengths, device=device)[:, None] + torch.arange(longest, device=device)
        batch_cache = self._batch_cache([kv.get(p) for p in prefixes], width)
        hidden = self.decoder(
            input_ids=input_ids,
            attention_mask=torch.cat([prefix_mask, own_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{self._argument: batch_cache},
        ).last_hidden_state
        last: torch.Tensor = hidden[torch.arange(len(own), device=hidden.device), own_mask.sum(dim=1) - 1]
        return last

    def _prefix(self, ids: tuple[int, ...], device: str) -> LayerKV:
        cached = self.cache.get(ids)
        if cached is not None:
            return cached
        output = self.decoder(input_ids=torch.tensor([ids], device=device), use_cache=True)
        kv = [(layer[0], layer[1]) for layer in getattr(output, self._argument)]
        self.cache.put(ids, kv)
        return kv

    def _batch_cache(self, rows: Sequence[LayerKV | None], width: int) -> Any:
        """One cache for the batch: each row's prefix left-aligned in ``width`` slots (one prefix for
        every row: expanded, not copied; none: zeros, masked)."""
        cache = DynamicCache()
        first = next(kv for kv in rows if kv is not None)
        for layer, (keys, values) in enumerate(first):
            if all(kv is first for kv in rows):
                cache.update(keys.expand(len(rows), -1, -1, -1), values.expand(len(rows), -1, -1, -1), layer)
                continue
            shape = (len(rows), keys.shape[1], width, keys.shape[3])
            padded_keys, padded_values = keys.new_zeros(shape), values.new_zeros(shape)
            for row, kv in enumerate(rows):
                if kv is not None:
                    length = kv[layer][0].shape[2]
                    padded_keys[row, :, :length] = kv[layer][0][0]
                    padded_values[row, :, :length] = kv[layer][1][0]
            cache.update(padded_keys, padded_values, layer)
        return cache
