"""Random-weight shapes of real architectures: they load through the worker's own code and score."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentence_transformers import CrossEncoder

from rerankq.testing import model_shapes


def test_an_xlmr_shape_builds_loads_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the bge shapes at a size a test can afford: same code, smaller numbers
    mini = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate": 64, "positions": 514}
    monkeypatch.setitem(model_shapes._XLMR_SHAPES, "bge-reranker-v2-m3", mini)
    monkeypatch.setattr(model_shapes, "_XLMR_VOCAB", 31_000)
    folder = model_shapes.shape_folder("bge-reranker-v2-m3", tmp_path)

    model = CrossEncoder(str(folder), device="cpu")
    assert model.config.model_type == "xlm-roberta" and model.num_labels == 1
    encoded = model.tokenizer("what is a reranker", "a model that scores query and document together")
    assert "token_type_ids" not in encoded  # one segment, as XLM-R
    assert encoded["input_ids"].count(model.tokenizer.sep_token_id) == 3  # <s> A </s></s> B </s>
    scores = model.predict([("what is a reranker", "a scoring model"), ("q", "apples")])
    assert len(scores) == 2 and scores[0] != scores[1]
    assert model_shapes.shape_folder("bge-reranker-v2-m3", tmp_path) == folder  # built once, reused


def test_an_unknown_shape_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape must be one of tiny-bert, .*bge-reranker-v2-m3"):
        model_shapes.shape_folder("bge-reranker-huge", tmp_path)
