"""`capalign evaluate` and `capalign compare`: score systems against a prepared split's references."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from capalign.errors import UserError

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
IMAGE_METRICS = {"CLIPScore", "RefCLIPScore", "I2T-R@1", "I2T-R@5", "I2T-R@10", "T2I-R@1", "T2I-R@5", "T2I-R@10"}


@dataclass
class Split:
    """The references (and what else the metrics need) of one split of a prepared dataset."""

    dataset: Any
    references: dict[str, list[str]]
    objects: dict[str, list[dict]] | None
    train_captions: set[str] | None
    _images: dict[str, Any] | None = field(default=None, repr=False)

    def images(self) -> dict[str, Any]:
        if self._images is None:
            self._images = dict(zip(self.dataset["image_id"], self.dataset["image"]))
        return self._images


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
    from capalign.data.store import get_split, load_prepared

    dataset_dict = load_prepared(data)
    dataset = get_split(dataset_dict, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    text = dataset.select_columns([c for c in ("image_id", "captions", "objects") if c in dataset.column_names])
    ids = [str(i) for i in text["image_id"]]
    if len(set(ids)) != len(ids):
        raise UserError(f"split '{split}' has duplicated image_id values; re-prepare the dataset with `capalign fetch`")
    references = {i: list(c) for i, c in zip(ids, text["captions"])}
    empty = [i for i, c in references.items() if not c]
    if empty:
        raise UserError(f"{len(empty)} images of split '{split}' have no reference captions (e.g. {empty[0]})")
    objects = dict(zip(ids, text["objects"])) if "objects" in text.column_names else None
    train = None
    if want_train and "train" in dataset_dict and split != "train":
        train = {c for caps in dataset_dict["train"].select_columns(["captions"])["captions"] for c in caps}
    return Split(dataset, references, objects, train)


def load_system(spec: str | None, results: Path | None, split: Split, *, allow_partial: bool, num_beams: int,
                max_length: int | None, batch_size: int) -> System:
    """A results file (COCO format) or a capalign run (captions generated for the split)."""
    from capalign.metrics.results import load_results, match_ids

    path = Path(results) if results is not None else (Path(spec) if spec is not None else None)
    if path is not None and path.is_file():
        loaded = load_results(path)
        captions, report = match_ids(loaded, split.references, allow_partial=allow_partial, source=str(path))
        if loaded.skipped:
            _warn(f"{path}: skipped {loaded.skipped} records without an image_id and a caption string")
        if not report.ok:
            _warn(f"{path}: scoring {len(captions)} common images only; {report.describe()}")
        return System(path.stem, captions, results_file=path, id_report=report)
    if results is not None:
        raise UserError(f"results file {results} does not exist")
    if spec is not None and not Path(spec).exists():
        raise UserError(f"{spec} is neither a results file nor a capalign run folder")
    from capalign.generate import caption_split
    from capalign.workspace import resolve_model

    run_dir = resolve_model(spec)
    kwargs = {"num_beams": num_beams, "batch_size": batch_size}
    if max_length is not None:
        kwargs["max_length"] = max_length
    captions = {str(k): v for k, v in caption_split(run_dir, split.dataset, **kwargs).items()}
    return System(run_dir.name, captions, run_dir=run_dir)


def _load_head(run_dir: Path):
    """(the run's contrastive scorer with embed_images / embed_texts, or None; why it is None)."""
    from capalign.models.contrastive import load_scorer

    head = load_scorer(run_dir)
    return head, (None if head is not None else f"run {Path(run_dir).name} has no contrastive head")


def metric_options(system: System, *, clip_model: str, bertscore_model: str | None, bertscore_layer: int | None,
                   batch_size: int, device: str | None, need_head: bool):
    """MetricOptions for one system: its own head for retrieval, and for CLIPScore when asked
    (`--clip-model self` or a run folder)."""
    from capalign.metrics import MetricOptions
    from capalign.workspace import is_run_dir

    options = MetricOptions(clip_model=clip_model, bertscore_model=bertscore_model, bertscore_layer=bertscore_layer,
                            batch_size=batch_size, device=device)
    if system.run_dir is not None and need_head:
        options.contrastive_scorer, options.contrastive_missing = _load_head(system.run_dir)
        options.contrastive_name = f"contrastive head of capalign run {system.run_dir.name}"
    if clip_model == "self":
        if system.run_dir is None:
            raise UserError("--clip-model self needs a capalign run (a results file has no contrastive head)")
        head, why = (options.contrastive_scorer, None) if options.contrastive_scorer else _load_head(system.run_dir)
        if head is None:
            raise UserError(f"--clip-model self: {why}")
        options.clip_scorer, options.clip_model = head, f"contrastive head of capalign run {system.run_dir.name}"
    elif Path(clip_model).is_dir() and is_run_dir(Path(clip_model)):
        head, why = _load_head(Path(clip_model))
        if head is None:
            raise UserError(f"--clip-model {clip_model}: {why}")
        options.clip_scorer, options.clip_model = head, f"contrastive head of capalign run {Path(clip_model).name}"
    return options


def score_system(system: System, split: Split, metrics: list[str], options, instances):
    from capalign.metrics import evaluate_captions

    ids = sorted(system.captions)
    images = split.images() if IMAGE_METRICS & set(metrics) else None
    return evaluate_captions(
        system.captions, {i: split.references[i] for i in ids}, metrics,
        images=images, objects=split.objects, instances=instances, train_captions=split.train_captions,
        options=options,
    )


def _warn(message: str) -> None:
    from capalign.ui import err_console

    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def _print_missing(missing: dict[str, str], prefix: str = "") -> None:
    from capalign.ui import err_console

    by_reason: dict[str, list[str]] = {}
    for metric, reason in missing.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, metrics in by_reason.items():
        err_console.print(f"{prefix}{', '.join(metrics)} missing: {reason}", highlight=False, soft_wrap=True)


def _instances(path: Path | None):
    if path is None:
        return None
    from capalign.metrics.hallucination import load_coco_instances

    return load_coco_instances(path)


def evaluate(
    model: Optional[str] = typer.Option(None, "--model", help="Run folder (default: the latest run)."),
    results: Optional[Path] = typer.Option(None, "--results", help="COCO results file [{image_id, caption}] to score instead of a model."),
    data: Optional[str] = typer.Option(None, "--data", help="Prepared dataset folder or source name (default: shapes)."),
    split: str = typer.Option("test", "--split"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list or 'all' (bleu, meteor, rouge, cider, spice, bertscore, clipscore, refclipscore, retrieval, diversity, hallucination, chair)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write summary, per-image scores, scorers and captions as JSON."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Score the common ids when a results file does not cover the split exactly."),
    clip_model: str = typer.Option(DEFAULT_CLIP, "--clip-model", help="CLIPModel name or path for CLIPScore; 'self' or a run folder uses a capalign contrastive head."),
    bertscore_model: Optional[str] = typer.Option(None, "--bertscore-model", help="Model name or local path (default roberta-large, layer 17, rescaled)."),
    bertscore_layer: Optional[int] = typer.Option(None, "--bertscore-layer", help="Layer for --bertscore-model (required with a local path)."),
    instances: Optional[Path] = typer.Option(None, "--instances", help="COCO instances_*.json for CHAIR."),
    num_beams: int = typer.Option(1, "--num-beams"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images of the split."),
) -> None:
    """Score a model or a results file against a split's references."""
    from capalign.metrics import parse_metrics
    from capalign.ui import console, print_table

    if model is not None and results is not None:
        raise UserError("give either --model or --results, not both")
    names = parse_metrics(metrics)
    the_split = load_split(data, split, limit, want_train="Copied" in names)
    system = load_system(model, results, the_split, allow_partial=allow_partial, num_beams=num_beams,
                         max_length=max_length, batch_size=batch_size)
    options = metric_options(system, clip_model=clip_model, bertscore_model=bertscore_model,
                             bertscore_layer=bertscore_layer, batch_size=batch_size, device=device,
                             need_head=bool(IMAGE_METRICS & set(names)))
    result = score_system(system, the_split, names, options, _instances(instances))
    print_table(f"{system.label} on {data or 'shapes'}/{split} ({len(system.captions)} images)",
                ["metric", "value", "scorer"], [[m, v, result.scorers.get(m, "")] for m, v in result.summary.items()])
    _print_missing(result.missing)
    if output is not None:
        payload = result.to_json()
        payload.update({
            "system": {"label": system.label, "run": str(system.run_dir) if system.run_dir else None,
                       "results_file": str(system.results_file) if system.results_file else None},
            "data": {"data": data or "shapes", "split": split, "images": len(system.captions)},
            "captions": system.captions,
        })
        if system.id_report is not None and not system.id_report.ok:
            payload["id_report"] = {"missing": system.id_report.missing, "extra": system.id_report.extra,
                                    "duplicated": system.id_report.duplicated}
        _write_json(output, payload)
        console.print(f"wrote {output}")


def compare(
    systems: list[str] = typer.Argument(..., help="Run folders or COCO results files; the first is the baseline."),
    data: Optional[str] = typer.Option(None, "--data"),
    split: str = typer.Option("test", "--split"),
    metrics: Optional[str] = typer.Option("bleu,meteor,rouge,cider,bertscore,clipscore,refclipscore,hallucination", "--metrics"),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report (index.html, metrics.png, scores.json) here."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the comparison and per-image scores as JSON."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Compare on the ids all systems share."),
    clip_model: str = typer.Option(DEFAULT_CLIP, "--clip-model"),
    bertscore_model: Optional[str] = typer.Option(None, "--bertscore-model"),
    bertscore_layer: Optional[int] = typer.Option(None, "--bertscore-layer"),
    instances: Optional[Path] = typer.Option(None, "--instances"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples (and permutations) per metric."),
    seed: int = typer.Option(0, "--seed"),
    num_beams: int = typer.Option(1, "--num-beams"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device"),
    limit: Optional[int] = typer.Option(None, "--limit"),
) -> None:
    """Compare systems on the same images: 95% bootstrap CIs, paired p-values and win rates vs the first."""
    from capalign.compare import NOTES, compare_systems, rows_to_json
    from capalign.metrics import parse_metrics
    from capalign.ui import console, print_table

    if len(systems) < 2:
        raise UserError("compare needs at least two systems (run folders or results files)")
    if bootstrap < 100:
        raise UserError("--bootstrap must be at least 100")
    names = parse_metrics(metrics)
    the_split = load_split(data, split, limit, want_train="Copied" in names)
    loaded = [load_system(s, None, the_split, allow_partial=allow_partial, num_beams=num_beams,
                          max_length=max_length, batch_size=batch_size) for s in systems]
    labels = _unique_labels([s.label for s in loaded])
    common = set(the_split.references).intersection(*(s.captions for s in loaded))
    if any(len(s.captions) != len(common) for s in loaded):
        if not allow_partial:
            raise UserError(f"the systems do not cover the same images ({len(common)} shared); pass --allow-partial")
        _warn(f"comparing on the {len(common)} images all systems share")
    ids = sorted(common)
    for s in loaded:
        s.captions = {i: s.captions[i] for i in ids}
    inst = _instances(instances)
    results = {}
    for label, system in zip(labels, loaded):
        options = metric_options(system, clip_model=clip_model, bertscore_model=bertscore_model,
                                 bertscore_layer=bertscore_layer, batch_size=batch_size, device=device,
                                 need_head=bool(IMAGE_METRICS & set(names)))
        results[label] = score_system(system, the_split, names, options, inst)
        _print_missing(results[label].missing, prefix=f"{label}: ")
    rows = compare_systems(results, names, n_boot=bootstrap, n_perm=bootstrap, seed=seed, ids=ids)
    table = []
    for r in rows:
        ci = f"{r.ci_low:.3f}–{r.ci_high:.3f}" if r.ci_low is not None else "—"
        delta = "" if r.delta is None else f"{r.delta:+.4f}"  # its CI is in --output / the report
        p = "" if r.p_value is None else f"{r.p_value:.3f}"
        wtl = "" if r.win is None else f"{100 * r.win:.0f}/{100 * r.tie:.0f}/{100 * r.loss:.0f}"
        table.append([r.metric, r.system, r.value, ci, delta, p, wtl])
    print_table(f"{len(ids)} images of {data or 'shapes'}/{split}; baseline {labels[0]}",
                ["metric", "system", "value", "95% CI", f"Δ vs {labels[0]}", "p", "win/tie/loss %"], table)
    for note in NOTES:
        console.print(f"[dim]{note}[/dim]", highlight=False)
    payload = {
        "images": len(ids), "data": data or "shapes", "split": split, "baseline": labels[0], "notes": NOTES,
        "comparison": rows_to_json(rows),
        "systems": {label: {**results[label].to_json(), "captions": s.captions,
                            "source": str(s.run_dir or s.results_file)} for label, s in zip(labels, loaded)},
    }
    if output is not None:
        _write_json(output, payload)
        console.print(f"wrote {output}")
    if report is not None:
        from capalign.report import write_report

        primary = next((m for m in ("CIDEr", *names) if m in names and all(
            m in results[label].per_image.get(ids[0], {}) for label in labels)), None)
        page = write_report(report, rows, {label: s.captions for label, s in zip(labels, loaded)},
                            {i: the_split.references[i] for i in ids},
                            {label: results[label].per_image for label in labels},
                            images=the_split.images(), metric=primary,
                            title=f"capalign compare: {', '.join(labels)}")
        _write_json(Path(report) / "scores.json", payload)
        console.print(f"wrote {page}")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def _write_json(path: Path, payload: dict) -> None:
    from capalign.workspace import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, default=_json_default))


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
