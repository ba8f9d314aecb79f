"""What every metric module shares: metric names, how model-based metrics are computed
(MetricOptions) and the result type (EvaluationResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from capalign.config import CLIP_B32

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
CHUNK_IMAGES = 1024  # images a chunked metric (BLEU, ROUGE-L, CIDEr, CLIP-S) scores at a time
# Metrics that are a property of the whole set of captions, not a mean over images (no per-image score).
CORPUS_ONLY = {"Distinct-1", "Distinct-2", "Vocabulary"}
# Metrics where lower is better (used for win rates and report sorting).
LOWER_IS_BETTER = {"Hallucination", "CHAIR-s", "CHAIR-i", "Copied"}


@dataclass
class MetricOptions:
    """How the model-based metrics are computed.

    clip_scorer: an object with `embed_images(list[PIL]) -> Tensor[N,D]` and `embed_texts(list[str])`
    (L2-normalised), e.g. a capalign run's contrastive head; when given it replaces the CLIPModel named
    by `clip_model`, and `clip_model` is then only its display name.
    contrastive_scorer: the same kind of object, used for retrieval.
    """

    clip_model: str = CLIP_B32
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
    stats: dict[str, dict[str, Sequence[float]]] = field(default_factory=dict)

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
