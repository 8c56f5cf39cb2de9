"""Tiny models for the validator: one trained to rank the golden set, and deliberate breakages of it.

A random tiny model ranks golden pairs by chance, so the model every check must pass is trained
here, in a second or two, on the golden pairs themselves (the tiny BERT with the real MiniLM
vocabulary, which covers English and Chinese characters). Each breakage copies it and damages
one thing, the way real broken exports are damaged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

from rerankq.testing.model_shapes import build_tiny_bert
from rerankq.worker.golden import load_golden

TRAIN_STEPS = 300


def build_trained_reranker(path: Path) -> Path:
    """The tiny BERT cross-encoder, trained until it ranks every default golden item right."""
    build_tiny_bert(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path)
    queries, passages, labels = [], [], []
    for item in load_golden():
        for passage, label in [(p, 1.0) for p in item.relevant] + [(p, 0.0) for p in item.irrelevant]:
            queries.append(item.query)
            passages.append(passage)
            labels.append(label)
    batch = tokenizer(queries, passages, padding=True, truncation=True, max_length=128, return_tensors="pt")
    target = torch.tensor(labels)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        logits = model(**batch).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(path)
    return path


def broken_copy(good: Path, target: Path, breakage: Callable[[Path], None]) -> Path:
    shutil.copytree(good, target)
    breakage(target)
    return target


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def remove_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def corrupt_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text("{}")
    (folder / "vocab.txt").unlink(missing_ok=True)


def save_base_model(folder: Path) -> None:
    """An export of the encoder alone, without the ranking head (a common fine-tuning mistake)."""
    model = BertForSequenceClassification.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    base: BertModel = model.bert
    base.save_pretrained(folder)


def save_two_labels(folder: Path) -> None:
    """A two-class classifier (relevant / irrelevant as two logits) instead of one score."""
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2, ignore_mismatched_sizes=True)
    model.save_pretrained(folder)


def set_head(
    folder: Path, weight: Callable[[torch.Tensor], torch.Tensor], bias: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Rewrite the classifier head's weight and bias (NaN, zero, constant, reversed)."""
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.copy_(weight(model.classifier.weight))
        model.classifier.bias.copy_(bias(model.classifier.bias))
    model.save_pretrained(folder)
