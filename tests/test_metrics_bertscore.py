"""BERTScore through bert-score with a tiny local model built here (offline), and the default's fail-fast."""

from __future__ import annotations

import json
import time

import pytest
import torch

from capalign.errors import ConfigError
from capalign.metrics import MetricOptions, evaluate_captions
from capalign.metrics.bertscore import fix_prefix_space

WORDS = "a the red blue green circle square cat dog on sits next to".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=32).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(folder)
    return folder


CANDS = {"1": "a red circle", "2": "the cat sits on the dog", "3": "a blue square next to a green circle"}
REFS = {"1": ["a red circle", "a circle"], "2": ["a dog", "the cat sits"], "3": ["a green circle", "blue square"]}


def test_equals_bert_score_called_directly(tiny_bert):
    from bert_score import score

    result = evaluate_captions(CANDS, REFS, ["BERTScore-F1"],
                               options=MetricOptions(bertscore_model=str(tiny_bert), bertscore_layer=2))
    ids = sorted(CANDS)
    _, _, f1 = score([CANDS[i] for i in ids], [REFS[i] for i in ids], model_type=str(tiny_bert), num_layers=2)
    assert [result.per_image[i]["BERTScore-F1"] for i in ids] == pytest.approx(f1.tolist(), abs=1e-6)
    assert result.summary["BERTScore-F1"] == pytest.approx(f1.mean().item(), abs=1e-6)
    assert result.per_image["1"]["BERTScore-F1"] == pytest.approx(1.0, abs=1e-5)  # exact match among refs
    assert result.per_image["2"]["BERTScore-F1"] < 0.9999
    assert "layer 2" in result.scorers["BERTScore-F1"] and "no baseline rescaling" in result.scorers["BERTScore-F1"]


def test_local_model_needs_a_layer(tiny_bert):
    with pytest.raises(ConfigError, match="--bertscore-layer"):
        evaluate_captions(CANDS, REFS, ["BERTScore-F1"], options=MetricOptions(bertscore_model=str(tiny_bert)))


def test_default_model_missing_fails_fast_with_hint():
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("roberta-large", "config.json"), str):
        pytest.skip("roberta-large is cached here")
    start = time.perf_counter()
    result = evaluate_captions(CANDS, REFS, ["BERTScore-F1", "ROUGE-L"])
    assert time.perf_counter() - start < 15
    assert "capalign fetch --model roberta-large" in result.missing["BERTScore-F1"]
    assert "ROUGE-L" in result.summary


def test_roberta_prefix_space_restored(tmp_path):
    """bert-score tokenizes RoBERTa text with a leading space; transformers 5 ignores the keyword it uses."""
    from transformers import RobertaTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + [chr(c) for c in cs] + ["Ġa"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\n")
    RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=32).save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    fixed = fix_prefix_space(AutoTokenizer.from_pretrained(tmp_path, use_fast=False), str(tmp_path))
    ids = fixed.encode("a cat", add_special_tokens=True, add_prefix_space=True)
    assert ids[1] == vocab["Ġa"]


def test_chunks_give_the_same_scores(tiny_bert, monkeypatch):
    from capalign.metrics import bertscore

    options = MetricOptions(bertscore_model=str(tiny_bert), bertscore_layer=2)
    whole = evaluate_captions(CANDS, REFS, ["BERTScore-F1"], options=options)
    monkeypatch.setattr(bertscore, "CHUNK", 2)  # 3 captions: chunks of 2 and 1
    chunked = evaluate_captions(CANDS, REFS, ["BERTScore-F1"], options=options)
    assert chunked.per_image == whole.per_image
    assert chunked.summary == whole.summary
