"""Frozen means computed once: a frozen vision encoder's outputs, cached on disk per image.

Key: the dataset split (its `datasets` fingerprint, name and length), the encoder (class and a hash
of its weights) and the preprocessing (the image processor's full config, hence the image size), and
whether token states are kept. The same key is reused by every epoch and every later pretraining
run on the same data with the same encoder (align does not use it: it trains from pixels). Each image
is encoded once, however many captions it has (ClipCap's feature script encodes it once per caption).

Layout: `<cache>/<key>/shard-00000.safetensors ...` (tensors `pooled` [n, D] and, for
cross-attention, `hidden` [n, L, D]) plus `meta.json`, written into a `.partial` folder and renamed
into place, so a crash never leaves a half cache that looks whole. `<cache>` is `--cache-dir`
(shared storage, for several machines), else `.cache/features` beside the dataset folder (for
`data/shapes`: `data/.cache/features`). Features are stored in the training precision (bfloat16 /
float16 under mixed precision: half the bytes; the key includes it) and read back as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from capalign import reporting
from capalign.data.collate import CaptionPairs, pixel_values
from capalign.distributed import main_process_first
from capalign.data.store import DEFAULT_DATA_ROOT
from capalign.models.backbones import pooled, weights_digest

CACHE_ROOT = DEFAULT_DATA_ROOT / ".cache" / "features"  # for a split that was not read from disk
CACHE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # by --mixed-precision
SHARD_ROWS = 4096
IN_MEMORY_BYTES = 1 << 30


def cache_key(split, split_name: str, vision: torch.nn.Module, processor, keep_hidden: bool,
              dtype: torch.dtype = torch.float32) -> str:
    digest = hashlib.sha256()
    stored = [] if dtype == torch.float32 else [str(dtype)]  # float32 keys stay those of earlier caches
    for part in (getattr(split, "_fingerprint", ""), split_name, str(len(split)), type(vision).__name__,
                 weights_digest(vision), processor.to_json_string(), str(keep_hidden), *stored):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


class FeatureStore:
    """Read access to one cached split: `rows(indices)` → {"vision_pooled": ..., "vision_hidden": ...}."""

    def __init__(self, folder: Path, computed: bool):
        self.folder, self.computed = Path(folder), computed
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.shards = sorted(self.folder.glob("shard-*.safetensors"))
        self._memory: dict[str, torch.Tensor] | None = None
        if self.meta["bytes"] <= IN_MEMORY_BYTES:
            parts = [load_file(str(p)) for p in self.shards]
            self._memory = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        else:
            self._handles = [safe_open(str(p), framework="pt") for p in self.shards]

    def __len__(self) -> int:
        return self.meta["rows"]

    def row(self, index: int) -> dict[str, torch.Tensor]:
        names = {"pooled": "vision_pooled", "hidden": "vision_hidden"}
        if self._memory is not None:
            return {names[k]: v[index].float() for k, v in self._memory.items()}
        handle = self._handles[index // SHARD_ROWS]
        local = index % SHARD_ROWS
        return {names[k]: handle.get_slice(k)[local : local + 1][0].float() for k in handle.keys()}


@torch.no_grad()
def encode_split(split, vision: torch.nn.Module, processor, keep_hidden: bool, folder: Path, batch_size: int = 64,
                 dtype: torch.dtype = torch.float32) -> None:
    """Encode every image of `split` once (a progress bar counts them) and write the shards, in
    `dtype`, and meta.json into `folder`."""
    device = next(vision.parameters()).device
    was_training = vision.training
    vision.eval()
    folder.mkdir(parents=True, exist_ok=True)
    total_bytes, shard, buffer = 0, 0, {"pooled": [], "hidden": []}

    def flush() -> None:
        nonlocal shard, total_bytes, buffer
        tensors = {k: torch.cat(v) for k, v in buffer.items() if v}
        if tensors:
            save_file(tensors, str(folder / f"shard-{shard:05d}.safetensors"))
            total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            shard += 1
        buffer = {"pooled": [], "hidden": []}

    rows_in_buffer = done = 0
    with reporting.progress("caching features", len(split)) as advance:
        for start in range(0, len(split), batch_size):
            images = split[start : min(start + batch_size, len(split))]["image"]
            out = vision(pixel_values=pixel_values(processor, images).to(device))
            buffer["pooled"].append(pooled(out).to(dtype).cpu())
            if keep_hidden:
                buffer["hidden"].append(out.last_hidden_state.to(dtype).cpu())
            rows_in_buffer += len(images)
            if rows_in_buffer >= SHARD_ROWS:  # SHARD_ROWS is a multiple of any sane batch size
                flush()
                rows_in_buffer = 0
            done += len(images)
            advance(completed=done)
    flush()
    vision.train(was_training)
    (folder / "meta.json").write_text(json.dumps({"rows": len(split), "bytes": total_bytes, "keep_hidden": keep_hidden,
                                                  "dtype": str(dtype).removeprefix("torch.")}))


def default_root(split) -> Path:
    """`.cache/features` beside the folder of the prepared dataset `split` was read from."""
    files = getattr(split, "cache_files", None) or []
    if not files:
        return CACHE_ROOT
    return Path(files[0]["filename"]).resolve().parents[2] / ".cache" / "features"  # <root>/<dataset>/<split>/x.arrow


def cached_features(split, split_name: str, vision: torch.nn.Module, processor, keep_hidden: bool,
                    root: Path | str | None = None, batch_size: int = 64,
                    dtype: torch.dtype = torch.float32) -> FeatureStore:
    """The split's cached encoder outputs (under `root`, default beside the dataset; stored in
    `dtype`), computed now if no earlier run did."""
    root = Path(root).expanduser() if root else default_root(split)
    key = cache_key(split, split_name, vision, processor, keep_hidden, dtype)
    final = root / key
    computed = False
    with main_process_first():  # one process encodes; the others then read (however long it takes)
        if not (final / "meta.json").is_file():
            partial = root / f"{key}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            encode_split(split, vision, processor, keep_hidden, partial, batch_size, dtype)
            if (final / "meta.json").is_file():  # another run finished first
                shutil.rmtree(partial, ignore_errors=True)
            else:
                shutil.rmtree(final, ignore_errors=True)
                partial.rename(final)
            computed = True
    return FeatureStore(final, computed)


class CachedCaptionPairs(CaptionPairs):
    """Every (cached image features, reference caption) pair of a split, in CaptionPairs' order;
    images are never decoded."""

    def __init__(self, split, store: FeatureStore):
        super().__init__(split)
        self.store = store
        self.captions = list(split["captions"])

    def __getitem__(self, i: int):
        row, k = self.index[i]
        return self.store.row(row), self.captions[row][k]
