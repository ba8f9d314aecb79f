"""One settings schema: every field has a flag, a bad YAML value of any kind is one line naming the
field (exit 2, before anything is written), and a setting that cannot take effect is refused."""

import dataclasses
import inspect
import re

import pytest
import typer

from capalign.cli.align import FLAGS as ALIGN_FLAGS
from capalign.cli.main import app
from capalign.cli.pretrain import FLAGS as PRETRAIN_FLAGS
from capalign import config as config_module
from capalign.config import AlignConfig, ModelConfig, RunConfig, Schedule, TrainConfig, build_config
from capalign.errors import ConfigError
from capalign.schema import kind
from test_cli import run_cli

BAD_VALUES = [
    ('train:\n  lr: "abc"\n', "train.lr must be a number above 0 (got 'abc')"),
    ("train:\n  batch_size: 2.5\n", "train.batch_size must be positive"),
    ("train:\n  epochs: true\n", "train.epochs must be positive"),  # bool is an int subclass
    ("train:\n  lr: .nan\n", "train.lr must be a number above 0 (got nan)"),
    ("train:\n  grad_clip: .inf\n", "train.grad_clip must be a number above 0 (got inf)"),
    ("train:\n  log_every: 0\n", "train.log_every must be positive"),
    ("train:\n  grad_clip: -1\n", "train.grad_clip must be a number above 0 (got -1)"),
    ("align:\n  lr: 0\n", "align.lr must be a number above 0 (got 0)"),
    ("train:\n  seed: -3\n", "train.seed must be between 0 and 4294967295 (got -3)"),
    ("train:\n  warmup_ratio: 2\n", "train.warmup_ratio must be a number at least 0 and at most 1"),
    ("train:\n  mixed_precision: fp8\n", "train.mixed_precision must be one of no, fp16, bf16 (got 'fp8')"),
    ("train:\n  tracker: mlflow\n", "train.tracker must be one of tensorboard, wandb, or null"),
    ("model:\n  image_size: [64, 64]\n", "model.image_size must be positive: a whole number from 1 up (got a list)"),
    ("model:\n  vision: 12\n", "model.vision must be text, or null (got 12)"),
    ("align:\n  label_smoothing: 0.5\n", "align.label_smoothing must be a number at least 0 and below 0.5"),
    ("align:\n  disable_dropout: maybe\n", "align.disable_dropout must be true or false (got 'maybe')"),
    ("train:\n  learning_rate: 0.1\n", "Unknown config key 'train.learning_rate'; did you mean 'train.lr'?"),
    ("train:\n  l_r: 0.1\n", "did you mean 'train.lr'?"),
    ("train: [1, 2]\n", "train must be a mapping of settings (got a list)"),
    ("model: fast\n", "model must be a mapping of settings (got text)"),
    ("- lr\n- 0.1\n", "must hold a mapping of settings at the top level (got a list)"),
    ("train:\n  lr: 0.1\n lr: 2\n", "is not valid YAML"),
    ("align:\n  method: dpo\n  beta: 0\n", "align.beta must be positive (0 turns the KL pull off with align.method scst"),
    ("align:\n  num_samples: 1\n", "align.num_samples must be at least 2 with align.baseline mean"),
    ("align:\n  reward: bleu\n", "unknown term 'bleu'"),
    ("align:\n  method: [scst]\n", "align.method must be one of dpo, scst (got a list)"),
    ("model:\n  preset: [tiny]\n", "Unknown preset"),
]


