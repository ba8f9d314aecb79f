"""Configs: the example file matches the preset it documents, and bad values are refused."""

from pathlib import Path

import pytest

from capalign.config import build_config, load_config, save_config, to_dict
from capalign.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml"


def test_example_config_spells_out_the_tiny_preset():
    assert to_dict(build_config(None, EXAMPLE)) == to_dict(build_config("tiny"))


def test_flags_override_the_file_and_unknown_keys_are_refused(tmp_path):
    assert build_config(None, EXAMPLE, {"train": {"lr": 0.5}}).train.lr == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        build_config(None, bad)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_run_config_written_by_0_1_0_still_loads():
    """capalign-0.1.0.yaml is a resolved config as 0.1.0 saved it (no seal): clip-gpt2, scst, beta 0.2, lr 3e-4."""
    config = load_config(FIXTURES / "capalign-0.1.0.yaml")
    assert (config.model.preset, config.align.method, config.align.beta, config.train.lr) == ("clip-gpt2", "scst", 0.2, 3e-4)
    # 0.1.0 resolved scst with the preset's (DPO) schedule, which a resumed or later stage keeps
    dpo_schedule = {"lr": 1e-5, "batch_size": 8, "max_steps": None, "contrastive_weight": 0.5}
    assert to_dict(config) == to_dict(build_config("clip-gpt2", overrides={
        "align": {"beta": 0.2, "method": "scst", **dpo_schedule}, "train": {"lr": 3e-4}}))
    assert to_dict(build_config(base=config)) == to_dict(config)


def test_a_saved_config_cut_at_a_line_end_is_refused_not_filled_with_defaults(tmp_path):
    path = tmp_path / "capalign.yaml"
    save_config(build_config("clip-gpt2"), path)
    assert load_config(path).model.preset == "clip-gpt2"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))  # still valid YAML
    with pytest.raises(ConfigError, match="damaged or was edited"):
        load_config(path)
