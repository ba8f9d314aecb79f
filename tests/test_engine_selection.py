"""Engine: best model by validation metric beside best by loss, early stopping, --select, trackers."""

import json

import pytest
import torch

from capalign.errors import CapalignError
from capalign.config import TrainConfig
from capalign.train.engine import Engine
from capalign.losses import diversity_loss
from capalign.train.selection import composite, parse_select


def _engine(tmp_path, losses, scores, patience=None, max_steps=8):
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    data = [torch.tensor([float(i), 1.0]) for i in range(8)]
    calls = {"n": 0}

    def validate(_module):
        i = calls["n"]
        calls["n"] += 1
        return {"val_loss": losses[i], "val_select": scores[i]}

    def save_best(_module, where):
        where.mkdir(parents=True, exist_ok=True)
        (where / "step.txt").write_text(str(engine.state.step))

    settings = TrainConfig(lr=0.01, batch_size=2, max_steps=max_steps, log_every=1, checkpoint_every=100,
                              eval_every=1, patience=patience)
    engine = Engine(module, lambda m, b: (m(b["x"]).pow(2).mean(), {}), data, lambda xs: {"x": torch.stack(xs)},
                    settings, tmp_path, validate=validate, save_best=save_best)
    return engine


def test_best_by_loss_and_best_by_metric_are_kept_separately(tmp_path):
    losses = [1.0, 0.8, 0.9, 0.7, 0.95, 0.96, 0.97, 0.98]
    scores = [0.1, 0.2, 0.5, 0.3, 0.4, 0.1, 0.1, 0.1]
    state = _engine(tmp_path, losses, scores).fit()
    assert (tmp_path / "best-loss" / "step.txt").read_text() == "4"  # val loss 0.7
    assert (tmp_path / "best-metric" / "step.txt").read_text() == "3"  # score 0.5
    assert json.loads((tmp_path / "best-metric" / "selection.json").read_text())["val_select"] == 0.5
    assert state.best_val_loss == 0.7 and state.best_metric == 0.5 and not state.stopped_early


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.6, 0.5, 0.4]
    state = _engine(tmp_path, losses, [0.0] * 8, patience=2).fit()
    assert state.stopped_early and state.step == 4  # 0.9 and 0.85 did not beat 0.8
    assert (tmp_path / "best-loss" / "step.txt").read_text() == "2"
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").glob("step-*"))


def test_select_composites_parse_and_bad_ones_fail_in_one_sentence():
    terms = parse_select("cider+0.5*bleu4")
    assert terms == [(1.0, "CIDEr"), (0.5, "BLEU-4")]
    assert composite(terms, {"CIDEr": 0.8, "BLEU-4": 0.2}) == pytest.approx(0.9)
    assert parse_select("top10") == [(1.0, "top10")]
    with pytest.raises(CapalignError, match="cannot read"):
        parse_select("cider+wer")


def test_missing_tracker_package_is_a_user_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    settings = TrainConfig(lr=0.1, batch_size=2, max_steps=1, tracker="tensorboard")
    with pytest.raises(CapalignError, match="pip install tensorboard"):
        Engine(torch.nn.Linear(1, 1), None, [torch.zeros(1)] * 4, None, settings, tmp_path)


def test_diversity_term_is_low_for_different_and_high_for_identical_predictions():
    labels = torch.tensor([[1, 2, -100], [3, 4, 5]])
    same = torch.zeros(2, 3, 6)
    same[..., 1] = 5.0
    different = torch.zeros(2, 3, 6)
    different[0, :, 1] = 9.0
    different[1, :, 4] = 9.0
    assert diversity_loss(same, labels) > 0.99
    assert diversity_loss(different, labels) < 0.05
