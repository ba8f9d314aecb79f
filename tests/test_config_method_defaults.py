"""Method-specific stage-2 defaults: `align.method: scst` takes SCST's measured lr, batch size, steps
and contrastive weight wherever the user set none; a value the user set wins; DPO is unchanged."""

import json
from pathlib import Path

import pytest

from capalign import config as config_module
from capalign.config import build_config, load_config, save_config, to_dict
from test_cli import run_cli

KEYS = ("lr", "batch_size", "max_steps", "contrastive_weight")
SCST = (5e-4, 16, 800, 2.0)
TINY_DPO = (1e-3, 32, None, 0.5)  # the tiny preset's align section, else AlignConfig's


def _values(config) -> tuple:
    return tuple(getattr(config.align, key) for key in KEYS)


def _scst(**align):
    return {"align": {"method": "scst", **align}}


def test_scst_takes_its_own_defaults_and_a_flag_wins():
    assert _values(build_config(overrides=_scst())) == SCST
    assert _values(build_config(overrides=_scst(lr=1e-4))) == (1e-4, 16, 800, 2.0)
    assert _values(build_config(overrides=_scst(max_steps=None, contrastive_weight=0.0))) == (5e-4, 16, None, 0.0)
    # measured on tiny only: a real-backbone preset keeps its own step size and batch under SCST
    assert _values(build_config("clip-gpt2", overrides=_scst())) == (1e-5, 8, None, 0.5)


def test_a_config_file_value_wins_and_the_file_may_choose_the_method(tmp_path):
    file = tmp_path / "scst.yaml"
    file.write_text("align:\n  method: scst\n  lr: 2.0e-4\n")
    assert _values(build_config(None, file)) == (2e-4, 16, 800, 2.0)
    file.write_text("align:\n  batch_size: 12\n")
    assert _values(build_config(None, file, _scst())) == (5e-4, 12, 800, 2.0)
    assert _values(build_config(None, file, _scst(batch_size=24))) == (5e-4, 24, 800, 2.0)


def test_dpo_is_unchanged():
    assert _values(build_config()) == _values(build_config(overrides={"align": {"method": "dpo"}})) == TINY_DPO
    assert _values(build_config("clip-gpt2")) == (1e-5, 8, None, 0.5)
    assert _values(build_config(overrides={"align": {"lr": 3e-4}})) == (3e-4, 32, None, 0.5)


def test_from_a_pretrained_run_only_what_its_own_settings_changed_carries_over(tmp_path):
    plain = build_config()  # a pretrained run's resolved config: the preset's (DPO) align section
    assert _values(build_config(base=plain, overrides=_scst())) == SCST
    assert _values(build_config(base=plain)) == TINY_DPO
    file = tmp_path / "pretrain.yaml"
    file.write_text("align:\n  lr: 3.0e-4\n  contrastive_weight: 1.0\n")  # the pretrained run's own file
    chosen = build_config(None, file)
    assert _values(build_config(base=chosen, overrides=_scst())) == (3e-4, 16, 800, 1.0)
    assert _values(build_config(base=chosen, overrides=_scst(lr=1e-4))) == (1e-4, 16, 800, 1.0)
    file.write_text("align:\n  method: scst\n  batch_size: 8\n")  # a pretrained run that chose SCST
    assert _values(build_config(base=build_config(None, file))) == (5e-4, 8, 800, 2.0)


def test_a_resumed_run_keeps_every_value_it_resolved_even_if_defaults_change(tmp_path, monkeypatch):
    saved = tmp_path / "capalign.yaml"
    # lr 1e-3 is the tiny preset's DPO default: a value equal to a default of another method still stands
    first = build_config(overrides=_scst(lr=1e-3))
    save_config(first, saved)
    assert "lr: 0.001" in saved.read_text() and "max_steps: 800" in saved.read_text()
    monkeypatch.setitem(config_module.METHOD_DEFAULTS, "scst",
                        {"tiny": {"lr": 3e-4, "batch_size": 8, "max_steps": 50, "contrastive_weight": 1.0}})
    resumed = build_config(base=load_config(saved))
    assert to_dict(resumed) == to_dict(first) and _values(resumed) == (1e-3, 16, 800, 2.0)
    assert _values(build_config(overrides=_scst())) == (3e-4, 8, 50, 1.0)  # a new run takes the new defaults


def test_dpo_from_an_scst_run_takes_dpo_defaults_for_what_scst_chose_by_default():
    scst_run = build_config(overrides=_scst(lr=2e-4))
    assert _values(build_config(base=scst_run, overrides={"align": {"method": "dpo"}})) == (2e-4, 32, None, 0.5)


def test_the_align_help_shows_scst_defaults(capsys):
    from capalign.cli.align import METHOD_HELPS

    shown = {"lr": "5e-4", "batch_size": "16", "max_steps": "800", "contrastive_weight": "2", "sft_weight": "1"}
    assert {name: text.rsplit(": ", 1)[1] for name, text in METHOD_HELPS.items()} == {k: v + "." for k, v in shown.items()}
    code, out, _ = run_cli(["align", "--help"], capsys)
    text = " ".join(line.strip(" │") for line in out.splitlines())
    assert code == 0
    assert "Peak learning rate (AdamW, cosine schedule with warm-up). Default with --method scst (tiny preset): 5e-4." in text
    assert "Default with --method scst (tiny preset): 800." in text and "Default with --method scst (tiny preset): 16." in text


@pytest.mark.parametrize("args, expected", [
    ([], SCST[:1] + (4, 1) + SCST[3:]),
    (["--lr", "1e-4"], (1e-4, 4, 1, 2.0)),
])
def test_the_command_saves_scst_defaults_in_the_run_folder(pretrained_run, in_workspace, capsys, args, expected):
    out = Path("runs") / f"scst-defaults-{len(args)}"
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--method", "scst", "--batch-size", "4",
                            "--max-steps", "1", "--eval-every", "100", *args, "--out", str(out)], capsys)
    assert code == 0, err
    assert _values(load_config(out / "capalign.yaml")) == expected


def test_an_interrupted_scst_run_resumes_with_the_values_it_started_with(pretrained_run, in_workspace, capsys,
                                                                         monkeypatch):
    from stopping import interrupt_at_step

    out = in_workspace / "runs/scst-defaults-resumed"
    args = ["align", "--model", str(pretrained_run), "--method", "scst", "--batch-size", "4", "--max-steps", "2",
            "--checkpoint-every", "1", "--log-every", "1", "--eval-every", "100", "--out", str(out)]
    resume_normally = interrupt_at_step(monkeypatch, 1)
    code, _, _ = run_cli(args, capsys)
    assert code == 130 and not (out / "run.json").exists()
    assert _values(load_config(out / "capalign.yaml")) == (5e-4, 4, 2, 2.0)
    resume_normally()
    monkeypatch.setitem(config_module.METHOD_DEFAULTS, "scst",
                        {"tiny": {"lr": 3e-4, "batch_size": 8, "max_steps": 50, "contrastive_weight": 1.0}})
    code, _, err = run_cli(["align", "--model", str(pretrained_run), "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert _values(load_config(out / "capalign.yaml")) == (5e-4, 4, 2, 2.0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