def _one_line(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("text, message", BAD_VALUES)
def test_a_bad_yaml_value_exits_2_with_one_line_naming_the_field(in_workspace, capsys, text, message):
    (in_workspace / "bad.yaml").write_text(text)
    code, _, err = run_cli(["pretrain", "--config", "bad.yaml", "--out", "runs/bad"], capsys)
    assert message in _one_line(code, err)
    assert not (in_workspace / "runs/bad").exists()


def test_binary_and_non_utf8_config_files_are_one_line(in_workspace, capsys):
    for name, data in (("binary.yaml", bytes(range(256)) * 4), ("latin1.yaml", "train:\n  select: caf\xe9\n".encode("latin-1"))):
        (in_workspace / name).write_bytes(data)
        code, _, err = run_cli(["pretrain", "--config", name, "--out", "runs/bad"], capsys)
        assert name in _one_line(code, err)
    assert not (in_workspace / "runs/bad").exists()


def test_yaml_aliases_are_refused_before_they_expand(in_workspace, capsys):
    """The 466-byte 'billion laughs': nine levels of nine aliases each (9**9 strings once expanded)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [{','.join(['*' + prev] * 9)}]")
    (in_workspace / "bomb.yaml").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["pretrain", "--config", "bomb.yaml"], capsys)
    assert "no anchors or aliases" in _one_line(code, err) and "bomb.yaml" in err


def test_deeply_nested_yaml_is_one_line(in_workspace, capsys):
    (in_workspace / "deep.yaml").write_text("[" * 20000 + "]" * 20000 + "\n")
    code, _, err = run_cli(["pretrain", "--config", "deep.yaml"], capsys)
    assert "deep.yaml" in _one_line(code, err)


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(in_workspace, capsys):
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--mixed-precision", "fp16", "--device", "cpu",
                            "--out", "runs/fp16"], capsys)
    assert "fp16 needs a CUDA GPU" in _one_line(code, err)
    assert not (in_workspace / "runs/fp16").exists()


def test_the_library_stages_refuse_fp16_on_the_cpu_too(pretrained_run, tmp_path):
    """The Python API (capalign.train.pretrain / align) checks the precision itself, not only the CLI."""
    from capalign.train.align import align
    from capalign.train.pretrain import pretrain

    settings = build_config("tiny", overrides={"train": {"mixed_precision": "fp16", "device": "cpu"}})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        pretrain(settings, out=tmp_path / "pre")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        align(pretrained_run, settings, out=tmp_path / "aligned")
    assert not any(tmp_path.iterdir())


def test_a_flag_overrides_the_file_and_a_bad_flag_is_named_as_the_flag(in_workspace, capsys):
    (in_workspace / "lr.yaml").write_text("train:\n  lr: 0.5\n  grad_clip: 2\n")
    assert build_config(None, in_workspace / "lr.yaml", {"train": {"lr": 0.25}}).train.lr == 0.25
    code, _, err = run_cli(["pretrain", "--config", "lr.yaml", "--grad-clip", "-1", "--out", "runs/bad"], capsys)
    assert "--grad-clip must be a number above 0 (got -1.0)" in _one_line(code, err)
    code, _, err = run_cli(["pretrain", "--config", "lr.yaml", "--lr", "abc"], capsys)
    assert "Invalid value for '--lr'" in _one_line(code, err)


def _params(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


def _scalar_fields(cls):
    return [f for f in dataclasses.fields(cls) if kind(f)[0] is not None]


def test_every_setting_has_a_flag_with_its_help():
    pretrain, align = _params("pretrain"), _params("align")
    stage1 = [("", f) for f in _scalar_fields(RunConfig)] + [("model", f) for f in _scalar_fields(ModelConfig)] \
        + [("train", f) for f in _scalar_fields(TrainConfig)]
    stage2 = [("align", f) for f in _scalar_fields(AlignConfig)] \
        + [("train", f) for f in _scalar_fields(TrainConfig) if f.metadata["engine"]]
    for params, fields in ((pretrain, stage1), (align, stage2)):
        for _, f in fields:
            option = params[f.name]
            assert "--" + f.name.replace("_", "-") in option.opts or f.metadata.get("flag"), f.name
            assert f.metadata["help"] in option.help
    # today's flag spellings keep working
    assert "--keep-dropout" in align["disable_dropout"].secondary_opts
    assert "--no-freeze-vision" in pretrain["freeze_vision"].secondary_opts
    assert {flag.key for group in PRETRAIN_FLAGS for flag in group} >= {"train.lr", "model.preset", "data"}
    assert {flag.key for group in ALIGN_FLAGS for flag in group} >= {"align.lr", "train.mixed_precision"}


def test_the_help_lists_the_generated_flags(capsys):
    code, out, _ = run_cli(["pretrain", "--help"], capsys)
    assert code == 0 and "--keep-checkpoints" in out and "--max-caption-tokens" in out
    code, out, _ = run_cli(["align", "--help"], capsys)
    assert code == 0 and "--candidate-top-p" in out and "--grad-clip" in out


def test_no_setting_is_declared_twice_and_stage_defaults_hold():
    source = inspect.getsource(config_module)
    for f in dataclasses.fields(Schedule):
        assert len(re.findall(rf"^    {f.name}: ", source, re.M)) == 1, f.name
    assert (AlignConfig().lr, TrainConfig().lr, build_config("clip-gpt2").align.lr) == (5e-5, 1e-3, 1e-5)
    config = build_config("tiny", overrides={"align": {"lr": 0.02, "max_steps": 3}, "train": {"grad_clip": 0.5}})
    engine = config.align_engine(seed=7)
    assert (engine.lr, engine.max_steps, engine.grad_clip, engine.seed, engine.patience) == (0.02, 3, 0.5, 7, None)


def test_the_library_raises_config_errors():
    with pytest.raises(ConfigError, match="train.keep_checkpoints must be positive"):
        TrainConfig(keep_checkpoints=0)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    assert build_config("tiny", overrides={"train": {"mixed_precision": False}}).train.mixed_precision == "no"
