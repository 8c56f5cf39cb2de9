"""Close candidates built from a golden set: enough jobs, each a relevant passage with
near-duplicates that keep most of its words, the same on every call."""

from __future__ import annotations

import difflib

from rerankq.worker.close_candidates import NEAR_DUPLICATES, close_candidates
from rerankq.worker.golden import GoldenItem, load_golden


def test_the_shipped_golden_set_gives_over_200_jobs_of_near_duplicates() -> None:
    golden = load_golden()
    close = close_candidates(golden)
    assert len(close) == 13 * 16 and len({item.id for item in close}) == len(close)
    assert len(close_candidates(golden[:8])) == 200  # few items (an English-only model's): more variants each
    by_id = {item.id: item for item in golden}
    for job in close:
        source = by_id[job.id.partition("~")[0]]
        relevant, *near, irrelevant = job.passages
        assert job.query == source.query and relevant in source.relevant and irrelevant in source.irrelevant
        assert len(near) == NEAR_DUPLICATES and relevant not in near
        similarity = [_shared(relevant, passage) for passage in near]
        assert min(similarity) >= 0.5, (relevant, near)  # close: most of each survives
        assert similarity[0] > similarity[-1]  # and each step down the ladder replaces more
    assert close == close_candidates(golden)  # seeded: a gate measures the same jobs every start


def test_chinese_is_edited_by_character_with_characters_of_chinese_passages() -> None:
    chinese = GoldenItem(
        id="zh", language="zh", query="苹果手机", relevant="苹果公司发布了新款 iPhone 手机", irrelevant="水果"
    )
    english = GoldenItem(
        id="en", language="en", query="apple phone", relevant="Apple released a phone", irrelevant="fruit"
    )
    zh_job, *_ = close_candidates([chinese, english])
    near = zh_job.passages[1:-1]
    assert all(passage.count(" ") == 2 and len(passage) == len(chinese.relevant[0]) for passage in near)
    assert not any(word in passage for passage in near for word in english.relevant[0].split())  # no English word


def _shared(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()
