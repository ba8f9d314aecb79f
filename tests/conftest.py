"""Shared fixtures: a tiny shapes dataset and a tiny pretrained run, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Published examples with their authors' scores: ../shared/refdata beside the repository
# (CAPALIGN_REFDATA overrides it).
REFDATA = Path(os.environ.get("CAPALIGN_REFDATA", Path(__file__).resolve().parents[2] / "shared" / "refdata"))


def refdata(example: str) -> Path:
    """One published example's folder; the test is skipped, saying why, when the folder is absent."""
    folder = REFDATA / example
    if not folder.is_dir():
        pytest.skip(f"published examples not found at {folder}; set CAPALIGN_REFDATA to the refdata folder")
    return folder

TINY_MODEL = {
    "vision_hidden": 32,
    "vision_layers": 1,
    "decoder_hidden": 32,
    "decoder_layers": 1,
    "heads": 2,
    "patch_size": 16,
    "projection_dim": 16,
    "max_caption_tokens": 20,
}


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A folder with data/shapes (40 images) and a config for a very small, fast model."""
    from capalign.data.store import prepare_shapes

    root = tmp_path_factory.mktemp("workspace")
    prepare_shapes(root / "data" / "shapes", limit=40, seed=0)
    config = {"model": TINY_MODEL, "train": {"batch_size": 16, "log_every": 2, "eval_every": 4, "checkpoint_every": 4}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    """Run with the workspace as current directory, so runs/ and data/ resolve there."""
    monkeypatch.chdir(workspace)
    return workspace


@pytest.fixture(scope="session")
def pretrained_run(workspace) -> Path:
    """A finished pretrain run (8 steps) in the workspace."""
    from capalign.config import build_config
    from capalign.train.pretrain import pretrain

    old = Path.cwd()
    os.chdir(workspace)
    try:
        config = build_config(None, workspace / "tiny.yaml", {"train": {"max_steps": 8}})
        return workspace / pretrain(config, Path("runs/pretrain-fixture"))
    finally:
        os.chdir(old)
