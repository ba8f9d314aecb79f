"""capalign's Python API: `capalign.Captioner` (load a trained run, caption images, score image–text
pairs) and `capalign.evaluate` (what `capalign evaluate` runs).

Not to be confused with `capalign.models.captioner.Captioner`, the internal `torch.nn.Module` that
training uses (one module over the three architectures); the public `Captioner` here wraps that
module with its tokenizer and image processor and is what users hold. Both are importable from
`capalign` lazily, so `import capalign` stays cheap.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from capalign.config import CLIP_B32
from capalign.data.images import open_rgb
from capalign.devices import resolve_device
from capalign.distributed import process_state
from capalign.errors import ConfigError, InputError, MissingError
from capalign.evaluation.systems import (IMAGE_METRICS, OBJECT_METRICS, Scoring, Split, System, load_instances,
                                         load_split, load_system, references_split, score_system)
from capalign.inference.generate import DecodeOptions, ScoredCaption, caption_images, caption_images_scored
from capalign.inference.scorer import RunScorer
from capalign.metrics import RETRIEVAL_METRICS, EvaluationResult, parse_metrics
from capalign.model_card import record_evaluation
from capalign.models.io import load_captioner
from capalign.reporting import log
from capalign.runs import is_run_dir, resolve_model

__all__ = ["Captioner", "Evaluation", "ScoredCaption", "evaluate"]


def _to_image(item: Any) -> Image.Image:
    """A path, a PIL image, or a `datasets` Image value (decoded, or {"bytes"/"path"}) as an RGB image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, (str, Path)):
        if not Path(item).is_file():
            raise MissingError(f"{item} does not exist.")
        try:
            return open_rgb(Path(item))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if isinstance(item, dict) and (item.get("bytes") or item.get("path")):
        if item.get("bytes"):
            return Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        return _to_image(item["path"])
    raise InputError(f"cannot caption a {type(item).__name__}: give image paths, PIL images or a datasets Image column")


def _images(images: Any) -> tuple[list[Image.Image], bool]:
    """(RGB images, whether a single image was given)."""
    if isinstance(images, (str, Path, Image.Image, dict)):
        return [_to_image(images)], True
    return [_to_image(item) for item in images], False


class Captioner:
    """A trained capalign captioner, ready to caption images and (with a contrastive head) score them.

    >>> captioner = Captioner.from_pretrained("runs/demo/align")      # doctest: +SKIP
    >>> captioner.caption(["photo.jpg"], num_beams=3)                 # doctest: +SKIP
    ['a red circle on the left']

    The torch module is `self.module` (an internal `capalign.models.captioner.Captioner`), with
    `self.tokenizer` and `self.processor`.
    """

    def __init__(self, module, tokenizer, processor, source: str | Path | None = None):
        self.module, self.tokenizer, self.processor, self.source = module, tokenizer, processor, source
        self.module.eval()

    def __repr__(self) -> str:
        return f"Captioner({str(self.source)!r}, arch={self.module.arch!r}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @classmethod
    def from_pretrained(cls, run_folder_or_hub_id: str | Path, device: str | torch.device | None = None) -> "Captioner":
        """Load a finished run folder, a transformers captioner folder (VisionEncoderDecoder, BLIP, GIT,
        as save_pretrained writes it), or a Hub id of either (`owner/name`, downloaded through
        capalign.hub: offline and not cached it fails within seconds, one clear line). `device`: auto (the
        accelerator when present, else CPU), cpu, cuda, cuda:N or mps."""
        run_dir = resolve_model(Path(run_folder_or_hub_id).expanduser() if Path(run_folder_or_hub_id).expanduser().exists()
                                else run_folder_or_hub_id)
        module, tokenizer, processor = load_captioner(run_dir)
        return cls(module.to(resolve_device(device and str(device))), tokenizer, processor, source=run_folder_or_hub_id)

    def caption(self, images: Any, num_beams: int = 1, max_length: int | None = None, batch_size: int = 32,
                temperature: float = 0.0, return_scores: bool = False, *, top_k: int = 0, top_p: float = 1.0,
                repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, length_penalty: float = 1.0,
                min_new_tokens: int = 0, num_captions: int = 1) -> Any:
        """Caption image paths, PIL images or a `datasets` Image column (`dataset["image"]`).

        Returns a list of captions (one caption for a single image); with `num_captions` N > 1, a list
        of N captions per image (the N best beams, best first, with `num_beams` >= N; N samples with
        `temperature` > 0). With `return_scores=True`, each is a `ScoredCaption` (`.caption`,
        `.logprob` — the sequence log-probability —, `.tokens`, `.probs`). The decoding arguments are
        `capalign caption`'s options (`max_length` is --max-length, the most new tokens; see
        capalign.decoding.Decoding); a value out of range is a ConfigError naming it.
        """
        options = DecodeOptions(num_beams=num_beams, max_length=max_length, temperature=temperature, batch_size=batch_size,
                                top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, length_penalty=length_penalty,
                                min_new_tokens=min_new_tokens, num_captions=num_captions)
        pil, single = _images(images)
        if return_scores:
            out: list = caption_images_scored(self.module, self.tokenizer, self.processor, pil, options)
        else:
            out = caption_images(self.module, self.tokenizer, self.processor, pil, options)
        return out[0] if single else out

    def score(self, images: Any, texts: Iterable[str] | str, batch_size: int = 32) -> torch.Tensor:
        """Cosine similarities under the run's contrastive head: a [len(images), len(texts)] tensor
        (a run trained without a head raises an InputError)."""
        if self.module.head is None:
            raise InputError(f"{self.source} has no contrastive head (trained with contrastive_weight 0); "
                             "score() needs one — train with a contrastive weight above 0.")
        pil, _ = _images(images)
        texts = [texts] if isinstance(texts, str) else list(texts)
        scorer = RunScorer(self.module, self.tokenizer, self.processor, batch_size=batch_size)
        return scorer.embed_images(pil) @ scorer.embed_texts(texts).T


