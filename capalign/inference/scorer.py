"""Image–text scores with a run's own contrastive head: the scorer behind retrieval, `--clip-model
self` and the pair ranker's image–caption similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from capalign.data.collate import pixel_values
from capalign.models.io import load_captioner


class RunScorer:
    """A run's own image–text scorer (its contrastive head on the captioner's features), with the
    interface the metrics use: L2-normalised `embed_images` / `embed_texts`, in float32 whatever the
    model's dtype."""

    def __init__(self, captioner, tokenizer, processor, batch_size: int = 64):
        self.captioner, self.tokenizer, self.processor, self.batch_size = captioner, tokenizer, processor, batch_size
        self.captioner.eval()
        self.device = next(captioner.parameters()).device

    def embed_images(self, images: list) -> torch.Tensor:
        return filled_rows(self._image_batches(images), len(images))

    @torch.no_grad()
    def _image_batches(self, images: list) -> Iterator[torch.Tensor]:
        for start in range(0, len(images), self.batch_size):
            pixels = pixel_values(self.processor, images[start : start + self.batch_size]).to(self.device)
            pooled = self.captioner.encode_images(pixels).pooler_output
            yield self.captioner.head.embed_image(pooled).float()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return filled_rows(self.embed_text_batches(texts), len(texts))

    @torch.no_grad()
    def embed_text_batches(self, texts: list[str]) -> Iterator[torch.Tensor]:
        """`embed_texts`, one batch of `batch_size` texts at a time (the same batches, so the same numbers)."""
        for start in range(0, len(texts), self.batch_size):
            batch = self.captioner.tokenize_texts(self.tokenizer, texts[start : start + self.batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            pooled = self.captioner.text_features(batch["input_ids"], batch["attention_mask"])
            yield self.captioner.head.embed_text(pooled).float()


def filled_rows(batches: Iterable[torch.Tensor], rows: int) -> torch.Tensor:
    """The batches' rows, in order, in one [rows, ...] tensor filled batch by batch (torch.cat would
    hold every batch beside the result: twice a corpus' embeddings)."""
    out, start = None, 0
    for batch in batches:
        if out is None:
            out = torch.empty((rows, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        out[start : start + batch.shape[0]] = batch
        start += batch.shape[0]
    if start != rows:
        raise ValueError(f"the batches held {start} rows, not {rows}")
    return out if out is not None else torch.empty(0)


def load_scorer(run_dir: Path, device: torch.device | str | None = None,
                dtype: torch.dtype | str | None = None) -> RunScorer | None:
    """The run's contrastive scorer (on `device`, in `dtype`), or None when the run has no contrastive head."""
    captioner, tokenizer, processor = load_captioner(run_dir, device, dtype)
    if captioner.head is None:
        return None
    return RunScorer(captioner, tokenizer, processor)


class PerCandidate:
    """One score per candidate caption of each image, held flat (float32) with each image's offset:
    `scores[i]` is image i's list of candidate scores."""

    def __init__(self, values: torch.Tensor, counts: list[int]):
        self.values = values
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> list[float]:
        return self.values[self.starts[i] : self.starts[i + 1]].tolist()


def head_similarity(captioner, tokenizer, processor, images, candidates: list[list[str]]) -> PerCandidate | None:
    """Cosine between each image and each of its candidates under the run's contrastive head. The
    image embeddings are kept; each batch of candidate texts is embedded, scored and dropped, so
    memory holds one number per candidate, not its embedding."""
    if captioner.head is None:
        return None
    scorer = RunScorer(captioner, tokenizer, processor)
    image_emb = scorer.embed_images(images)
    flat = [c for cands in candidates for c in cands]
    owners = torch.tensor([i for i, cands in enumerate(candidates) for _ in cands], dtype=torch.long)
    cosines, start = torch.empty(len(flat)), 0
    for text_emb in scorer.embed_text_batches(flat):
        end = start + len(text_emb)
        cosines[start:end] = (image_emb[owners[start:end]] * text_emb).sum(-1)
        start = end
    return PerCandidate(cosines, [len(cands) for cands in candidates])
