"""Systems to judge (a run folder or a COCO results file) and the split they are judged on: what
`capalign evaluate` and `capalign compare` share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capalign.data.store import SplitImages, get_split, load_prepared
from capalign.devices import resolve_device
from capalign.errors import ConfigError, InputError, MissingError
from capalign.inference.generate import caption_split
from capalign.inference.scorer import load_scorer
from capalign.metrics import MetricOptions, evaluate_captions
from capalign.metrics.hallucination import load_coco_instances
from capalign.metrics.results import load_references, load_results, match_ids
from capalign.reporting import log
from capalign.runs import is_run_dir, looks_like_hub_id, resolve_model

IMAGE_METRICS = {"CLIPScore", "RefCLIPScore", "I2T-R@1", "I2T-R@5", "I2T-R@10", "T2I-R@1", "T2I-R@5", "T2I-R@10"}
OBJECT_METRICS = {"Hallucination"}  # need each image's ground-truth objects (a prepared shapes split)


@dataclass
class Split:
    """The references (and what else the metrics need) of one split of a prepared dataset."""

    dataset: Any  # None for references read from a file (text only: no images, no objects)
    references: dict[str, list[str]]
    objects: dict[str, list[dict]] | None
    train_captions: set[str] | None

    def images(self) -> Mapping[str, Any]:
        """The split's images by id, decoded lazily (none for a references file)."""
        return {} if self.dataset is None else SplitImages(self.dataset)


@dataclass
class System:
    """Captions of one system, and where they came from."""

    label: str
    captions: dict[str, str]
    run_dir: Path | None = None
    results_file: Path | None = None
    id_report: Any = None


