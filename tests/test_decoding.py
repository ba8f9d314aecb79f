"""Decoding controls (top-k, top-p, repetition penalty, no-repeat n-grams, length penalty, min/max new
tokens, several captions per image): each changes what it should, equals plain transformers
`generate` with the same arguments, works for the prefix architecture too, and a bad value is one
line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capalign.errors import ConfigError
from capalign.inference.generate import DecodeOptions, caption_images, caption_images_scored
from test_cli import run_cli

IMAGES = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def captioner(pretrained_run):
    from capalign import Captioner

    return Captioner.from_pretrained(pretrained_run, device="cpu")


def _words(scored) -> list[str]:
    """The generated tokens before EOS."""
    return [t for t in scored.tokens if t != "<|endoftext|>"]


def test_min_new_tokens_and_no_repeat_ngram_size(captioner):
    paths = [str(p) for p in IMAGES]
    plain = captioner.caption(paths, return_scores=True)
    longer = captioner.caption(paths, return_scores=True, min_new_tokens=8)
    assert all(len(_words(s)) >= 8 for s in longer)
    assert any(len(_words(s)) < 8 for s in plain)  # the tiny model ends sooner on its own
    assert any(len(set(_words(s))) < len(_words(s)) for s in longer)  # ... and repeats itself
    distinct = captioner.caption(paths, return_scores=True, min_new_tokens=8, no_repeat_ngram_size=1)
    assert all(len(_words(s)) >= 8 and len(set(_words(s))) == len(_words(s)) for s in distinct)
    penalised = captioner.caption(paths, return_scores=True, min_new_tokens=8, repetition_penalty=2.0)
    assert sum(len(set(_words(s))) for s in penalised) > sum(len(set(_words(s))) for s in longer)
    assert all(len(_words(s)) <= 10 for s in captioner.caption(paths, return_scores=True, min_new_tokens=8, max_length=10))


def test_top_k_1_sampling_is_greedy_token_for_token(captioner):
    paths = [str(p) for p in IMAGES]
    greedy = captioner.caption(paths, return_scores=True, min_new_tokens=6)
    torch.manual_seed(0)
    top1 = captioner.caption(paths, return_scores=True, min_new_tokens=6, temperature=1.0, top_k=1)
    assert [s.tokens for s in top1] == [s.tokens for s in greedy]
    torch.manual_seed(0)
    sampled = captioner.caption(paths, return_scores=True, min_new_tokens=6, temperature=1.0)
    assert [s.tokens for s in sampled] != [s.tokens for s in greedy]
    torch.manual_seed(0)
    nucleus = captioner.caption(paths, return_scores=True, min_new_tokens=6, temperature=1.0, top_p=1e-6)
    assert [s.tokens for s in nucleus] == [s.tokens for s in greedy]  # the smallest nucleus is the top token


def test_length_penalty_moves_beam_search_to_longer_or_shorter_captions(captioner):
    long = captioner.caption(str(IMAGES[0]), return_scores=True, num_beams=3, length_penalty=5.0)
    short = captioner.caption(str(IMAGES[0]), return_scores=True, num_beams=3, length_penalty=-5.0)
    assert len(long.tokens) > len(short.tokens)


def test_several_captions_per_image_from_beams_and_samples(captioner):
    beams = captioner.caption([str(p) for p in IMAGES], num_beams=3, num_captions=3)
    assert len(beams) == len(IMAGES) and all(len(group) == 3 and len(set(group)) == 3 for group in beams)
    assert [group[0] for group in beams] == captioner.caption([str(p) for p in IMAGES], num_beams=3)  # the best beam first
    one = captioner.caption(str(IMAGES[0]), num_captions=5, temperature=1.0, min_new_tokens=3)
    assert isinstance(one, list) and len(one) == 5 and all(isinstance(c, str) for c in one)


def test_the_same_captions_as_plain_transformers_generate(captioner, pretrained_run):
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(pretrained_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained_run)
    processor = AutoImageProcessor.from_pretrained(pretrained_run)
    from capalign.data.images import open_rgb

    images = [open_rgb(p) for p in IMAGES]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    for options in (DecodeOptions(num_beams=3, num_captions=3, min_new_tokens=4, no_repeat_ngram_size=2, length_penalty=0.5),
                    DecodeOptions(min_new_tokens=8, repetition_penalty=1.5, max_length=12)):
        with torch.no_grad():
            ids = model.generate(pixel_values=pixels, **options.generate_kwargs())
        plain = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        ours = caption_images(captioner.module, captioner.tokenizer, captioner.processor, images, options)
        flat = [c for group in ours for c in group] if options.num_captions > 1 else ours
        assert flat == plain, options


def test_caption_command_writes_several_captions_and_coco_keeps_the_first(pretrained_run, in_workspace, capsys):
    folder = IMAGES[0].parent
    args = ["caption", str(folder), "--model", str(pretrained_run), "--num-beams", "3", "--num-captions", "3"]
    code, out, err = run_cli([*args, "--output", "several.jsonl"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (in_workspace / "several.jsonl").read_text().splitlines()]
    assert len(records) == len(IMAGES)
    assert all(len(set(r["captions"])) == 3 and r["caption"] == r["captions"][0] for r in records)
    code, out, err = run_cli([*args, "--output", "several.json"], capsys)
    assert code == 0, err
    coco = json.loads((in_workspace / "several.json").read_text())
    assert [r["caption"] for r in coco] == [r["caption"] for r in records]


def test_evaluate_takes_the_decoding_options(pretrained_run, in_workspace, capsys):
    code, out, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu", "--limit", "2",
                              "--min-new-tokens", "5", "--no-repeat-ngram-size", "1", "--output", "decoded.json"], capsys)
    assert code == 0, err
    captions = json.loads((in_workspace / "decoded.json").read_text())["captions"]
    assert len(captions) == 2 and all(len(c.split()) >= 5 and len(set(c.split())) == len(c.split()) for c in captions.values())


@pytest.mark.parametrize("option, value, named", [
    ("--top-k", "-1", "--top-k must be a whole number of at least 0"),
    ("--top-p", "0", "--top-p must be a number above 0 and at most 1"),
    ("--top-p", "1.5", "--top-p must be a number above 0 and at most 1"),
    ("--top-p", "nan", "--top-p must be a number above 0 and at most 1"),
    ("--repetition-penalty", "0", "--repetition-penalty must be a number above 0"),
    ("--repetition-penalty", "inf", "--repetition-penalty must be a number above 0"),
    ("--no-repeat-ngram-size", "-2", "--no-repeat-ngram-size must be a whole number of at least 0"),
    ("--length-penalty", "nan", "--length-penalty must be a finite number"),
    ("--min-new-tokens", "-1", "--min-new-tokens must be a whole number of at least 0"),
    ("--num-captions", "0", "--num-captions must be between 1 and"),
])
def test_bad_decoding_values_are_one_line(pretrained_run, in_workspace, capsys, option, value, named):
    # sampling and beams on, so that the value itself is what is refused
    code, _, err = run_cli(["caption", str(IMAGES[0]), "--model", str(pretrained_run), "--temperature", "1",
                            "--num-beams", "2", option, value], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert named in err


@pytest.mark.parametrize("args, named", [
    (["--num-captions", "3"], "greedy decoding gives one caption; use --num-beams 3 or more, or --temperature above 0"),
    (["--num-beams", "2", "--num-captions", "3"], "--num-captions must be between 1 and 2 (at most --num-beams)"),
    (["--temperature", "1", "--num-captions", "101"], "--num-captions must be between 1 and 100"),
    (["--top-k", "5"], "--top-k and --top-p filter what sampling draws from; add --temperature"),
    (["--length-penalty", "2"], "--length-penalty scores finished beams; it needs --num-beams 2 or more"),
    (["--max-length", "4", "--min-new-tokens", "5"], "--min-new-tokens must be between 0 and 4 (at most --max-length)"),
    (["--min-new-tokens", "500"], "--min-new-tokens must be between 0 and 20 (this model's caption length"),
])
def test_decoding_combinations_that_cannot_work_are_one_line(pretrained_run, in_workspace, capsys, args, named):
    code, _, err = run_cli(["caption", str(IMAGES[0]), "--model", str(pretrained_run), *args, "--output", "x.jsonl"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert named in err
    assert not (in_workspace / "x.jsonl").exists()


def test_the_python_api_and_evaluate_refuse_bad_values_alike(captioner):
    import capalign

    for kwargs, named in [({"top_k": 2.5, "temperature": 1.0}, "--top-k"), ({"num_captions": 2}, "--num-captions"),
                          ({"repetition_penalty": -1.0}, "--repetition-penalty")]:
        with pytest.raises(ConfigError, match=named):
            captioner.caption(str(IMAGES[0]), **kwargs)
        with pytest.raises(ConfigError, match=named):
            capalign.evaluate("nowhere", **kwargs)


@pytest.fixture(scope="module")
def prefix_model(tmp_path_factory):
    from capalign.config import build_config
    from capalign.models.build import build_captioner
    from tiny_backbones import build_tiny_backbones

    backbones = build_tiny_backbones(tmp_path_factory.mktemp("decoding-backbones"))
    config = build_config("clipcap-mlp", None, {"model": {"vision": str(backbones["clip"]), "decoder": str(backbones["gpt2"])}})
    torch.manual_seed(0)
    captioner, tokenizer, processor = build_captioner(config.model, [], with_head=False)
    return captioner.eval(), tokenizer, processor


def test_the_prefix_architecture_takes_the_same_controls(prefix_model):
    from PIL import Image

    captioner, tokenizer, processor = prefix_model
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "green")]
    beams = DecodeOptions(num_beams=3, num_captions=3, max_length=6)
    together = caption_images(captioner, tokenizer, processor, images, beams)
    # num_return_sequences rows come back consecutively per image: the same groups one image at a time
    assert together == [caption_images(captioner, tokenizer, processor, [image], beams)[0] for image in images]
    assert all(len(group) == 3 for group in together)
    options = DecodeOptions(min_new_tokens=5, max_length=8, no_repeat_ngram_size=1)
    for scored in caption_images_scored(captioner, tokenizer, processor, images, options):
        ids = tokenizer.convert_tokens_to_ids(scored.tokens)
        before_eos = ids[: ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids
        assert len(before_eos) >= 5 and len(set(before_eos)) == len(before_eos)
    prefix = captioner.encode_images(processor(images=images, return_tensors="pt")["pixel_values"]).last_hidden_state
    with torch.no_grad():  # plain transformers generate on the same decoder and prefix embeddings
        ids = captioner.model.decoder.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                                               **beams.generate_kwargs())
    plain = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert [c for group in together for c in group] == plain


def test_align_candidate_sampling_takes_decode_options(captioner):
    from capalign.data.images import open_rgb
    from capalign.pairs.generated import sample_candidates

    images = [open_rgb(p) for p in IMAGES]
    module, tokenizer, processor = captioner.module, captioner.tokenizer, captioner.processor
    greedy = caption_images(module, tokenizer, processor, images)
    forced = caption_images(module, tokenizer, processor, images, DecodeOptions(min_new_tokens=3))
    top1 = DecodeOptions(temperature=1.0, top_k=1, min_new_tokens=3)
    candidates = sample_candidates(module, tokenizer, processor, images, samples=2, seed=0, sampling=top1)
    assert candidates == [list(dict.fromkeys([g, f])) for g, f in zip(greedy, forced)]
    several = sample_candidates(module, tokenizer, processor, images, samples=1, seed=0,
                                sampling=DecodeOptions(temperature=1.0, num_captions=4, min_new_tokens=2))
    assert all(1 <= len(c) <= 5 and len(set(c)) == len(c) for c in several) and any(len(c) > 2 for c in several)


def test_align_cli_passes_candidate_sampling_to_pair_building(pretrained_run, in_workspace, capsys, monkeypatch):
    from capalign.pairs import dataset as pair_dataset

    seen = []
    real = pair_dataset.sample_candidates

    def spy(*args, **kwargs):
        candidates = real(*args, **kwargs)
        seen.append((args[-1] if len(args) > 6 else kwargs.get("sampling"), candidates))
        return candidates

    monkeypatch.setattr(pair_dataset, "sample_candidates", spy)
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--out", "runs/top1", "--max-steps", "1",
                            "--batch-size", "8", "--rounds", "1", "--candidate-top-k", "1"], capsys)
    assert code == 0, err
    assert seen and all(options.top_k == 1 and options.temperature == 1.0 for options, _ in seen)
    # top-1 sampling is greedy: every image's candidates collapse to its one greedy caption
    assert all(len(c) == 1 for _, candidates in seen for c in candidates)


@pytest.mark.parametrize("flag,value", [("--candidate-top-p", "0"), ("--candidate-top-k", "-1"),
                                        ("--candidate-temperature", "nan")])
def test_align_refuses_bad_candidate_sampling(pretrained_run, in_workspace, capsys, flag, value):
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--out", "runs/bad-sampling", flag, value], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and flag in lines[0] and "Traceback" not in err
