"""One device policy: every command takes --device, honours cpu, and refuses a device that is not there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capalign.devices import resolve_device
from capalign.errors import UserError
from capalign.models.io import load_captioner
from test_cli import run_cli

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "red_circle.png"


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == resolve_device("auto").type == expected
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
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