@dataclass
class Evaluation:
    """What `evaluate` returns: the scores (`result`: summary, per-image, scorers, missing), the
    system scored and what it was scored against."""

    result: EvaluationResult
    system: System
    data: str
    split: str
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.summary

    def to_json(self) -> dict:
        payload = self.result.to_json()
        payload.update({
            "system": {"label": self.system.label, "run": str(self.system.run_dir) if self.system.run_dir else None,
                       "results_file": str(self.system.results_file) if self.system.results_file else None},
            "data": {"data": self.data, "split": self.split, "images": len(self.system.captions)},
            "captions": self.system.captions,
        })
        report = self.system.id_report
        if report is not None and not report.ok:
            payload["id_report"] = {"missing": report.missing, "extra": report.extra, "duplicated": report.duplicated}
        return payload


def evaluate(model: str | Path | None = None, results: str | Path | None = None, *, data: str | None = None,
             split: str = "test", references: str | Path | None = None, metrics: str | list[str] | None = None,
             allow_partial: bool = False, clip_model: str = CLIP_B32, bertscore_model: str | None = None,
             bertscore_layer: int | None = None, instances: str | Path | None = None, num_beams: int = 1,
             max_length: int | None = None, batch_size: int = 64, device: str | None = None, dtype: str = "auto",
             limit: int | None = None, record: bool = True, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             length_penalty: float = 1.0, min_new_tokens: int = 0, num_captions: int = 1) -> Evaluation:
    """Score a run (`model`, captions generated for the split) or a COCO results file (`results`)
    against a prepared split's references (`data`, `split`), or against a references file alone
    (`references`: a COCO annotations file or `{id: [refs]}`; text metrics only — image-based metrics
    are reported missing, one line each). `metrics` is the `--metrics` text or a list of names;
    `dtype` the run's inference dtype (`--dtype`, see capalign.devices.resolve_dtype).
    The decoding arguments are Captioner.caption's (with `num_captions` > 1 the first caption of each
    image is scored). With `record`, a run's numbers are kept in its evaluations.json and model card. Under torchrun /
    accelerate launch each process captions its share of the split; the main process scores and
    records, the others return the captions with an empty result."""
    if model is not None and results is not None:
        raise ConfigError("give either --model or --results, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit} (leave it out to score the whole split).")
    decode = DecodeOptions(num_beams=num_beams, max_length=max_length, batch_size=batch_size, temperature=temperature,
                           top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                           no_repeat_ngram_size=no_repeat_ngram_size, length_penalty=length_penalty,
                           min_new_tokens=min_new_tokens, num_captions=num_captions)  # refuses bad values before any work
    names = parse_metrics(metrics if metrics is None or isinstance(metrics, str) else ",".join(metrics))
    notes: dict[str, str] = {}
    if references is not None:
        if results is None:
            raise ConfigError("--references scores a results file (--results FILE); to score a model, give --data instead")
        if data is not None:
            raise ConfigError("give either --references or --data, not both")
        the_split: Split = references_split(Path(references))
        for name in [n for n in names if n in IMAGE_METRICS | OBJECT_METRICS]:
            what = "the images" if name in IMAGE_METRICS else "each image's ground-truth objects"
            notes[name] = f"{name} needs {what}; --references gives text only (score with --data DIR, a prepared dataset)"
        names = [n for n in names if n not in notes]
        data_label, split_label = str(references), "references"
    else:
        the_split = load_split(data, split, limit, want_train="Copied" in names)
        data_label, split_label = data or "shapes", split
    if not the_split.references:  # scores over nothing would read as 0.0000
        where = f"{references}" if references is not None else f"split '{split}' of {data_label}"
        raise InputError(f"{where} holds no images to score; choose another --split or re-run `capalign fetch`.")
    system = load_system(model, Path(results) if results is not None else None, the_split, allow_partial=allow_partial,
                         num_beams=num_beams, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype,
                         captions_needed=not set(names) <= set(RETRIEVAL_METRICS), decode=decode)
    if not process_state().is_main_process:
        return Evaluation(EvaluationResult(), system, data_label, split_label, notes)
    scoring = Scoring(clip_model, bertscore_model, bertscore_layer, batch_size, device,
                      load_instances(Path(instances) if instances is not None else None), dtype=dtype)
    result = score_system(system, the_split, names, scoring) if names else EvaluationResult()
    result.missing.update(notes)
    if record and system.run_dir is not None and is_run_dir(system.run_dir) and limit is None and result.summary:
        # (a transformers captioner folder is the user's own: its README stays theirs)
        # after the scoring, not before: a read-only run folder (a shared model) still gets scored
        problem = record_evaluation(system.run_dir, data_label, split_label, len(system.captions), result.summary)
        if problem:
            log.warning(f"warning: the scores were not recorded in {system.run_dir}'s model card: {problem}")
    return Evaluation(result, system, data_label, split_label, notes)
