import random

import numpy as np

from capalign.data import shapes
from capalign.pairs.generated import best_and_worst_pairs, corrupt_caption, corrupted_pairs
from capalign.pairs.ranker import rank_candidates
from capalign.data.store import prepare_shapes


def test_generation_is_deterministic_from_seed(tmp_path):
    a = prepare_shapes(tmp_path / "a", limit=20, seed=3)
    b = prepare_shapes(tmp_path / "b", limit=20, seed=3)
    c = prepare_shapes(tmp_path / "c", limit=20, seed=4)
    assert a["train"]["captions"] == b["train"]["captions"]
    assert np.array_equal(np.asarray(a["test"][0]["image"]), np.asarray(b["test"][0]["image"]))
    assert a["train"]["captions"] != c["train"]["captions"]


def test_splits_sizes_and_held_out_combinations(workspace):
    from datasets import load_from_disk

    data = load_from_disk(str(workspace / "data" / "shapes"))
    assert set(data) == {"train", "validation", "test", "novel"}
    assert sum(len(s) for s in data.values()) == 40
    for name, split in data.items():
        for objects in split["objects"]:
            combos = {(o["colour"], o["shape"]) for o in objects}
            if name == "novel":
                assert combos & shapes.NOVEL_COMBINATIONS
            else:
                assert not combos & shapes.NOVEL_COMBINATIONS
    assert len({r for s in data.values() for r in s["image_id"]}) == 40


def test_every_image_has_five_distinct_true_captions(workspace):
    from datasets import load_from_disk

    data = load_from_disk(str(workspace / "data" / "shapes"))
    for split in data.values():
        for captions, objects in zip(split["captions"], split["objects"]):
            assert len(set(captions)) >= 5
            assert all(shapes.find_hallucinations(c, objects) == [] for c in captions)


def test_hallucination_checker_names_what_is_wrong():
    scene = [{"colour": "red", "shape": "circle", "size": "large", "position": "left"},
             {"colour": "blue", "shape": "square", "size": "small", "position": "right"}]
    assert shapes.find_hallucinations("a red circle on the left and a blue square on the right", scene) == []
    assert shapes.find_hallucinations("a green circle on the left", scene) == ["no green circle left"]
    assert shapes.find_hallucinations("a red circle on the right", scene) == ["no red circle right"]
    assert shapes.find_hallucinations("two red circles", scene) == ["only 1 red circle"]
    assert shapes.find_hallucinations("a small red circle", scene) == ["no small red circle"]
    assert shapes.find_hallucinations("a triangle", scene) == ["no triangle"]
    single = scene[:1]
    assert shapes.find_hallucinations("two shapes : a red circle and a red circle", single)
    # each mention needs its own object: naming the one red circle twice claims a second
    assert shapes.find_hallucinations("a red circle and a red circle", scene) == ["red circle named again, scene has no other"]
    assert shapes.find_hallucinations("a circle and a red circle on the left", scene) == ["red circle left named again, scene has no other"]
    assert shapes.find_hallucinations("a red circle and a square", scene) == []


def test_omissions_name_the_objects_a_caption_leaves_out():
    scene = [{"colour": "red", "shape": "circle", "size": "large", "position": "left"},
             {"colour": "blue", "shape": "square", "size": "small", "position": "right"}]
    assert shapes.find_omissions("a red circle on the left and a blue square on the right", scene) == []
    assert shapes.find_omissions("a red circle on the left", scene) == ["blue square"]
    assert shapes.find_omissions("there is a", scene) == ["red circle", "blue square"]


def test_corruptions_are_wrong_and_pairs_prefer_truth(workspace):
    from datasets import load_from_disk

    train = load_from_disk(str(workspace / "data" / "shapes"))["train"]
    rng = random.Random(0)
    for captions, objects in zip(train["captions"], train["objects"]):
        wrong = corrupt_caption(captions[0], objects, rng)
        assert wrong is not None and wrong != captions[0]
        assert shapes.find_hallucinations(wrong, objects)
    for pair in corrupted_pairs(train, seed=0):
        objects = train[pair.row]["objects"]
        assert shapes.find_hallucinations(pair.chosen, objects) == []
        assert shapes.find_hallucinations(pair.rejected, objects)


def test_ranker_prefers_true_captions_and_never_chooses_a_hallucination(workspace):
    from datasets import load_from_disk

    train = load_from_disk(str(workspace / "data" / "shapes"))["train"].select(range(6))
    truth = [captions[0] for captions in train["captions"]]
    candidates = [[t, "a purple triangle and a purple triangle", t] for t in truth]
    one_wrong = corrupt_caption(truth[0], train[0]["objects"], random.Random(0))
    candidates[0] = ["a purple triangle and a purple triangle", one_wrong]  # both wrong, one less so
    ranked = rank_candidates(candidates, train["captions"], train["objects"])
    for row in ranked[1:]:
        assert row[0].hallucinations == 0 and row[1].hallucinations > 0
        assert row[0].score > row[1].score + 5
    pairs = best_and_worst_pairs(train, ranked, min_gap=0.1)
    assert len(pairs) == 6  # identical best/worst would be dropped; none are here
    for pair in pairs:
        objects = train[pair.row]["objects"]
        assert shapes.find_hallucinations(pair.chosen, objects) == []
        assert shapes.find_hallucinations(pair.rejected, objects)
    assert pairs[0].source == "ranked+reference"


def test_a_faithful_but_incomplete_best_candidate_is_replaced_by_a_reference(workspace):
    from datasets import load_from_disk

    train = load_from_disk(str(workspace / "data" / "shapes"))["train"]
    row = next(i for i, objects in enumerate(train["objects"]) if len(objects) == 2)
    subset = train.select([row])
    objects = subset[0]["objects"]
    partial = f"a {objects[0]['colour']} {objects[0]['shape']}"  # true, but says nothing of the other object
    wrong = corrupt_caption(subset[0]["captions"][0], objects, random.Random(0))
    ranked = rank_candidates([[partial, wrong]], subset["captions"], subset["objects"])
    assert ranked[0][0].hallucinations == 0 and ranked[0][0].score > ranked[0][1].score
    (pair,) = best_and_worst_pairs(subset, ranked, min_gap=0.5)
    assert pair.source == "ranked+reference" and pair.chosen in subset[0]["captions"] and pair.rejected == wrong
    assert shapes.find_omissions(pair.chosen, objects) == []


def test_prepared_rows_equal_the_generated_rows(tmp_path):
    """Written in batches, the prepared dataset holds exactly the rows generate_split draws for the seed
    (image bytes included), and a second fetch with the same seed writes the same files."""
    import datasets

    from capalign.data.store import SHAPES_FEATURES, prepare_shapes

    prepared = prepare_shapes(tmp_path / "a", limit=12, seed=5, image_size=32)
    prepare_shapes(tmp_path / "b", limit=12, seed=5, image_size=32)
    raw = datasets.Image(decode=False)
    for split, count in shapes.split_counts(12).items():
        expected = datasets.Dataset.from_list(list(shapes.generate_split(split, count, 5, 32)), features=SHAPES_FEATURES)
        assert prepared[split].cast_column("image", raw).to_list() == expected.cast_column("image", raw).to_list()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folder left behind
