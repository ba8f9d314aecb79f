"""The rehearsal at real size: every preset, built at its published size with random weights
(tests/real_backbones.py), goes through pretrain → align → caption → evaluate with the normal
commands for a few steps, in bf16 autocast or fp32 on the CPU.

The presets with a GPT-2 decoder need minutes each on 2 cores, so they are marked `slow` (the README's
test command deselects them; run them with `python -m pytest -m slow tests/test_real_size.py`);
bench/bench_real_size.py times the same stages and reports memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from capalign.config import PRESETS
from real_backbones import preset_backbone_args
from test_cli import run_cli

EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "red_circle.png"
SLOW = pytest.mark.slow
CASES = [
    pytest.param("vit-scratch", "no", id="vit-scratch-fp32"),
    pytest.param("clip-gpt2", "bf16", id="clip-gpt2-bf16", marks=SLOW),
    pytest.param("clip-gpt2", "no", id="clip-gpt2-fp32", marks=SLOW),
    pytest.param("clip-gpt2-medium", "bf16", id="clip-gpt2-medium-bf16", marks=SLOW),
    pytest.param("clipcap", "no", id="clipcap-fp32", marks=SLOW),
    pytest.param("clipcap-mlp", "bf16", id="clipcap-mlp-bf16", marks=SLOW),
    pytest.param("mobilenet-gpt2", "no", id="mobilenet-gpt2-fp32", marks=SLOW),
]


@pytest.fixture(scope="session")
def published_root(tmp_path_factory) -> Path:
    """Where the published-size backbones are saved (each built on first use, then reused)."""
    return tmp_path_factory.mktemp("published")


@pytest.fixture(scope="session")
def rehearsal_data(tmp_path_factory) -> Path:
    """8 shapes images (5 train, 1 each for validation, test and novel)."""
    from capalign.data.store import prepare_shapes

    out = tmp_path_factory.mktemp("rehearsal") / "shapes"
    prepare_shapes(out, limit=8, seed=0)
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset,precision", CASES)
def test_preset_at_published_size_pretrains_aligns_captions_and_evaluates(preset, precision, published_root,
                                                                        rehearsal_data, in_workspace, capsys):
    backbones = preset_backbone_args(preset, published_root)
    root = Path(f"runs/real-{preset}-{precision}")
    common = ["--data", str(rehearsal_data), "--batch-size", "2", "--mixed-precision", precision]

    code, _, err = run_cli(["pretrain", "--preset", preset, *backbones, *common, "--max-steps", "2",
                            "--out", str(root / "pretrain")], capsys)
    assert code == 0, err
    losses = [r["loss"] for r in _records(root / "pretrain") if "loss" in r]
    assert len(losses) >= 1 and all(math.isfinite(v) for v in losses)
    resolved = yaml.safe_load((root / "pretrain" / "capalign.yaml").read_text())
    assert resolved["model"]["preset"] == preset and resolved["train"]["mixed_precision"] == precision

    model = root / "pretrain"
    if PRESETS[preset]["model"]["arch"] != "contrastive":
        code, _, err = run_cli(["align", "--model", str(model), *common, "--max-steps", "1",
                                "--out", str(root / "align")], capsys)
        assert code == 0, err
        model = root / "align"
        aligned = yaml.safe_load((model / "capalign.yaml").read_text())
        assert aligned["align"]["lr"] == PRESETS[preset]["align"]["lr"]  # the preset's stage-2 settings, not tiny's
        assert aligned["train"]["mixed_precision"] == precision
        margins = [r["rewards/margins"] for r in _records(model) if "rewards/margins" in r]
        assert margins and all(math.isfinite(v) for v in margins)
        assert json.loads((model / "run.json").read_text())["steps"] >= 1

        captions = in_workspace / f"{preset}-{precision}-captions.jsonl"
        code, _, err = run_cli(["caption", str(EXAMPLE_IMAGE), "--model", str(model), "--output", str(captions)], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in captions.read_text().splitlines()]
        assert len(rows) == 1 and isinstance(rows[0]["caption"], str)

    metrics = "retrieval" if PRESETS[preset]["model"]["arch"] == "contrastive" else "cider,hallucination"
    scores = in_workspace / f"{preset}-{precision}-scores.json"
    code, _, err = run_cli(["evaluate", "--model", str(model), "--data", str(rehearsal_data), "--metrics", metrics,
                            "--output", str(scores)], capsys)
    assert code == 0, err
    values = json.loads(scores.read_text())["metrics"]
    assert values and all(math.isfinite(v) for v in values.values() if isinstance(v, (int, float)))
