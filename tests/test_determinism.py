"""Runs repeat bit for bit on one machine at a fixed thread count: what the README's determinism
statement rests on. Both runs happen in this process, so they share its thread count."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from capalign.config import build_config
from capalign.train.align import align
from capalign.train.pretrain import pretrain


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields, which legitimately differ between runs."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "second" not in k and "per_s" not in k} for r in records]


def _assert_identical(a: Path, b: Path) -> None:
    assert _records(a) == _records(b)
    weights_a, weights_b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    differing = [name for name in weights_a if not torch.equal(weights_a[name], weights_b[name])]
    assert not differing


def test_pretrain_and_align_repeat_bit_for_bit_at_a_fixed_thread_count(in_workspace):
    threads = torch.get_num_threads()
    pretrained = []
    for name in ("first", "second"):
        config = build_config(None, Path("tiny.yaml"), {"train": {"max_steps": 6, "seed": 3}})
        pretrained.append(in_workspace / pretrain(config, Path(f"runs/repeat-pretrain-{name}")))
    _assert_identical(*pretrained)

    aligned = []
    for name, model in zip(("first", "second"), pretrained):
        # auto pairs: the policy's sampled candidates, ranked, so sampling is covered too
        config = build_config(None, Path("tiny.yaml"), {"align": {"max_steps": 2, "batch_size": 8, "rounds": 1}})
        aligned.append(align(model, config, out=Path(f"runs/repeat-align-{name}")))
    _assert_identical(*aligned)
    assert json.loads((aligned[0] / "alignment_report.json").read_text()) == json.loads(
        (aligned[1] / "alignment_report.json").read_text())
    assert torch.get_num_threads() == threads
