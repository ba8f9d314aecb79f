"""Diversity, hallucination (shapes checker and CHAIR) and retrieval, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capalign.metrics import MetricOptions, evaluate_captions
from capalign.metrics.hallucination import caption_objects
from capalign.metrics.retrieval import recall_at_k


def test_diversity_by_hand():
    cands = {"1": "A red square.", "2": "a red circle", "3": "a blue square"}
    refs = {k: ["x"] for k in cands}
    r = evaluate_captions(cands, refs, ["Distinct-1", "Distinct-2", "Vocabulary", "Copied"],
                          train_captions={"a red SQUARE", "something else"})
    # unigrams: a red square a red circle a blue square -> 9 total, 5 distinct; bigrams 6 total, 5 distinct
    assert r.summary["Distinct-1"] == pytest.approx(5 / 9)
    assert r.summary["Distinct-2"] == pytest.approx(5 / 6)
    assert r.summary["Vocabulary"] == 5
    assert r.summary["Copied"] == pytest.approx(1 / 3) and r.per_image["1"]["Copied"] == 1.0
    assert "Distinct-1" not in r.per_image["1"]


def test_hallucination_uses_checker_and_records_claims():
    def fake_checker(caption, objects):
        shapes = {o["shape"] for o in objects}
        return [w for w in ("circle", "square", "triangle") if w in caption and w not in shapes]

    cands = {"a": "a red circle", "b": "a square and a triangle", "c": "a square"}
    objects = {"a": [{"shape": "circle"}], "b": [{"shape": "square"}], "c": [{"shape": "square"}]}
    r = evaluate_captions(cands, {k: ["x"] for k in cands}, ["Hallucination"], objects=objects,
                          options=MetricOptions(hallucination_checker=fake_checker))
    assert r.summary["Hallucination"] == pytest.approx(1 / 3)
    assert r.details["hallucinated"] == {"b": ["triangle"]}
    missing = evaluate_captions(cands, {k: ["x"] for k in cands}, ["Hallucination"])
    assert "Hallucination" in missing.missing and "Hallucination" not in missing.summary


def test_hallucination_with_real_shapes_checker():
    pytest.importorskip("capalign.data.shapes")
    objects = {"a": [{"colour": "red", "shape": "circle", "size": "small", "position": "center"}]}
    r = evaluate_captions({"a": "a blue square"}, {"a": ["a red circle"]}, ["Hallucination"], objects=objects)
    assert r.summary["Hallucination"] == 1.0
    r = evaluate_captions({"a": "a small red circle"}, {"a": ["a red circle"]}, ["Hallucination"], objects=objects)
    assert r.summary["Hallucination"] == 0.0


def test_chair_by_hand():
    assert caption_objects("Two men ride bikes past a fire hydrant and an orange cat") == {"person", "bicycle", "fire hydrant", "cat"}
    cands = {"1": "a dog and a cat on a couch", "2": "a man riding a horse"}
    refs = {"1": ["a dog on a sofa"], "2": ["a person on a horse"]}
    instances = {"1": ["dog"], "2": ["person", "horse"]}
    r = evaluate_captions(cands, refs, ["CHAIR-s", "CHAIR-i"], instances=instances)
    # image 1 names dog, cat, couch; truth = dog + couch (from the reference's "sofa") -> cat hallucinated
    assert r.summary["CHAIR-s"] == pytest.approx(0.5)
    assert r.summary["CHAIR-i"] == pytest.approx(1 / 5)
    assert r.details["chair_hallucinated"] == {"1": ["cat"]}


class FakeHead:
    """Images and texts embedded as one-hot colour vectors (texts by their first colour word)."""

    colours = ["red", "green", "blue"]

    def embed_images(self, images):
        return torch.tensor([[float(c == im) for c in self.colours] for im in images])

    def embed_texts(self, texts):
        out = []
        for t in texts:
            hit = next((c for c in self.colours if c in t), None)
            out.append([float(c == hit) for c in self.colours] if hit else [1 / 3 ** 0.5] * 3)
        return torch.nn.functional.normalize(torch.tensor(out), dim=-1)


def test_retrieval_with_a_contrastive_head():
    images = {"r": "red", "g": "green", "b": "blue"}
    refs = {"r": ["red thing"], "g": ["green thing", "a thing"], "b": ["something"]}
    r = evaluate_captions({k: "x" for k in refs}, refs, ["I2T-R@1", "T2I-R@1", "T2I-R@5"], images=images,
                          options=MetricOptions(contrastive_scorer=FakeHead(), contrastive_name="fake head"))
    # i2t: red and green find their caption first; blue's only caption is the uniform one, which ties
    # with "a thing" (green's) at 1/sqrt(3): ties count in the query's favour -> hit
    assert r.summary["I2T-R@1"] == pytest.approx(1.0)
    # t2i: 4 captions; "red thing", "green thing" hit; uniform captions tie with all images -> hit
    assert r.summary["T2I-R@1"] == pytest.approx(1.0)
    assert r.scorers["T2I-R@1"].startswith("fake head")
    i2t, t2i = recall_at_k(np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]))
    assert i2t.tolist() == [1, 1] and t2i.tolist() == [1, 1]
    assert "I2T-R@1" in evaluate_captions({k: "x" for k in refs}, refs, ["I2T-R@1"], images=images).missing


def _unblocked_ranks(image_emb, text_emb, owner):
    """Every similarity at once (images x texts for i2t, texts x images for t2i, as before blocking):
    the ranks recall_at_k must reproduce block by block."""
    sims = image_emb @ text_emb.T
    i2t = [int(np.sum(sims[k] > sims[k, owner == k].max())) for k in range(image_emb.shape[0])]
    sims = text_emb @ image_emb.T
    t2i = np.sum(sims > sims[np.arange(owner.shape[0]), owner][:, None], axis=1)
    return i2t, t2i.tolist()


@pytest.mark.parametrize("rows,max_scores", [(1024, 1 << 24), (4, 12), (3, 1), (1, 1), (7, 50), (16, 160)])
def test_blocked_retrieval_ranks_equal_the_unblocked_ones(monkeypatch, rows, max_scores):
    import capalign.metrics.retrieval as retrieval

    rng = np.random.default_rng(0)
    image_emb = rng.standard_normal((41, 8)).astype(np.float32)
    owner = np.sort(np.concatenate([np.arange(41), rng.integers(0, 41, 120)]))  # 1 to several texts per image
    text_emb = rng.standard_normal((owner.shape[0], 8)).astype(np.float32)
    # (no exact ties: float32 products of identical vectors can differ in the last bit between BLAS
    # kernels, blocked or not)
    expected = _unblocked_ranks(image_emb, text_emb, owner)
    monkeypatch.setattr(retrieval, "ROWS", rows)
    monkeypatch.setattr(retrieval, "MAX_SCORES", max_scores)
    i2t, t2i = recall_at_k(image_emb, text_emb, owner)
    assert i2t.tolist() == expected[0] and t2i.tolist() == expected[1]
    assert max(expected[0]) > 0 and min(expected[1]) == 0  # ranks of every kind, not all zero


def test_retrieval_holds_a_block_of_similarities_not_all(monkeypatch):
    import tracemalloc

    import capalign.metrics.retrieval as retrieval

    rng = np.random.default_rng(1)
    owner = np.repeat(np.arange(300), 5)
    image_emb = rng.standard_normal((300, 8)).astype(np.float32)
    text_emb = rng.standard_normal((1500, 8)).astype(np.float32)
    peaks = []
    for limit in (1 << 24, 10_000):
        monkeypatch.setattr(retrieval, "MAX_SCORES", limit)
        tracemalloc.start()
        try:
            recall_at_k(image_emb, text_emb, owner)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    everything = 300 * 1500 * 4  # bytes of all the float32 scores of one direction
    assert peaks[0] > everything and peaks[1] < everything / 5  # one block of 10,000 scores, plus the ranks
