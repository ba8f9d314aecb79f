"""Image metrics over a split's lazily decoded images equal those over every image decoded up front."""

from __future__ import annotations

from capalign.data.store import load_prepared
from capalign.evaluation.systems import SplitImages
from capalign.inference.scorer import load_scorer
from capalign.metrics import MetricOptions, evaluate_captions

METRICS = ["CLIPScore", "RefCLIPScore", "I2T-R@1", "I2T-R@5", "T2I-R@1", "T2I-R@5"]


def test_lazy_split_images_give_the_same_scores(workspace, pretrained_run):
    split = load_prepared(workspace / "data" / "shapes")["train"]
    ids = [str(i) for i in split["image_id"]]
    references = {i: list(c) for i, c in zip(ids, split["captions"])}
    candidates = {i: refs[0] for i, refs in references.items()}
    head = load_scorer(pretrained_run)
    head.batch_size = 5  # several batches, the last one short
    options = MetricOptions(contrastive_scorer=head, clip_scorer=head, clip_prompt="")
    decoded = evaluate_captions(candidates, references, METRICS, images=dict(zip(ids, split["image"])), options=options)
    lazy = SplitImages(split)
    assert len(lazy) == len(ids) and set(lazy) == set(ids) and lazy[ids[3]].size == split[3]["image"].size
    streamed = evaluate_captions(candidates, references, METRICS, images=lazy, options=options)
    assert set(streamed.summary) == set(METRICS)
    assert streamed.summary == decoded.summary and streamed.per_image == decoded.per_image


def test_clipscore_a_chunk_of_images_at_a_time_equals_one_pass(workspace, pretrained_run, monkeypatch):
    import pytest

    import capalign.metrics.clipscore as clipscore

    split = load_prepared(workspace / "data" / "shapes")["train"].select(range(23))
    ids = [str(i) for i in split["image_id"]]
    references = {i: list(c) for i, c in zip(ids, split["captions"])}
    candidates = {i: refs[-1] for i, refs in references.items()}
    head = load_scorer(pretrained_run)
    head.batch_size = 5
    options = MetricOptions(clip_scorer=head, clip_prompt="")
    whole = evaluate_captions(candidates, references, ["CLIPScore", "RefCLIPScore"], images=SplitImages(split), options=options)
    monkeypatch.setattr(clipscore, "CHUNK_IMAGES", 12)  # chunks of 10 images (two scorer batches): 10, 10, 3
    chunked = evaluate_captions(candidates, references, ["CLIPScore", "RefCLIPScore"], images=SplitImages(split), options=options)
    for name in ("CLIPScore", "RefCLIPScore"):
        assert chunked.summary[name] == pytest.approx(whole.summary[name], abs=1e-6)
        assert [chunked.per_image[i][name] for i in ids] == pytest.approx([whole.per_image[i][name] for i in ids], abs=1e-6)
