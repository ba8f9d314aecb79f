"""curves.png: one panel per family of quantities, rounds as vertical lines, bookkeeping not plotted."""

from __future__ import annotations

import json

from capalign.train.reports import curves_figure, plot_curves


def _dpo_records() -> list[dict]:
    records = []
    for step in range(1, 7):
        r = 1 if step <= 3 else 2
        records.append({"step": step, "round": r, "epoch": 0, "loss": 0.7 - 0.05 * step, "contrastive_loss": 2.0,
                        "rewards/chosen": 0.1 * step, "rewards/rejected": -0.1 * step, "rewards/margins": 0.2 * step,
                        "rewards/accuracies": 0.9, "logps/chosen": -20.0, "logps/rejected": -25.0, "lr": 1e-3,
                        "samples_per_s": 30.0})
        if step % 2 == 0:
            records.append({"step": step, "round": r, "eval_loss": 0.6, "eval_rewards/accuracies": 0.8, "val_loss": 0.6})
    return records


def _scst_records() -> list[dict]:
    return [{"step": s, "epoch": 0, "loss": 1.0, "reward/mean": 0.1 * s, "reward/std": 0.3, "advantage/mean": 0.0,
             "advantage/abs": 0.2, "kl": 0.01 * s, "length": 9.0, "lr": 1e-3, "samples_per_s": 8.0} for s in range(1, 5)] + [
        {"step": 4, "val_cider": 0.5, "val_length": 9.0}]


def _labels(fig) -> dict[str, set[str]]:
    return {ax.get_title(): {line.get_label() for line in ax.lines if not line.get_label().startswith("_")} for ax in fig.axes}


def test_dpo_curves_have_one_panel_per_family_and_rounds_as_lines():
    fig = curves_figure(_dpo_records())
    panels = _labels(fig)
    assert len(fig.axes) == 5  # validation, losses, accuracies, preference rewards, log-probs
    assert panels["preference rewards"] == {"rewards/chosen", "rewards/rejected", "rewards/margins"}
    assert panels["accuracies"] == {"rewards/accuracies"}
    assert panels["log-probs"] == {"logps/chosen", "logps/rejected"}
    assert panels["losses"] == {"loss", "contrastive_loss"}
    plotted = set().union(*panels.values())
    assert not plotted & {"round", "step", "epoch", "lr", "samples_per_s"}
    for ax in fig.axes:  # the round boundary, between steps 3 and 4, on every panel
        assert [tuple(line.get_xdata()) for line in ax.lines if line.get_label().startswith("_")] == [(3.5, 3.5)]


def test_scst_curves_show_reward_kl_and_length(tmp_path):
    fig = curves_figure(_scst_records())
    panels = _labels(fig)
    assert len(fig.axes) == 5
    assert panels["reward (SCST)"] == {"reward/mean", "reward/std", "advantage/mean", "advantage/abs"}
    assert panels["KL to the reference"] == {"kl"} and panels["validation"] == {"val_cider", "val_length"}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _scst_records()))
    plot_curves(metrics, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob("*.tmp.png"))
