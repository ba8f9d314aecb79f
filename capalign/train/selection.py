"""Best-model selection: the validation score behind `best-metric/` (`--select`): caption metrics
(CIDEr by default, or a weighted composite such as cider+0.5*bleu4) on greedy captions, or retrieval
top-K for contrastive-only models (seed 002)."""

from __future__ import annotations

import re

import numpy as np
import torch

from capalign import reporting
from capalign.errors import ConfigError
from capalign.inference.generate import DecodeOptions, caption_images
from capalign.inference.scorer import RunScorer
from capalign.metrics import evaluate_captions
from capalign.metrics.retrieval import recall_at_k

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
            raise ConfigError(f"--select {spec!r}: cannot read {part!r}; use metric names joined by + with optional "
                            f"weights, e.g. cider+0.5*bleu4 (metrics: {', '.join(SELECT_NAMES)}).")
        terms.append((float(match.group(1) or 1.0), name))
    return terms


def composite(terms: list[tuple[float, str]], values: dict[str, float]) -> float:
    """The weighted sum of the selection terms."""
    return sum(weight * values[name] for weight, name in terms)


def retrieval_topk(image_emb: torch.Tensor, text_emb: torch.Tensor, owner: list[int], ks=(1, 10, 100)) -> dict[str, float]:
    """Image→caption retrieval: the fraction of images with one of their own captions in the top K
    of all captions (seed 002's top-1/10/100 accuracy)."""
    i2t, _ = recall_at_k(image_emb.float().cpu().numpy(), text_emb.float().cpu().numpy(), np.array(owner))
    return {f"top{k}": float((i2t < k).mean()) for k in ks}


def validation_metric(split, tokenizer, processor, spec: str, n_images: int, max_tokens: int):
    """The selection score on the first `n_images` validation images: caption metrics (CIDEr by
    default; pycocoevalcap on greedy captions) or retrieval top-K for contrastive-only models."""
    terms = parse_select(spec)
    names = sorted({name for _, name in terms})
    if set(names) & RETRIEVAL and not set(names) <= RETRIEVAL:
        raise ConfigError(f"--select {spec}: combine caption metrics or retrieval top-K, not both.")
    rows = split.select(range(min(n_images, len(split))))
    images, ids, references = list(rows["image"]), [str(i) for i in rows["image_id"]], list(rows["captions"])

    def run(module) -> dict[str, float]:
        if set(names) <= RETRIEVAL:
            values = _retrieval(module, tokenizer, processor, images, references)
        else:
            captions = caption_images(module, tokenizer, processor, images, DecodeOptions(max_length=max_tokens))
            result = evaluate_captions(dict(zip(ids, captions)), dict(zip(ids, references)), names)
            missing = [n for n in names if n not in result.summary]
            if missing:
                reporting.log.warning(f"note: validation metric(s) {', '.join(missing)} unavailable: "
                                      + "; ".join(result.missing.get(n, "?") for n in missing))
                return {}
            values = {n: result.summary[n] for n in names}
        out = {f"val_{n}": v for n, v in values.items()}
        out["val_select"] = composite(terms, values)
        return out

    return run


def _retrieval(module, tokenizer, processor, images, references) -> dict[str, float]:
    scorer = RunScorer(module, tokenizer, processor)
    texts = [r for refs in references for r in refs]
    owner = [k for k, refs in enumerate(references) for _ in refs]
    result = retrieval_topk(scorer.embed_images(images), scorer.embed_texts(texts), owner)
    module.eval()
    return result
