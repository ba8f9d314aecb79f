"""CLIPScore and RefCLIPScore as defined by Hessel et al. 2021 (jmhessel/clipscore).

CLIP-S(c, v) = w * max(cos(E_c, E_v), 0), w = 2.5, text prompted with "A photo depicts ".
RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max_r cos(E_c, E_r), 0).
The scorer is any transformers `CLIPModel` (hub name from the local cache, or a path), or a capalign
run's contrastive head; `scorers` names which. This is not torchmetrics' `100 * cos` CLIPScore.
Written here (not a package) because jmhessel/clipscore is a script around OpenAI's `clip` package.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, CLIPModel

from capalign.errors import MissingError
from capalign.inference.scorer import filled_rows
from capalign.metrics.types import CHUNK_IMAGES, EvaluationResult, MetricOptions
from capalign.models import guard
from capalign.models.guard import NO_REMOTE_CODE

W = 2.5
PROMPT = "A photo depicts"
HINT = "pass a valid --clip-model folder"


class HFClipScorer:
    """L2-normalised image and text embeddings from a transformers CLIPModel."""

    def __init__(self, name_or_path: str, device: str | None = None, batch_size: int = 64):
        folder = Path(name_or_path).expanduser()
        if folder.is_dir():  # a folder the user gave: damaged or hostile is a one-line error, never "missing"
            guard.check_folder(folder, HINT)
            with guard.loading(folder, HINT):
                self.model = CLIPModel.from_pretrained(folder, local_files_only=True, **NO_REMOTE_CODE)
                self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True, **NO_REMOTE_CODE)
        else:
            try:
                self.model = CLIPModel.from_pretrained(name_or_path, local_files_only=True, **NO_REMOTE_CODE)
                self.processor = AutoProcessor.from_pretrained(name_or_path, local_files_only=True, **NO_REMOTE_CODE)
            except OSError:
                raise MissingError(
                    f"CLIP model '{name_or_path}' is not on this machine; run `capalign fetch --model {name_or_path}` "
                    "on a connected machine, or pass --clip-model PATH"
                ) from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = self.model.config.text_config.max_position_embeddings

    @staticmethod
    def _features(output: Any):
        return output if hasattr(output, "norm") else output.pooler_output  # transformers 5 returns an output

    def embed_images(self, images: list) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                chunks.append(self._features(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.processor.tokenizer(
                    texts[start : start + self.batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                out = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                chunks.append(self._features(out).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


@functools.lru_cache(maxsize=2)
def load_clip(name_or_path: str, device: str | None = None, batch_size: int = 64) -> HFClipScorer:
    """A cached HFClipScorer (MissingError, a FileNotFoundError, with a one-line message when the model is missing)."""
    return HFClipScorer(name_or_path, device, batch_size)


def clip_scores(
    image_emb: np.ndarray, cand_emb: np.ndarray, ref_emb: list[np.ndarray] | None = None, w: float = W
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-caption CLIP-S and (when reference embeddings are given) RefCLIP-S from unit vectors."""
    clip_s = w * np.clip(np.sum(image_emb * cand_emb, axis=1), 0, None)
    if ref_emb is None:
        return clip_s, None
    ref_s = np.array([max(float(np.max(refs @ c)), 0.0) for c, refs in zip(cand_emb, ref_emb)])
    denom = clip_s + ref_s
    refclip = np.divide(2 * clip_s * ref_s, denom, out=np.zeros_like(denom), where=denom > 0)
    return clip_s, refclip


def embed_image_ids(scorer, images, ids: list[str], batch_size: int) -> torch.Tensor:
    """The scorer's embeddings of `images[i]` for each id, decoding one scorer batch at a time, so
    that memory holds a batch of images, not the split (`images` may offer `many(ids)`, a batch
    decode, as capalign.data.store.SplitImages does)."""
    step = getattr(scorer, "batch_size", None) or batch_size  # the scorer's own batches: the same numbers
    take = getattr(images, "many", None) or (lambda chunk: [images[i] for i in chunk])
    return filled_rows((scorer.embed_images(take(ids[start : start + step])).float().cpu()
                        for start in range(0, len(ids), step)), len(ids))


def _prompted(prompt: str, text: str) -> str:
    return f"{prompt.rstrip()} {text}" if prompt else text


def _clip_chunk(scorer, images, ids: list[str], candidates: dict[str, str], references: dict[str, list[str]],
                prompt: str, with_references: bool, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """CLIP-S (and RefCLIP-S) of a chunk of images: only the chunk's embeddings are held."""
    image_emb = embed_image_ids(scorer, images, ids, batch_size).numpy().astype(np.float64)
    cand_emb = scorer.embed_texts([_prompted(prompt, candidates[i]) for i in ids]).cpu().numpy().astype(np.float64)
    ref_emb = None
    if with_references:
        flat = [_prompted(prompt, r) for i in ids for r in references[i]]
        all_refs = scorer.embed_texts(flat).cpu().numpy().astype(np.float64)
        bounds = np.cumsum([0] + [len(references[i]) for i in ids])
        ref_emb = [all_refs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return clip_scores(image_emb, cand_emb, ref_emb)


def score_clip(
    candidates: dict[str, str],
    references: dict[str, list[str]],
    images: dict[str, Any] | None,
    metrics: list[str],
    result: EvaluationResult,
    options: MetricOptions,
) -> None:
    """Fill CLIPScore / RefCLIPScore, or report them missing with a one-line reason."""
    ids = list(candidates)
    if not images or any(i not in images for i in ids):
        for m in metrics:
            result.missing[m] = f"{m} needs the images; none were given for {len([i for i in ids if i not in (images or {})])} captions"
        return
    if options.clip_scorer is not None:
        scorer, prompt = options.clip_scorer, options.clip_prompt or ""
        label = f"{options.clip_model} (capalign contrastive head, not CLIP)"
    else:
        try:
            scorer = load_clip(options.clip_model, options.device, options.batch_size)
        except FileNotFoundError as exc:
            for m in metrics:
                result.missing[m] = str(exc)
            return
        prompt = PROMPT if options.clip_prompt is None else options.clip_prompt
        label = f"CLIPModel {options.clip_model}"
    label += f", Hessel et al. 2021, w={W}, prompt {prompt!r}"
    step = getattr(scorer, "batch_size", None) or options.batch_size
    chunk = max(1, CHUNK_IMAGES // step) * step  # whole scorer batches: the same image and caption batches
    parts = [_clip_chunk(scorer, images, ids[start : start + chunk], candidates, references, prompt,
                         "RefCLIPScore" in metrics, options.batch_size) for start in range(0, len(ids), chunk)]
    clip_s = np.concatenate([c for c, _ in parts])
    refclip = np.concatenate([r for _, r in parts]) if "RefCLIPScore" in metrics else None
    for name, values in (("CLIPScore", clip_s), ("RefCLIPScore", refclip)):
        if name in metrics and values is not None:
            result.summary[name] = float(np.mean(values))
            result.add_per_image(name, dict(zip(ids, values.tolist())))
            result.scorers[name] = label

