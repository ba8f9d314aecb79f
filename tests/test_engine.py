"""The training engine: non-finite batches are skipped, and an interrupted run resumes exactly."""

import json
from pathlib import Path

import pytest
import torch

from capalign.config import build_config
from capalign.config import TrainConfig
from capalign.train.engine import Engine
from capalign.train.pretrain import pretrain

from stopping import interrupt_at_step


def test_nonfinite_batches_are_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    data = [torch.tensor([float(i), 1.0]) for i in range(8)]
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = model(batch["x"]).pow(2).mean()
        if calls["n"] == 2:
            loss = loss * float("nan")
        return loss, {}

    settings = TrainConfig(lr=0.1, batch_size=2, max_steps=3, log_every=1, checkpoint_every=100, eval_every=100)
    engine = Engine(module, loss_fn, data, lambda xs: {"x": torch.stack(xs)}, settings, tmp_path)
    before = [p.detach().clone() for p in module.parameters()]
    state = engine.fit()
    assert state.skipped_nonfinite == 1
    assert state.step == 3 and calls["n"] == 4  # four batches: one skipped, three applied
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_interrupted_run_resumes_to_the_same_final_loss(in_workspace, monkeypatch):
    config = build_config(None, Path("tiny.yaml"), {"train": {"max_steps": 8, "checkpoint_every": 4, "eval_every": 100}})
    pretrain(config, Path("runs/straight"))

    resume_normally = interrupt_at_step(monkeypatch, 4)
    with pytest.raises(SystemExit) as stopped:
        pretrain(config, Path("runs/interrupted"))
    assert stopped.value.code == 130
    assert (in_workspace / "runs/interrupted/checkpoints/latest.json").is_file()
    resume_normally()
    pretrain(config, Path("runs/interrupted"), resume=True)

    straight, resumed = _losses(in_workspace / "runs/straight"), _losses(in_workspace / "runs/interrupted")
    assert sorted(resumed) == sorted(straight)
    assert resumed[8] == pytest.approx(straight[8], rel=1e-5)


def test_training_runs_in_train_mode_even_when_the_module_arrives_in_eval_mode(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).eval()  # as from_pretrained leaves it
    modes = []

    def loss_fn(m, batch):
        modes.append(m.training)
        return m(batch["x"]).pow(2).mean(), {}

    data = [torch.ones(2) for _ in range(4)]
    settings = TrainConfig(lr=0.1, batch_size=2, max_steps=2, log_every=1, checkpoint_every=100, eval_every=100)
    Engine(module, loss_fn, data, lambda xs: {"x": torch.stack(xs)}, settings, tmp_path).fit()
    assert modes == [True, True]
