"""LLM rerankers built offline, random weights and real architectures (the cross-encoders' are in
rerankq.testing.model_shapes): tiny Qwen3 and Gemma rerankers for tests, and Qwen3-Reranker-0.6B's shape for
benchmarks. Their tokenizer is a byte-level BPE trained here on English text, holding the
templates' markers (``<|im_start|>``, ``<bos>``, ...) and the answers (``yes``, ``Yes``) as single
tokens, as the published tokenizers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from rerankq.testing.model_shapes import CORPUS, wordpiece_folder

QWEN3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
_ANSWERS = "yes\nno\nYes\nNo\n" * 64  # frequent enough that BPE makes each one token
_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 8}
# Qwen/Qwen3-Reranker-0.6B's config.json, minus the weights.
QWEN3_RERANKER_06B = {
    "vocab_size": 151_669,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40_960,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def build_tiny_qwen3_reranker(path: Path, *, seed: int = 0, vocab_size: int = 1200) -> Path:
    """A 2-layer Qwen3 causal LM with a tokenizer that reads the Qwen3-Reranker template."""
    tokenizer = train_bpe_tokenizer(QWEN3_SPECIAL, vocab_size, pad="<|endoftext|>", eos="<|im_end|>")
    config = Qwen3Config(vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=4096, **_TINY)
    return _save(path, Qwen3ForCausalLM, config, tokenizer, seed)


def build_tiny_gemma_reranker(path: Path, *, seed: int = 0, vocab_size: int = 1200) -> Path:
    """A 2-layer Gemma causal LM with a tokenizer that reads the bge-reranker-v2-gemma prompt."""
    tokenizer = train_bpe_tokenizer(GEMMA_SPECIAL, vocab_size, pad="<pad>", eos="<eos>", bos="<bos>", unk="<unk>")
    config = GemmaConfig(vocab_size=len(tokenizer), num_key_value_heads=1, max_position_embeddings=4096, **_TINY)
    return _save(path, GemmaForCausalLM, config, tokenizer, seed)


def build_qwen3_reranker_shape(path: Path, *, seed: int = 0) -> Path:
    """Qwen3-Reranker-0.6B's architecture (28 layers, 151,669-token embedding) with random weights:
    a forward pass costs what the published model's does. Its BPE holds nearly every benchmark
    word whole (one workload word is one token, as with the cross-encoder shapes' WordPiece, so
    pair lengths compare); ids stay inside the embedding."""
    tokenizer = train_bpe_tokenizer(QWEN3_SPECIAL, 32_000, pad="<|endoftext|>", eos="<|im_end|>")
    config = Qwen3Config(**QWEN3_RERANKER_06B)
    return _save(path, Qwen3ForCausalLM, config, tokenizer, seed)


def train_bpe_tokenizer(special: list[str], vocab_size: int, **roles: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style, as Qwen's) trained on English words; ``roles``: which
    special token is pad, eos, bos, unk."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([*CORPUS, _ANSWERS, *_english_lines()], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=32_768,
        **{f"{role}_token": token for role, token in roles.items()},
    )


def _english_lines() -> list[str]:
    """The MiniLM vocabulary's words, a few hundred to a line: what the benchmark texts are made of."""
    words = [w for w in (wordpiece_folder() / "vocab.txt").read_text(encoding="utf-8").split() if w.isalpha()]
    return [" ".join(words[start : start + 200]) for start in range(0, len(words), 200)]


def _save(path: Path, model_class: Any, config: Any, tokenizer: PreTrainedTokenizerFast, seed: int) -> Path:
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
