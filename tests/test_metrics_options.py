"""How evaluate/compare pick scorers: a run's own contrastive head for retrieval and `--clip-model self`."""

from __future__ import annotations

import json

import pytest

import capalign.evaluation.systems as systems
from capalign.evaluation.systems import System, metric_options
from capalign.errors import ConfigError


def _run_dir(tmp_path, name="run-a"):
    run = tmp_path / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "pretrain", "finished": 1.0}))
    (run / "config.json").write_text("{}")
    return run


def test_run_head_used_for_retrieval_and_named_as_clip_scorer(tmp_path, monkeypatch):
    head = object()
    monkeypatch.setattr(systems, "load_scorer", lambda run_dir, device=None, dtype=None: head, raising=False)
    run = _run_dir(tmp_path)
    kwargs = dict(bertscore_model=None, bertscore_layer=None, batch_size=8, device=None, need_head=True)
    options = metric_options(System("run-a", {}, run_dir=run), clip_model="self", **kwargs)
    assert options.contrastive_scorer is head and options.clip_scorer is head
    assert options.clip_model == "contrastive head of capalign run run-a"
    other = _run_dir(tmp_path, "run-b")
    options = metric_options(System("file", {}, results_file=tmp_path / "r.json"), clip_model=str(other), **kwargs)
    assert options.clip_scorer is head and "run-b" in options.clip_model and options.contrastive_scorer is None
    with pytest.raises(ConfigError, match="self"):
        metric_options(System("file", {}, results_file=tmp_path / "r.json"), clip_model="self", **kwargs)
    monkeypatch.setattr(systems, "load_scorer", lambda run_dir, device=None, dtype=None: None, raising=False)
    options = metric_options(System("run-a", {}, run_dir=run), clip_model="openai/clip-vit-base-patch32", **kwargs)
    assert options.contrastive_scorer is None and "no contrastive head" in options.contrastive_missing
