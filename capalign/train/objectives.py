"""Stage-1 objective terms beyond captioning + InfoNCE, and validation-metric selection.

Seed 003's CLIP-guided terms, each with its own weight (0 = off):
- cosine alignment: 1 - mean cosine similarity of each image embedding with its own caption's
  embedding (the contrastive head's projections; the caption side is a frozen CLIP text tower when
  the run has one, which is what makes it CLIP-guided);
- contrastive: the symmetric InfoNCE of the captioner (`contrastive_weight`);
- diversity: mean cosine similarity between different images' predicted word distributions (each
  caption's softmax averaged over its tokens), so that images do not all get the same caption.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from capalign import distributed
from capalign.errors import UserError


def cosine_alignment_loss(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """1 - mean cos(image_i, caption_i) over L2-normalised embeddings."""
    return 1 - (image_emb * text_emb).sum(dim=-1).mean()


def diversity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity of per-caption mean token distributions (gathered over
    processes, so the value is the single-process one)."""
    mask = (labels != -100).unsqueeze(-1).to(logits.dtype)
    probs = (logits.float().softmax(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    probs = F.normalize(distributed.gather(probs), dim=-1)
    n = probs.size(0)
    if n < 2:
        return probs.sum() * 0
    sims = probs @ probs.t()
    return (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))


# ---------------------------------------------------------------------------------------- selection

SELECT_NAMES = {
    "cider": "CIDEr", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "bleu": "BLEU-4",
    "meteor": "METEOR", "rouge": "ROUGE-L", "rougel": "ROUGE-L", "spice": "SPICE", "bertscore": "BERTScore-F1",
    "top1": "top1", "top10": "top10", "top100": "top100",
}
RETRIEVAL = {"top1", "top10", "top100"}


def parse_select(spec: str) -> list[tuple[float, str]]:
    """'cider+0.5*bleu4' → [(1.0, 'CIDEr'), (0.5, 'BLEU-4')]; higher composite is better."""
    terms = []
    for part in spec.replace(" ", "").lower().split("+"):
        match = re.fullmatch(r"(?:(\d+(?:\.\d*)?|\.\d+)\*)?([a-z0-9-]+)", part)
        name = match and SELECT_NAMES.get(match.group(2).replace("-", ""))
        if not name:
            raise UserError(f"--select {spec!r}: cannot read {part!r}; use metric names joined by + with optional "
                            f"weights, e.g. cider+0.5*bleu4 (metrics: {', '.join(SELECT_NAMES)}).")
        terms.append((float(match.group(1) or 1.0), name))
    return terms


def composite(terms: list[tuple[float, str]], values: dict[str, float]) -> float:
    return sum(weight * values[name] for weight, name in terms)


def retrieval_topk(image_emb: torch.Tensor, text_emb: torch.Tensor, owner: list[int], ks=(1, 10, 100)) -> dict[str, float]:
    """Image→caption retrieval: the fraction of images with one of their own captions in the top K
    of all captions (seed 002's top-1/10/100 accuracy)."""
    import numpy as np

    from capalign.metrics.retrieval import recall_at_k

    i2t, _ = recall_at_k(image_emb.float().cpu().numpy(), text_emb.float().cpu().numpy(), np.array(owner))
    return {f"top{k}": float((i2t < k).mean()) for k in ks}
