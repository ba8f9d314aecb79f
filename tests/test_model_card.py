"""Run folders carry a model card whose plain-transformers snippet works as written; `capalign push`
fails fast, with one line and exit 2, offline / unreachable / without a token, never showing the token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

from capalign.model_card import render_model_card

ROOT = Path(__file__).resolve().parents[1]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_pretrain_run_has_a_card_with_metadata(pretrained_run):
    card = (pretrained_run / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and "capalign" in meta["tags"] and "vision-encoder-decoder" in meta["tags"]
    for heading in ("## Model", "## Data and training", "## How to use", "## Limitations"):
        assert heading in card
    assert "Preset: `tiny`" in card and "Data: `shapes`" in card and "Steps: 8" in card


def test_card_transformers_snippet_runs_as_written(pretrained_run, tmp_path, monkeypatch):
    import capalign

    card = (pretrained_run / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "VisionEncoderDecoderModel" in b)
    assert "import capalign" not in snippet and "from capalign" not in snippet
    (tmp_path / pretrained_run.name).symlink_to(pretrained_run)  # the snippet names the run folder as it is
    Image.new("RGB", (64, 64), (220, 30, 30)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    printed = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": ""})
    assert printed.returncode == 0, printed.stderr[-2000:]
    max_new = int(re.search(r"max_new_tokens=(\d+)", snippet).group(1))
    ours = capalign.Captioner.from_pretrained(pretrained_run, device="cpu").caption("photo.jpg", num_beams=3, max_length=max_new)
    assert printed.stdout.strip() == ours


def test_prefix_card_says_it_needs_capalign(tmp_path):
    run = tmp_path / "clipcap-run"
    run.mkdir()
    (run / "capalign_model.json").write_text('{"arch": "prefix", "mapper": {"kind": "mlp"}, "frozen": {"vision": true}, "text_tower": false}')
    (run / "run.json").write_text('{"kind": "align", "data": "data/coco", "steps": 10, "reference": "runs/p"}')
    (run / "alignment_report.json").write_text('{"split_images": 50, "aligned": {"CIDEr": 0.8, "Length": 9.1}, "win_rate": 0.4}')
    card = render_model_card(run)
    meta = front_matter(card)
    assert meta["library_name"] == "capalign" and "dpo" in meta["tags"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["CIDEr"] == 0.8 and "cider" in meta["metrics"]
    assert "does not load in plain transformers" in card and "VisionEncoderDecoderModel" not in card


def _push(run: Path, tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    base.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf-home"), **env)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "capalign", "push", str(run), "--repo-id", "someone/tiny-captioner"],
                          capture_output=True, text=True, env=base, timeout=60)
    return done, time.perf_counter() - start


def test_push_offline_or_unreachable_fails_fast_without_showing_the_token(pretrained_run, tmp_path):
    done, seconds = _push(pretrained_run, tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "offline" in done.stderr
    assert seconds < 10 and done.stdout == ""

    done, seconds = _push(pretrained_run, tmp_path)  # no token anywhere
    assert done.returncode == 2 and "no Hugging Face token" in done.stderr and len(done.stderr.strip().splitlines()) == 1

    secret = "hf_notarealtokenbutsecret123"
    done, seconds = _push(pretrained_run, tmp_path, HF_TOKEN=secret, HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 2 and "unreachable" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert secret not in done.stderr + done.stdout
    assert seconds < 10
