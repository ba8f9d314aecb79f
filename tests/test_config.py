"""Configs: the example file matches the preset it documents, and bad values are refused."""

from pathlib import Path

import pytest

from capalign.config import build_config, to_dict
from capalign.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml"


def test_example_config_spells_out_the_tiny_preset():
    assert to_dict(build_config(None, EXAMPLE)) == to_dict(build_config("tiny"))


def test_flags_override_the_file_and_unknown_keys_are_refused(tmp_path):
    assert build_config(None, EXAMPLE, {"train": {"lr": 0.5}}).train.lr == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="train.learning_rate"):
        build_config(None, bad)
