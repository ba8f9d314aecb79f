"""CLIPScore / RefCLIPScore (Hessel et al. 2021) against a hand computation on a tiny CLIPModel saved
to disk and loaded back by path (the same code path as a hub name)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from capalign.metrics import MetricOptions, evaluate_captions
from capalign.metrics.clipscore import clip_scores

WORDS = "a photo depicts red blue green circle square triangle cat dog on the".split()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    letters = list("abcdefghijklmnopqrstuvwxyz.,")
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters])}
    merges = []
    for word in WORDS:  # left-to-right merges so that each word is one token
        current = word[0]
        for k, ch in enumerate(word[1:]):
            nxt = ch + "</w>" if k == len(word) - 2 else ch
            merges.append(f"{current} {nxt}")
            current += nxt
            vocab.setdefault(current, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def _images():
    rng = np.random.default_rng(0)
    return {f"im{k}": Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)) for k in range(4)}


def test_clipscore_and_refclipscore_match_hand_computation(tiny_clip):
    from transformers import AutoProcessor, CLIPModel

    images = _images()
    cands = {"im0": "a red circle", "im1": "a blue square on the cat", "im2": "the dog", "im3": "a green triangle"}
    refs = {"im0": ["a red circle", "a circle"], "im1": ["a square"], "im2": ["a dog", "the cat", "a dog on the"],
            "im3": ["a blue triangle"]}
    result = evaluate_captions(cands, refs, ["CLIPScore", "RefCLIPScore"], images=images,
                               options=MetricOptions(clip_model=str(tiny_clip)))
    assert not result.missing

    # Hand computation, independent of capalign: model outputs -> unit vectors -> Hessel's formulas.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = AutoProcessor.from_pretrained(tiny_clip)
    ids = sorted(cands)

    def text_vec(texts):
        enc = proc.tokenizer(texts, padding=True, return_tensors="pt")
        out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).detach().numpy()

    pix = proc(images=[images[i] for i in ids], return_tensors="pt")["pixel_values"]
    out = model.get_image_features(pixel_values=pix)
    v = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).detach().numpy()
    c = text_vec([f"A photo depicts {cands[i]}" for i in ids])
    expected_clip, expected_ref = [], []
    for k, i in enumerate(ids):
        clip_s = 2.5 * max(float(v[k] @ c[k]), 0.0)
        r = text_vec([f"A photo depicts {x}" for x in refs[i]])
        ref_s = max(float(np.max(r @ c[k])), 0.0)
        expected_clip.append(clip_s)
        expected_ref.append(2 * clip_s * ref_s / (clip_s + ref_s) if clip_s + ref_s > 0 else 0.0)
    got_clip = [result.per_image[i]["CLIPScore"] for i in ids]
    got_ref = [result.per_image[i]["RefCLIPScore"] for i in ids]
    assert got_clip == pytest.approx(expected_clip, abs=1e-5)
    assert got_ref == pytest.approx(expected_ref, abs=1e-5)
    assert result.summary["CLIPScore"] == pytest.approx(np.mean(expected_clip), abs=1e-5)
    assert result.summary["RefCLIPScore"] == pytest.approx(np.mean(expected_ref), abs=1e-5)
    assert str(tiny_clip) in result.scorers["CLIPScore"] and "w=2.5" in result.scorers["CLIPScore"]
    assert "A photo depicts" in result.scorers["RefCLIPScore"]


def test_formulas_clip_negative_similarity_and_harmonic_mean():
    image = np.array([[1.0, 0.0], [1.0, 0.0]])
    cand = np.array([[0.6, 0.8], [-1.0, 0.0]])  # cos 0.6, then -1 (clipped to 0)
    refs = [np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[1.0, 0.0]])]  # best ref cos 0.8; then -1 -> 0
    clip_s, refclip = clip_scores(image, cand, refs)
    assert clip_s.tolist() == pytest.approx([1.5, 0.0])
    assert refclip.tolist() == pytest.approx([2 * 1.5 * 0.8 / (1.5 + 0.8), 0.0])


def test_missing_default_model_fails_fast_with_fetch_hint():
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("openai/clip-vit-base-patch32", "config.json"), str):
        pytest.skip("the default CLIP model is cached on this machine")
    images = _images()
    start = time.perf_counter()
    result = evaluate_captions({"im0": "a cat"}, {"im0": ["a dog"]}, ["CLIPScore", "RefCLIPScore"], images=images)
    assert time.perf_counter() - start < 10
    assert not result.summary
    assert "capalign fetch --model openai/clip-vit-base-patch32" in result.missing["CLIPScore"]
    assert "\n" not in result.missing["RefCLIPScore"]


def test_a_contrastive_head_as_scorer_is_named():
    class Head:
        def embed_images(self, images):
            return torch.tensor([[1.0, 0.0]] * len(images))

        def embed_texts(self, texts):
            return torch.tensor([[1.0, 0.0] if "good" in t else [0.0, 1.0] for t in texts])

    images = {"a": None, "b": None}
    result = evaluate_captions({"a": "good", "b": "bad"}, {"a": ["x"], "b": ["y"]}, ["CLIPScore"], images=images,
                               options=MetricOptions(clip_scorer=Head(), clip_model="contrastive head of run r1"))
    assert result.per_image["a"]["CLIPScore"] == pytest.approx(2.5) and result.per_image["b"]["CLIPScore"] == 0.0
    assert "run r1" in result.scorers["CLIPScore"] and "not CLIP" in result.scorers["CLIPScore"]


def test_published_clipscore_example_when_the_default_model_is_cached():
    """jmhessel/clipscore README: good captions CLIPScore 0.8585 on CPU (0.8584 GPU), RefCLIPScore 0.8450;
    bad 0.7153 / 0.7253. Runs only where openai/clip-vit-base-patch32 is cached (fetch it first).
    Tolerance 1e-3: transformers' CLIP image processor and OpenAI's torchvision pipeline resize slightly
    differently."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("openai/clip-vit-base-patch32", "config.json"), str):
        pytest.skip("openai/clip-vit-base-patch32 is not cached (capalign fetch --model openai/clip-vit-base-patch32)")
    from conftest import refdata

    folder = refdata("clipscore_example")
    images = {p.stem: Image.open(p) for p in (folder / "images").glob("*.jpg")}
    refs = json.loads((folder / "refs.json").read_text())
    for which, clip_s, refclip_s in (("good", 0.8585, 0.8450), ("bad", 0.7153, 0.7253)):
        cands = json.loads((folder / f"{which}_captions.json").read_text())
        result = evaluate_captions(cands, refs, ["CLIPScore", "RefCLIPScore"], images=images)
        assert result.summary["CLIPScore"] == pytest.approx(clip_s, abs=1e-3)
        assert result.summary["RefCLIPScore"] == pytest.approx(refclip_s, abs=1e-3)
