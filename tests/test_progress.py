"""Long passes show counted progress: candidate sampling (images × decoding passes), the reference
log-prob pass (pairs), the frozen-feature cache (images) and captioning more than one batch (images,
on stderr)."""

from __future__ import annotations

from pathlib import Path

from capalign import ui
from capalign.data.store import load_prepared
from capalign.models.io import load_captioner
from capalign.pairs.dataset import PairBatchMaker, PairSet, make_pairs
from capalign.pairs.generated import sample_candidates
from capalign.train.align import attach_reference_logps
from capalign.train.feature_cache import cached_features


def test_sampling_reference_and_feature_cache_bars_count_to_the_end(pretrained_run, in_workspace, tmp_path, capsys):
    ui.install()  # the CLI's reporter draws the library's bars
    captioner, tokenizer, processor = load_captioner(pretrained_run)
    split = load_prepared("data/shapes")["train"]
    images = list(split["image"])
    capsys.readouterr()

    candidates = sample_candidates(captioner, tokenizer, processor, images[:5], samples=2, seed=0)
    out = capsys.readouterr().out
    assert len(candidates) == 5 and "sampling candidates" in out and "15/15" in out

    pairs = PairSet(split, make_pairs(split, captioner, tokenizer, processor, "corrupted", seed=0))
    attach_reference_logps(captioner, pairs, PairBatchMaker(tokenizer, processor, 20), batch_size=8, average=False)
    out = capsys.readouterr().out
    assert len(pairs.reference) == len(pairs) > 8 and f"{len(pairs)}/{len(pairs)}" in out

    store = cached_features(split, "train", captioner.vision, processor, keep_hidden=True, root=tmp_path, batch_size=8)
    out = capsys.readouterr().out
    assert store.computed and len(store) == len(split) and f"{len(split)}/{len(split)}" in out



def test_captioning_more_than_a_batch_counts_images_on_stderr_and_keeps_stdout_for_captions(pretrained_run, in_workspace, capsys):
    from test_cli import run_cli

    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    code, out, err = run_cli(["caption", str(images), "--model", str(pretrained_run), "--batch-size", "1"], capsys)
    assert code == 0, err
    assert "captioning" in err and "3/3" in err
    assert "3/3" not in out and all(image.name[:20] in out for image in images.iterdir())
