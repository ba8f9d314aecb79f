"""Where the frozen-feature cache lives (beside the dataset, or --cache-dir) and in which precision."""

from __future__ import annotations

import torch
from safetensors import safe_open

from capalign.data.store import load_prepared
from capalign.models.io import load_captioner
from capalign.train.feature_cache import cached_features


def test_cache_beside_the_dataset_or_at_cache_dir_in_the_training_precision(workspace, pretrained_run, tmp_path):
    split = load_prepared(workspace / "data" / "shapes")["validation"]
    captioner, _, processor = load_captioner(pretrained_run)
    full = cached_features(split, "validation", captioner.vision, processor, keep_hidden=True)
    assert full.folder.parent == (workspace / "data" / ".cache" / "features").resolve()
    half = cached_features(split, "validation", captioner.vision, processor, keep_hidden=True, root=tmp_path / "shared",
                           dtype=torch.bfloat16)
    assert half.computed and half.folder.parent == tmp_path / "shared" and half.folder.name != full.folder.name
    with safe_open(str(next(half.folder.glob("shard-*.safetensors"))), framework="pt") as shard:
        assert {shard.get_tensor(k).dtype for k in shard.keys()} == {torch.bfloat16}
    assert half.meta["bytes"] * 2 == full.meta["bytes"]
    for row in range(len(split)):
        a, b = full.row(row), half.row(row)
        assert all(b[k].dtype == torch.float32 and torch.allclose(b[k], a[k], rtol=2e-2, atol=2e-2) for k in a)
    again = cached_features(split, "validation", captioner.vision, processor, keep_hidden=True, root=tmp_path / "shared",
                            dtype=torch.bfloat16)
    assert not again.computed
