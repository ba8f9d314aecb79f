"""Captioners capalign did not train: tiny VisionEncoderDecoder, BLIP and GIT folders saved exactly as
save_pretrained writes them (tests/tiny_captioners.py) caption through capalign as through plain
transformers, token for token; evaluate scores them; align writes a folder plain transformers loads
with the same class. A Hub id that is not cached fails offline with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from capalign.api import Captioner
from tests.test_cli import run_cli
from tests.tiny_captioners import BUILDERS

KINDS = sorted(BUILDERS)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    return {kind: build(root / kind) for kind, (build, _) in BUILDERS.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    images = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (50, 30), (0, 0, 255)),
              Image.effect_noise((40, 40), 60).convert("RGB")]
    paths = [root / f"photo{i}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def plain_generate(folder: Path, kind: str, paths: list[Path], num_beams: int):
    """Token ids and captions from plain transformers on `folder`, no capalign involved."""
    model = BUILDERS[kind][1].from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, num_beams=num_beams, do_sample=False)
    return ids, [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)], pixels


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_captions_equal_plain_transformers(foreign, photos, kind, num_beams, tmp_path, capsys):
    ids, expected, pixels = plain_generate(foreign[kind], kind, photos, num_beams)
    captioner = Captioner.from_pretrained(foreign[kind], device="cpu")
    assert captioner.module.arch == registry_name(kind)
    assert torch.equal(captioner.module.generate(pixels, num_beams=num_beams, do_sample=False), ids)
    start = captioner.module.prompt_tokens  # the output's start tokens, before the caption's own
    assert start == 1 and captioner.tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True) == \
        captioner.tokenizer.batch_decode(ids, skip_special_tokens=True)
    output = tmp_path / "captions.jsonl"
    code, _, err = run_cli(["caption", *map(str, photos), "--model", str(foreign[kind]), "--num-beams", str(num_beams),
                            "--output", str(output)], capsys)
    assert code == 0, err
    assert [json.loads(line)["caption"] for line in output.read_text().splitlines()] == expected
    assert captioner.caption([str(p) for p in photos], num_beams=num_beams) == expected


def registry_name(kind: str) -> str:
    return {"vision-encoder-decoder": "cross-attention"}.get(kind, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_runs_and_leaves_the_folder_alone(foreign, kind, workspace, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in foreign[kind].iterdir()}
    output = tmp_path / "eval.json"
    code, _, err = run_cli(["evaluate", "--model", str(foreign[kind]), "--data", str(workspace / "data" / "shapes"),
                            "--metrics", "bleu,cider,retrieval", "--output", str(output)], capsys)
    assert code == 0, err
    report = json.loads(output.read_text())
    assert "CIDEr" in report["metrics"]
    assert "no contrastive head" in json.dumps(report)  # retrieval listed as missing, with the reason
    assert {p.name: p.read_bytes() for p in foreign[kind].iterdir()} == before


@pytest.mark.parametrize("kind", KINDS)
def test_align_writes_a_folder_plain_transformers_loads(foreign, photos, kind, workspace, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["align", "--model", str(foreign[kind]), "--data", str(workspace / "data" / "shapes"),
                            "--max-steps", "2", "--batch-size", "4", "--out", "aligned"], capsys)
    assert code == 0, err
    aligned = tmp_path / "aligned"
    assert (aligned / "model.safetensors").read_bytes() != (foreign[kind] / "model.safetensors").read_bytes()  # trained
    ids, captions, _ = plain_generate(aligned, kind, photos, num_beams=1)
    assert len(captions) == len(photos) and ids.size(0) == len(photos)
    assert json.loads((aligned / "capalign_model.json").read_text())["arch"] == registry_name(kind)
    assert Captioner.from_pretrained(aligned, device="cpu").caption([str(p) for p in photos]) == captions


def test_uncached_hub_id_offline_is_one_line(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, out, err = run_cli(["caption", str(photos[0]), "--model", "someone/not-a-cached-captioner"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "capalign fetch --model someone/not-a-cached-captioner" in err


def test_a_folder_of_another_kind_is_refused_with_one_line(photos, tmp_path, capsys):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run_cli(["caption", str(photos[0]), "--model", str(folder)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'bert' model" in err and "vision-encoder-decoder" in err


def test_compare_two_foreign_captioners(foreign, workspace, tmp_path, capsys):
    output = tmp_path / "cmp.json"
    code, out, err = run_cli(["compare", str(foreign["vision-encoder-decoder"]), str(foreign["git"]),
                              "--data", str(workspace / "data" / "shapes"), "--metrics", "cider", "--output", str(output)],
                             capsys)
    assert code == 0, err
    compared = json.loads(output.read_text())
    assert set(compared["systems"]) == {"vision-encoder-decoder", "git"}


@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_init_from_fine_tunes_in_the_models_own_format(foreign, photos, kind, workspace, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["pretrain", "--init-from", str(foreign[kind]), "--data", str(workspace / "data" / "shapes"),
                            "--max-steps", "2", "--batch-size", "4", "--select", "none", "--out", "tuned"], capsys)
    assert code == 0, err
    tuned = tmp_path / "tuned"
    assert (tuned / "model.safetensors").read_bytes() != (foreign[kind] / "model.safetensors").read_bytes()
    ids, captions, _ = plain_generate(tuned, kind, photos, num_beams=1)
    assert ids.size(0) == len(photos)
    assert json.loads((tuned / "run.json").read_text())["init_from"] == str(foreign[kind])


def test_cached_hub_id_works_offline(foreign, photos, tmp_path, monkeypatch, capsys):
    """A Hub id whose snapshot is in the Hugging Face cache (its layout: refs/main → snapshots/REV)
    captions offline, as its folder does."""
    import shutil

    cache = tmp_path / "hub-cache"
    repo = cache / "models--someone--tiny-vit-gpt2"
    shutil.copytree(foreign["vision-encoder-decoder"], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    _, expected, _ = plain_generate(foreign["vision-encoder-decoder"], "vision-encoder-decoder", photos[:1], num_beams=1)
    output = tmp_path / "captions.jsonl"
    code, _, err = run_cli(["caption", str(photos[0]), "--model", "someone/tiny-vit-gpt2", "--output", str(output)], capsys)
    assert code == 0, err
    assert [json.loads(line)["caption"] for line in output.read_text().splitlines()] == expected
