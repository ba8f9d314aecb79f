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
