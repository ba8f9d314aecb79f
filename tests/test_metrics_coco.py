"""pycocoevalcap metrics: our wrapper equals calling pycocoevalcap directly, and reproduces published numbers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from capalign.metrics import evaluate_captions
from capalign.metrics.coco import bleu_from_stats

from conftest import refdata
COCO = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def synthetic(n_images: int = 300, seed: int = 0):
    """Captions with case, punctuation and paraphrase noise, so the PTB tokenizer has work to do."""
    rng = random.Random(seed)
    colours = ["red", "blue", "green", "yellow", "Purple", "orange"]
    nouns = ["cat", "dog", "square", "circle", "bus", "man", "woman's hat", "kite"]
    verbs = ["sits on", "is next to", "runs past", "lies under", "looks at"]
    places = ["a table", "the grass", "a road.", "the beach!", "a bench, quietly", "it -- again"]

    def sentence() -> str:
        return f"{rng.choice(['A', 'a', 'The'])} {rng.choice(colours)} {rng.choice(nouns)} {rng.choice(verbs)} {rng.choice(places)}"

    refs = {f"{k:04d}": [sentence() for _ in range(5)] for k in range(n_images)}
    cands = {k: (rng.choice(v) if rng.random() < 0.3 else sentence()) for k, v in refs.items()}
    return cands, refs


@pytest.fixture(scope="module", autouse=True)
def meteor():
    """One METEOR Java process (~10 s to warm up on 2 cores) for the module: the direct calls below and
    capalign's wrapper both talk to it, so the comparison is of what each sends and reads back."""
    from pycocoevalcap.meteor.meteor import Meteor

    import capalign.metrics.coco as coco

    instance = Meteor()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coco, "meteor_scorer", lambda: instance)
        yield instance


@pytest.fixture(scope="module")
def synthetic_scores():
    cands, refs = synthetic()
    return cands, refs, evaluate_captions(cands, refs, COCO)


def test_equals_pycocoevalcap_called_directly(synthetic_scores, meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    cands, refs, ours = synthetic_scores
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": r} for r in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in cands.items()})
    ids = list(gts)
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    direct = {f"BLEU-{k + 1}": (bleu[k], bleu_per[k]) for k in range(4)}
    direct["METEOR"] = meteor.compute_score(gts, res)
    assert meteor.compute_score(gts, res) == direct["METEOR"]  # the process keeps no state between requests
    direct["ROUGE-L"] = Rouge().compute_score(gts, res)
    direct["CIDEr"] = Cider().compute_score(gts, res)
    assert len(ids) == 300
    for name, (corpus, per) in direct.items():
        assert ours.summary[name] == pytest.approx(corpus, abs=1e-12), name
        assert [ours.per_image[i][name] for i in ids] == pytest.approx(list(per), abs=1e-12), name
    assert 0.05 < ours.summary["CIDEr"] < 5  # a real, non-degenerate corpus


def test_bleu_from_statistics_matches_corpus_bleu(synthetic_scores):
    cands, refs, ours = synthetic_scores
    totals = np.array(list(ours.stats["BLEU"].values())).sum(axis=0)
    assert bleu_from_stats(totals) == pytest.approx([ours.summary[f"BLEU-{k}"] for k in range(1, 5)], abs=1e-12)


def _load(example: str, which: str):
    folder = refdata(example)
    return json.loads((folder / f"{which}_captions.json").read_text()), json.loads((folder / "refs.json").read_text())


@pytest.mark.parametrize(
    "example,which,key",
    [
        ("clipscore_example", "good", "good_captions_with_refs"),
        ("clipscore_example", "bad", "bad_captions_with_refs"),
        ("pacscore_example", "good", None),
        ("pacscore_example", "bad", None),
    ],
)
def test_reproduces_published_numbers(example, which, key):
    expected_all = json.loads((refdata(example) / "expected_outputs.json").read_text())
    expected = expected_all[key] if key else next(v for k, v in expected_all.items() if k.startswith(f"{which}_captions"))
    cands, refs = _load(example, which)
    ours = evaluate_captions(cands, refs, COCO).summary
    names = {"ROUGE": "ROUGE-L", "CIDER": "CIDEr"}
    checked = 0
    for upstream, value in expected.items():
        name = names.get(upstream, upstream)
        if name in COCO:
            assert round(ours[name], 4) == pytest.approx(value, abs=1e-9), f"{example}/{which} {name}: {ours[name]:.4f} != {value}"
            checked += 1
    assert checked >= 5


def test_spice_missing_offline_is_one_line_and_others_still_score(monkeypatch):
    import pycocoevalcap.spice.get_stanford_models as gsm
    from urllib.error import URLError

    import capalign.metrics.coco as coco

    def offline():
        raise URLError("no network")

    monkeypatch.setattr(gsm, "get_stanford_models", offline)
    monkeypatch.setattr(coco, "SPICE_JAR_NAME", "not-there.jar")
    cands, refs = _load("clipscore_example", "good")
    result = evaluate_captions(cands, refs, ["CIDEr", "SPICE"])
    assert "SPICE" not in result.summary and result.summary["CIDEr"] > 0
    reason = result.missing["SPICE"]
    assert "\n" not in reason and "CoreNLP" in reason and "get_stanford_models" in reason