def load_split(data: str | None, split: str, limit: int | None, want_train: bool) -> Split:
    """A split's references, shapes objects (if any) and, when asked, the training captions."""
    dataset_dict = load_prepared(data)
    dataset = get_split(dataset_dict, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    text = dataset.select_columns([c for c in ("image_id", "captions", "objects") if c in dataset.column_names])
    ids = [str(i) for i in text["image_id"]]
    if len(set(ids)) != len(ids):
        raise InputError(f"split '{split}' has duplicated image_id values; re-prepare the dataset with `capalign fetch`")
    references = {i: list(c) for i, c in zip(ids, text["captions"])}
    empty = [i for i, c in references.items() if not c]
    if empty:
        raise InputError(f"{len(empty)} images of split '{split}' have no reference captions (e.g. {empty[0]})")
    objects = dict(zip(ids, text["objects"])) if "objects" in text.column_names else None
    train = None
    if want_train and "train" in dataset_dict and split != "train":
        train = {c for caps in dataset_dict["train"].select_columns(["captions"])["captions"] for c in caps}
    return Split(dataset, references, objects, train)


def references_split(path: Path) -> Split:
    """A text-only "split": the reference captions of a COCO annotations file or a {id: [refs]} JSON."""
    return Split(None, load_references(path), None, None)


def load_system(spec: str | None, results: Path | None, split: Split, *, allow_partial: bool, num_beams: int,
                max_length: int | None, batch_size: int, device: str | None = None, dtype: str | None = None,
                captions_needed: bool = True, decode=None) -> System:
    """A results file (COCO format) or a capalign run (captions generated for the split on `device`
    in `dtype`, see capalign.devices; none when only retrieval is asked for, which scores references,
    so that contrastive-only runs are judged too). `decode` (a DecodeOptions), when given, replaces the
    three decoding arguments."""
    path = Path(results) if results is not None else (Path(spec) if spec is not None else None)
    if path is not None and path.is_file():
        loaded = load_results(path)
        captions, report = match_ids(loaded, split.references, allow_partial=allow_partial, source=str(path))
        if loaded.skipped:
            log.warning(f"warning: {path}: skipped {loaded.skipped} records without an image_id and a caption string")
        if not report.ok:
            log.warning(f"warning: {path}: scoring {len(captions)} common images only; {report.describe()}")
        return System(path.stem, captions, results_file=path, id_report=report)
    if results is not None:
        raise MissingError(f"results file {results} does not exist")
    if spec is not None and not Path(spec).exists() and not looks_like_hub_id(spec):
        raise InputError(f"{spec} is neither a results file nor a model folder (capalign run or transformers captioner)")
    run_dir = resolve_model(spec)
    if not captions_needed:
        return System(run_dir.name, dict.fromkeys(split.references, ""), run_dir=run_dir)
    captions = caption_split(run_dir, split.dataset, num_beams=num_beams, max_length=max_length, batch_size=batch_size,
                             device=resolve_device(device), dtype=dtype, options=decode)
    captions = {str(k): v for k, v in captions.items()}
    return System(run_dir.name, captions, run_dir=run_dir)


def _load_head(run_dir: Path, device: str | None, dtype: str | None):
    """(the run's contrastive scorer with embed_images / embed_texts, or None; why it is None)."""
    head = load_scorer(run_dir, resolve_device(device), dtype=dtype)
    return head, (None if head is not None else f"run {Path(run_dir).name} has no contrastive head")


def metric_options(system: System, *, clip_model: str, bertscore_model: str | None, bertscore_layer: int | None,
                   batch_size: int, device: str | None, need_head: bool, dtype: str | None = None):
    """MetricOptions for one system: its own head for retrieval, and for CLIPScore when asked
    (`--clip-model self` or a run folder)."""
    options = MetricOptions(clip_model=clip_model, bertscore_model=bertscore_model, bertscore_layer=bertscore_layer,
                            batch_size=batch_size, device=device)
    if system.run_dir is not None and need_head:
        options.contrastive_scorer, options.contrastive_missing = _load_head(system.run_dir, device, dtype)
        options.contrastive_name = f"contrastive head of capalign run {system.run_dir.name}"
    if clip_model == "self":
        if system.run_dir is None:
            raise ConfigError("--clip-model self needs a capalign run (a results file has no contrastive head)")
        head, why = (options.contrastive_scorer, None) if options.contrastive_scorer else _load_head(system.run_dir, device, dtype)
        if head is None:
            raise InputError(f"--clip-model self: {why}")
        options.clip_scorer, options.clip_model = head, f"contrastive head of capalign run {system.run_dir.name}"
    elif Path(clip_model).is_dir() and is_run_dir(Path(clip_model)):
        head, why = _load_head(Path(clip_model), device, dtype)
        if head is None:
            raise InputError(f"--clip-model {clip_model}: {why}")
        options.clip_scorer, options.clip_model = head, f"contrastive head of capalign run {Path(clip_model).name}"
    return options


@dataclass
class Scoring:
    """How systems are scored: the model-based metrics' models and batch/device (and a run's head's
    dtype), CHAIR's instances."""

    clip_model: str
    bertscore_model: str | None
    bertscore_layer: int | None
    batch_size: int
    device: str | None
    instances: dict[str, list[str]] | None = None
    dtype: str | None = None


def score_system(system: System, split: Split, metrics: list[str], scoring: Scoring):
    """Every requested metric of one system on the split (images only when a metric needs them)."""
    needs_images = bool(IMAGE_METRICS & set(metrics))
    options = metric_options(system, clip_model=scoring.clip_model, bertscore_model=scoring.bertscore_model,
                             bertscore_layer=scoring.bertscore_layer, batch_size=scoring.batch_size,
                             device=scoring.device, need_head=needs_images, dtype=scoring.dtype)
    return evaluate_captions(
        system.captions, {i: split.references[i] for i in system.captions}, metrics,
        images=split.images() if needs_images else None, objects=split.objects, instances=scoring.instances,
        train_captions=split.train_captions, options=options,
    )


def load_instances(path: Path | None):
    """COCO instances (category names per image) for CHAIR, or None."""
    return None if path is None else load_coco_instances(path)
