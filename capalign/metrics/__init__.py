"""Caption metrics: one entry point, `evaluate_captions`, over the standard implementations.

Every metric returns a corpus score and, where the metric is defined per caption, per-image scores,
so that any number can be traced to its images. A metric that cannot be computed here (a model or a
download is missing, inputs it needs were not given) is reported in `missing` with a one-line reason;
nothing is substituted silently, and `scorers` names the implementation/model behind each number.
"""

from __future__ import annotations

from typing import Any

from capalign.errors import ConfigError
from capalign.metrics.bertscore import score_bertscore
from capalign.metrics.clipscore import score_clip
from capalign.metrics.coco import score_coco
from capalign.metrics.diversity import score_diversity
from capalign.metrics.hallucination import score_chair, score_hallucination
from capalign.metrics.retrieval import score_retrieval
from capalign.metrics.types import (
    CORPUS_ONLY,
    COCO_METRICS,
    DIVERSITY_METRICS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    RETRIEVAL_METRICS,
    EvaluationResult,
    MetricOptions,
)
from capalign.reporting import library_output

__all__ = ["CORPUS_ONLY", "LOWER_IS_BETTER", "METRIC_NAMES", "EvaluationResult", "MetricOptions", "evaluate_captions",
           "parse_metrics"]

DEFAULT_METRICS = "bleu,meteor,rouge,cider,spice,bertscore,clipscore,refclipscore,retrieval,diversity,hallucination"

_ALIASES: dict[str, list[str]] = {
    "bleu": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"],
    "rouge": ["ROUGE-L"],
    "cider-d": ["CIDEr"],
    "bertscore": ["BERTScore-F1"],
    "bert-score": ["BERTScore-F1"],
    "clip-s": ["CLIPScore"],
    "refclip-s": ["RefCLIPScore"],
    "retrieval": RETRIEVAL_METRICS,
    "recall": RETRIEVAL_METRICS,
    "i2t": RETRIEVAL_METRICS[:3],
    "t2i": RETRIEVAL_METRICS[3:],
    "diversity": DIVERSITY_METRICS,
    "distinct": ["Distinct-1", "Distinct-2"],
    "vocab": ["Vocabulary"],
    "chair": ["CHAIR-s", "CHAIR-i"],
    "coco": COCO_METRICS,
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "")


_LOOKUP: dict[str, list[str]] = {_key(n): [n] for n in METRIC_NAMES}
_LOOKUP.update({_key(n).replace("-", ""): [n] for n in METRIC_NAMES})  # bleu4, rougel, chairs
_LOOKUP.update({_key(k): v for k, v in _ALIASES.items()})


def parse_metrics(text: str | None) -> list[str]:
    """Turn `--metrics` text (`all`, or a comma list of names/aliases, any case) into metric names."""
    text = DEFAULT_METRICS if text is None or not text.strip() else text
    chosen: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        key = _key(part)
        names = METRIC_NAMES if key == "all" else _LOOKUP.get(key)
        if names is None:
            raise ConfigError(
                f"unknown metric '{part.strip()}'; choose from: all, {', '.join(METRIC_NAMES)} "
                f"(aliases: {', '.join(sorted(_ALIASES))})"
            )
        chosen.extend(n for n in names if n not in chosen)
    if not chosen:
        raise ConfigError("--metrics is empty; give e.g. 'cider,bleu' or 'all'")
    return [n for n in METRIC_NAMES if n in chosen]


def evaluate_captions(
    candidates: dict[str, str],
    references: dict[str, list[str]],
    metrics: list[str],
    *,
    images: dict[str, Any] | None = None,
    objects: dict[str, list[dict]] | None = None,
    instances: dict[str, list[str]] | None = None,
    train_captions: set[str] | None = None,
    options: MetricOptions | None = None,
) -> EvaluationResult:
    """Score `candidates` (image id -> caption) against `references` (image id -> captions).

    Ids must match (see `capalign.metrics.results.match_ids`). `images` feeds CLIPScore/retrieval,
    `objects` (shapes ground truth) feeds Hallucination, `instances` (COCO category names per image)
    feeds CHAIR, `train_captions` feeds Copied.
    """
    options = options or MetricOptions()
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if set(candidates) != set(references):
        raise ValueError("candidates and references must cover the same image ids")
    ids = sorted(candidates)
    candidates = {i: candidates[i] for i in ids}  # in id order; the captions themselves are not copied
    references = {i: references[i] for i in ids}
    result = EvaluationResult()
    wanted = set(metrics)

    with library_output():  # pycocoevalcap and friends print to stdout; shown only with --verbose
        if wanted & set(COCO_METRICS):
            score_coco(candidates, references, [m for m in COCO_METRICS if m in wanted], result)
        if "BERTScore-F1" in wanted:
            score_bertscore(candidates, references, result, options)
        if wanted & {"CLIPScore", "RefCLIPScore"}:
            score_clip(candidates, references, images, [m for m in ("CLIPScore", "RefCLIPScore") if m in wanted],
                       result, options)
        if wanted & set(RETRIEVAL_METRICS):
            score_retrieval(references, images, [m for m in RETRIEVAL_METRICS if m in wanted], result, options)
        if wanted & set(DIVERSITY_METRICS):
            score_diversity(candidates, train_captions, [m for m in DIVERSITY_METRICS if m in wanted], result)
        if "Hallucination" in wanted:
            score_hallucination(candidates, objects, result, options.hallucination_checker)
        if wanted & {"CHAIR-s", "CHAIR-i"}:
            score_chair(candidates, references, instances, [m for m in ("CHAIR-s", "CHAIR-i") if m in wanted], result)

    # Keep the requested order in the summary.
    result.summary = {m: result.summary[m] for m in metrics if m in result.summary}
    return result
