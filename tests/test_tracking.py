"""`--tracker tensorboard` writes real TensorBoard event files holding what metrics.jsonl holds."""

from __future__ import annotations

import json

import pytest

from test_cli import run_cli


def test_tensorboard_events_match_metrics_jsonl(in_workspace, capsys):
    pytest.importorskip("tensorboard", reason="the `tracking` extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "4", "--tracker", "tensorboard",
                              "--out", "runs/tb"], capsys)
    assert code == 0, err
    run = in_workspace / "runs" / "tb"
    events = sorted(run.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {run}"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert len(losses) >= 2
    read = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if "loss" in accumulator.Tags()["scalars"]:
            read.update({e.step: e.value for e in accumulator.Scalars("loss")})
    assert set(read) == set(losses)
    for step, loss in losses.items():
        assert read[step] == pytest.approx(loss, rel=1e-6)  # float32 in the event file
