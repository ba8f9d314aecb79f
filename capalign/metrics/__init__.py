"""Caption metrics: one entry point, `evaluate_captions`, over the standard implementations.

Every metric returns a corpus score and, where the metric is defined per caption, per-image scores,
so that any number can be traced to its images. A metric that cannot be computed here (a model or a
download is missing, inputs it needs were not given) is reported in `missing` with a one-line reason;
nothing is substituted silently, and `scorers` names the implementation/model behind each number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from capalign.errors import UserError

COCO_METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
RETRIEVAL_METRICS = ["I2T-R@1", "I2T-R@5", "I2T-R@10", "T2I-R@1", "T2I-R@5", "T2I-R@10"]
DIVERSITY_METRICS = ["Distinct-1", "Distinct-2", "Vocabulary", "Copied"]
METRIC_NAMES = (
    COCO_METRICS
    + ["BERTScore-F1", "CLIPScore", "RefCLIPScore"]
    + RETRIEVAL_METRICS
    + DIVERSITY_METRICS
    + ["Hallucination", "CHAIR-s", "CHAIR-i"]
)
# Metrics that are a property of the whole set of captions, not a mean over images (no per-image score).
CORPUS_ONLY = {"Distinct-1", "Distinct-2", "Vocabulary"}
# Metrics where lower is better (used for win rates and report sorting).
LOWER_IS_BETTER = {"Hallucination", "CHAIR-s", "CHAIR-i", "Copied"}

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
            raise UserError(
                f"unknown metric '{part.strip()}'; choose from: all, {', '.join(METRIC_NAMES)} "
                f"(aliases: {', '.join(sorted(_ALIASES))})"
            )
        chosen.extend(n for n in names if n not in chosen)
    if not chosen:
        raise UserError("--metrics is empty; give e.g. 'cider,bleu' or 'all'")
    return [n for n in METRIC_NAMES if n in chosen]


@dataclass
class MetricOptions:
    """How the model-based metrics are computed.

    clip_scorer: an object with `embed_images(list[PIL]) -> Tensor[N,D]` and `embed_texts(list[str])`
    (L2-normalised), e.g. a capalign run's contrastive head; when given it replaces the CLIPModel named
    by `clip_model`, and `clip_model` is then only its display name.
    contrastive_scorer: the same kind of object, used for retrieval.
    """

    clip_model: str = "openai/clip-vit-base-patch32"
    clip_prompt: str | None = None  # None: "A photo depicts" for CLIP models, "" for a capalign head
    clip_scorer: Any = None
    bertscore_model: str | None = None  # None: bert-score's English default (roberta-large, layer 17)
    bertscore_layer: int | None = None
    bertscore_baseline: str | None = None  # a baseline .tsv for rescaling a local model
    batch_size: int = 64
    device: str | None = None
    contrastive_scorer: Any = None
    contrastive_name: str | None = None
    contrastive_missing: str | None = None  # why there is no contrastive scorer, for the report
    hallucination_checker: Callable[[str, list[dict]], list[str]] | None = None


@dataclass
class EvaluationResult:
    """Scores of one system on one set of images.

    summary: metric -> corpus score. per_image: image id -> metric -> score. missing: metric -> reason.
    scorers: metric -> implementation/model used. details: extra per-image facts (e.g. hallucinated
    words). stats: per-image sufficient statistics for metrics whose corpus score is not a mean
    (BLEU: testlen, reflen, guess 1-4, correct 1-4), used to resample them exactly.
    """

    summary: dict[str, float] = field(default_factory=dict)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    scorers: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add_per_image(self, metric: str, scores: dict[str, float]) -> None:
        for image_id, value in scores.items():
            self.per_image.setdefault(image_id, {})[metric] = float(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.summary,
            "missing": self.missing,
            "scorers": self.scorers,
            "per_image": self.per_image,
            **({"details": self.details} if self.details else {}),
        }


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
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if set(candidates) != set(references):
        raise ValueError("candidates and references must cover the same image ids")
    ids = sorted(candidates)
    candidates = {i: candidates[i] for i in ids}
    references = {i: list(references[i]) for i in ids}
    result = EvaluationResult()
    wanted = set(metrics)

    if wanted & set(COCO_METRICS):
        from capalign.metrics.coco import score_coco

        score_coco(candidates, references, [m for m in COCO_METRICS if m in wanted], result)
    if "BERTScore-F1" in wanted:
        from capalign.metrics.bertscore import score_bertscore

        score_bertscore(candidates, references, result, options)
    if wanted & {"CLIPScore", "RefCLIPScore"}:
        from capalign.metrics.clipscore import score_clip

        score_clip(candidates, references, images, [m for m in ("CLIPScore", "RefCLIPScore") if m in wanted],
                   result, options)
    if wanted & set(RETRIEVAL_METRICS):
        from capalign.metrics.retrieval import score_retrieval

        score_retrieval(references, images, [m for m in RETRIEVAL_METRICS if m in wanted], result, options)
    if wanted & set(DIVERSITY_METRICS):
        from capalign.metrics.diversity import score_diversity

        score_diversity(candidates, train_captions, [m for m in DIVERSITY_METRICS if m in wanted], result)
    if "Hallucination" in wanted:
        from capalign.metrics.hallucination import score_hallucination

        score_hallucination(candidates, objects, result, options.hallucination_checker)
    if wanted & {"CHAIR-s", "CHAIR-i"}:
        from capalign.metrics.hallucination import score_chair

        score_chair(candidates, references, instances, [m for m in ("CHAIR-s", "CHAIR-i") if m in wanted], result)

    # Keep the requested order in the summary.
    result.summary = {m: result.summary[m] for m in metrics if m in result.summary}
    return result
