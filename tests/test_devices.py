"""One device policy: every command takes --device, honours cpu, and refuses a device that is not there;
inference takes --dtype (auto: the training precision on an accelerator, float32 on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capalign.devices import resolve_device, resolve_dtype
from capalign.errors import ConfigError
from capalign.models.io import load_captioner
from test_cli import run_cli

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "red_circle.png"


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("command", ["caption", "evaluate", "compare", "pretrain", "align"])
def test_every_command_takes_device_and_refuses_a_missing_gpu(command, pretrained_run, in_workspace, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = {"caption": ["caption", str(IMAGE), "--model", str(pretrained_run)],
            "evaluate": ["evaluate", "--model", str(pretrained_run), "--metrics", "bleu"],
            "compare": ["compare", str(pretrained_run), str(pretrained_run), "--metrics", "bleu"],
            "pretrain": ["pretrain", "--config", "tiny.yaml", "--max-steps", "1", "--out", "runs/dev-gpu"],
            "align": ["align", "--model", str(pretrained_run), "--max-steps", "1", "--out", "runs/dev-gpu-align"]}[command]
    code, _, err = run_cli([*args, "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_device_cpu_is_honoured(pretrained_run, in_workspace, capsys):
    code, out, err = run_cli(["caption", str(IMAGE), "--model", str(pretrained_run), "--device", "cpu",
                              "--output", "dev.json"], capsys)
    assert code == 0, err
    assert "caption" in json.loads((in_workspace / "dev.json").read_text())[0]
    captioner, _, _ = load_captioner(pretrained_run, resolve_device("cpu"))
    assert {p.device.type for p in captioner.parameters()} == {"cpu"}
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu,retrieval", "--device", "cpu",
                            "--limit", "4", "--output", "dev-eval.json", "--overwrite"], capsys)
    assert code == 0, err
    assert "I2T-R@1" in json.loads((in_workspace / "dev-eval.json").read_text())["metrics"]


def test_dtype_bfloat16_runs_generation_and_the_scorer_in_bfloat16(pretrained_run, in_workspace, capsys, monkeypatch):
    import capalign.inference.generate as generate
    import capalign.inference.scorer as scorer
    import capalign.models.io as io

    seen: list[tuple[torch.dtype, torch.dtype]] = []  # (pixel values, vision parameters) at each encoder call

    def watched_load(*args, **kwargs):
        captioner, tokenizer, processor = real_load(*args, **kwargs)
        captioner.vision.register_forward_pre_hook(
            lambda module, _, inputs: seen.append((inputs["pixel_values"].dtype, next(module.parameters()).dtype)),
            with_kwargs=True)
        return captioner, tokenizer, processor

    real_load = io.load_captioner
    for module in (io, generate, scorer):  # caption imports it at call time, evaluate through these
        monkeypatch.setattr(module, "load_captioner", watched_load)
    torch.manual_seed(0)  # sampling: the tiny fixture's greedy captions are empty
    code, _, err = run_cli(["caption", str(IMAGE.parent), "--model", str(pretrained_run), "--dtype", "bfloat16",
                            "--temperature", "1.0", "--output", "bf16.jsonl", "--overwrite"], capsys)
    assert code == 0, err
    captions = [json.loads(line)["caption"] for line in (in_workspace / "bf16.jsonl").read_text().splitlines()]
    assert len(captions) == 3 and all(captions)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    seen.clear()
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", "bleu,retrieval", "--dtype", "bfloat16",
                            "--limit", "4", "--output", "bf16-eval.json", "--overwrite"], capsys)
    assert code == 0, err
    assert 0.0 <= json.loads((in_workspace / "bf16-eval.json").read_text())["metrics"]["I2T-R@1"] <= 1.0
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}


def test_dtype_auto_is_float32_on_cpu_and_the_training_precision_on_an_accelerator(pretrained_run):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, "bf16") == resolve_dtype("auto", cuda, "no") == torch.float32
    assert resolve_dtype("auto", cuda, "bf16") == torch.bfloat16 and resolve_dtype(None, cuda, "fp16") == torch.float16
    assert resolve_dtype("bfloat16", cpu, "no") == torch.bfloat16  # an explicit choice is honoured on the CPU
    captioner, _, _ = load_captioner(pretrained_run, cpu, "auto")
    assert {p.dtype for p in captioner.parameters()} == {torch.float32}


@pytest.mark.parametrize("command", ["caption", "evaluate", "compare"])
def test_bad_dtype_exits_2_with_one_line(command, pretrained_run, in_workspace, capsys):
    args = {"caption": ["caption", str(IMAGE), "--model", str(pretrained_run)],
            "evaluate": ["evaluate", "--model", str(pretrained_run), "--metrics", "bleu", "--limit", "2"],
            "compare": ["compare", str(pretrained_run), str(pretrained_run), "--metrics", "bleu", "--limit", "2"]}[command]
    code, _, err = run_cli([*args, "--dtype", "bf16"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--dtype 'bf16' is not a dtype" in err
