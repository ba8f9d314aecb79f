"""Image–text scores with a run's own contrastive head: the scorer behind retrieval, `--clip-model
self` and the pair ranker's image–caption similarity."""

from __future__ import annotations

from pathlib import Path

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

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = pixel_values(self.processor, images[start : start + self.batch_size]).to(self.device)
            pooled = self.captioner.encode_images(pixels).pooler_output
            chunks.append(self.captioner.head.embed_image(pooled))
        return torch.cat(chunks).float()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.captioner.tokenize_texts(self.tokenizer, texts[start : start + self.batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            pooled = self.captioner.text_features(batch["input_ids"], batch["attention_mask"])
            chunks.append(self.captioner.head.embed_text(pooled))
        return torch.cat(chunks).float()


def load_scorer(run_dir: Path, device: torch.device | str | None = None,
                dtype: torch.dtype | str | None = None) -> RunScorer | None:
    """The run's contrastive scorer (on `device`, in `dtype`), or None when the run has no contrastive head."""
    captioner, tokenizer, processor = load_captioner(run_dir, device, dtype)
    if captioner.head is None:
        return None
    return RunScorer(captioner, tokenizer, processor)


def head_similarity(captioner, tokenizer, processor, images, candidates: list[list[str]]) -> list[list[float]] | None:
    """Cosine between each image and each of its candidates under the run's contrastive head."""
    if captioner.head is None:
        return None
    scorer = RunScorer(captioner, tokenizer, processor)
    image_emb = scorer.embed_images(images)
    flat = [c for cands in candidates for c in cands]
    text_emb = scorer.embed_texts(flat)
    owners = torch.tensor([i for i, cands in enumerate(candidates) for _ in cands])
    cosines = (image_emb[owners] * text_emb).sum(-1).tolist()
    out, start = [], 0
    for cands in candidates:
        out.append(cosines[start : start + len(cands)])
        start += len(cands)
    return out
