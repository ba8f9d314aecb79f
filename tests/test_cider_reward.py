"""The in-process CIDEr-D reward equals pycocoevalcap's Cider per caption, given the same references."""

from __future__ import annotations

import json
import random

import pytest
from pycocoevalcap.cider.cider import Cider

from capalign.metrics.cider_reward import CiderD
from capalign.metrics.python_tokenizer import tokenize_in_python

from conftest import refdata


def _agree(references: dict[str, list[str]], candidates: dict[str, str]) -> int:
    """Score with both (document frequencies from these references, as pycocoevalcap computes them);
    returns how many captions were compared."""
    keys = sorted(references)
    gts = tokenize_in_python({k: references[k] for k in keys})
    res = tokenize_in_python({k: [candidates[k]] for k in keys})
    _, expected = Cider().compute_score(gts, res)
    ours = CiderD([gts[k] for k in keys], tokenized=True).scores(list(range(len(keys))), [res[k][0] for k in keys])
    assert ours == pytest.approx([float(x) for x in expected], abs=1e-9, rel=0)
    assert max(expected) > 0  # the comparison is not of zeros only
    return len(keys)


@pytest.mark.parametrize("example", ["clipscore_example", "pacscore_example"])
def test_equals_pycocoevalcap_on_published_examples(example):
    folder = refdata(example)
    refs = json.loads((folder / "refs.json").read_text())
    for which in ("good_captions.json", "bad_captions.json"):
        candidates = json.loads((folder / which).read_text())
        assert _agree(refs, candidates) == len(refs)


def test_equals_pycocoevalcap_on_coco_captions_grouped_as_references():
    # coco-caption's fake results: 1000 natural captions, grouped five to an "image", the sixth its candidate
    captions = [r["caption"] for r in json.loads((refdata("coco_fakecap") / "captions_val2014_fakecap_results.json").read_text())]
    refs = {f"{k:03d}": captions[6 * k : 6 * k + 5] for k in range(len(captions) // 6)}
    cands = {f"{k:03d}": captions[6 * k + 5] for k in range(len(captions) // 6)}
    assert _agree(refs, cands) == 166


def test_equals_pycocoevalcap_on_shapes_captions_and_the_empty_caption(workspace):
    from datasets import load_from_disk

    split = load_from_disk(str(workspace / "data" / "shapes"))["train"]
    rng = random.Random(0)
    refs = {str(k): list(c) for k, c in enumerate(split["captions"])}
    pool = [c for cs in split["captions"] for c in cs]
    cands = {k: (v[0] if rng.random() < 0.3 else rng.choice(pool)) for k, v in refs.items()}
    cands["0"] = ""
    cands["1"] = "square"
    assert _agree(refs, cands) == len(split)


def test_document_frequencies_are_the_training_references_not_the_batch():
    reward = CiderD([["a red square"], ["a blue circle"], ["a red circle"]])
    # "red" is in two of three images: scoring one image alone does not change its weight
    alone = reward.scores([0], ["a red square"])
    assert alone == reward.scores([0, 1], ["a red square", "a blue circle"])[:1]
    assert reward.document_frequency[("red",)] == 2 and len(reward) == 3


def test_scoring_against_given_references_equals_scoring_the_images_it_was_built_on():
    references = [["a red circle above a blue square", "a red circle"], ["two green squares", "green squares side by side"]]
    scorer = CiderD(references)
    rows, captions = [0, 1, 0, 1], ["a red circle", "green squares", "a red circle above a square", "two green squares"]
    assert scorer.scores_against([references[r] for r in rows], captions) == scorer.scores(rows, captions)
