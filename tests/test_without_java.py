"""Without Java: the pair ranker's Python tokenizer equals pycocoevalcap's PTB tokenizer on caption
text, so align ranks the same pairs with or without Java; evaluate reports the Java metrics as missing."""

import random

from capalign.data import shapes
from capalign.metrics import evaluate_captions
from capalign.metrics.coco import tokenize
from capalign.metrics.python_tokenizer import tokenize_in_python
from capalign.pairs.ranker import rank_candidates
from test_metrics_coco import synthetic


def test_python_tokenizer_equals_the_ptb_tokenizer_on_captions():
    rng = random.Random(0)
    scenes = {f"s{k}": shapes.describe(shapes.sample_scene(rng, novel=k % 4 == 0)) for k in range(300)}
    candidates, references = synthetic(100)  # case, punctuation, "woman's", "--"
    texts = {**scenes, **{k: refs + [candidates[k]] for k, refs in references.items()}}
    assert tokenize_in_python(texts) == tokenize(texts)


def test_ranking_needs_no_java_and_evaluate_reports_java_metrics_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    objects = [{"colour": "red", "shape": "circle", "size": "large", "position": "center"}]
    references = ["a large red circle in the middle", "there is a red circle in the center"]
    ranked = rank_candidates([["a large red circle in the middle", "a blue square in the middle"]], [references], [objects])
    assert ranked[0][0].score > ranked[0][1].score and ranked[0][1].hallucinations == 1
    result = evaluate_captions({"1": "a blue square"}, {"1": references}, ["METEOR", "CIDEr", "Hallucination"],
                               objects={"1": objects})
    assert set(result.missing) == {"METEOR", "CIDEr"} and "Java" in result.missing["CIDEr"]
    assert result.summary == {"Hallucination": 1.0}
