"""`capalign compare`: several systems on the same images, with uncertainty."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from capalign.cli import flags, options
from capalign.errors import ConfigError, InputError
from capalign.outputs import claim_output_dir, commit, write_errors
from capalign.runs import atomic_write_json
from capalign.cli.ui import console, print_missing, print_table, warn


@flags.with_flags(*options.DECODING, defaults=True, helps={"num_captions": "Decode N captions per image (see caption --num-captions) and compare the first."})
def compare(
    systems: list[str] = typer.Argument(..., help="Run folders or COCO results files; the first is the baseline."),
    data: Optional[str] = options.DATA,
    split: str = options.SPLIT,
    metrics: Optional[str] = typer.Option("bleu,meteor,rouge,cider,bertscore,clipscore,refclipscore,hallucination", "--metrics"),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report (index.html, metrics.png, scores.json) into this new or empty folder (an earlier report there only with --overwrite)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the comparison and per-image scores as JSON."),
    overwrite: bool = options.OVERWRITE,
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Compare on the ids all systems share."),
    clip_model: str = options.CLIP_MODEL,
    bertscore_model: Optional[str] = options.BERTSCORE_MODEL,
    bertscore_layer: Optional[int] = options.BERTSCORE_LAYER,
    instances: Optional[Path] = options.INSTANCES,
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples (and permutations) per metric."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = options.BATCH_SIZE,
    device: Optional[str] = options.DEVICE,
    dtype: str = options.DTYPE,
    limit: Optional[int] = options.LIMIT,
    **given,
) -> None:
    """Compare systems on the same images: 95% bootstrap CIs, paired p-values and win rates vs the first."""
    from capalign.evaluation.stats import NOTES, compare_systems, rows_to_json  # deferred: imports numpy
    from capalign.evaluation.systems import (  # deferred: imports torch, transformers and datasets
        Scoring, load_instances, load_split, load_system, score_system)
    from capalign.distributed import process_state  # deferred: imports torch and accelerate
    from capalign.inference.generate import DecodeOptions  # deferred: imports torch and transformers
    from capalign.metrics import parse_metrics  # deferred: imports torch and pycocoevalcap

    options.refuse_overwrite(output, overwrite)
    decode = DecodeOptions(**options.decoding(given), batch_size=batch_size)
    claim = claim_output_dir(report, "report", overwrite=overwrite, option="--report") if report is not None else None
    if len(systems) < 2:
        raise ConfigError("compare needs at least two systems (run folders or results files)")
    if bootstrap < 100:
        raise ConfigError("--bootstrap must be at least 100")
    names = parse_metrics(metrics)
    the_split = load_split(data, split, limit, want_train="Copied" in names)
    loaded = [load_system(s, None, the_split, allow_partial=allow_partial, num_beams=decode.num_beams,
                          max_length=decode.max_length, batch_size=batch_size, device=device, dtype=dtype, decode=decode)
              for s in systems]
    labels = _unique_labels([s.label for s in loaded])
    common = set(the_split.references).intersection(*(s.captions for s in loaded))
    if any(len(s.captions) != len(common) for s in loaded):
        if not allow_partial:
            raise InputError(f"the systems do not cover the same images ({len(common)} shared); pass --allow-partial")
        warn(f"comparing on the {len(common)} images all systems share")
    ids = sorted(common)
    for s in loaded:
        s.captions = {i: s.captions[i] for i in ids}
    if not process_state().is_main_process:  # every process captioned its share; the main process scores
        return
    scoring = Scoring(clip_model, bertscore_model, bertscore_layer, batch_size, device, load_instances(instances), dtype=dtype)
    results = {}
    for label, system in zip(labels, loaded):
        results[label] = score_system(system, the_split, names, scoring)
        print_missing(results[label].missing, prefix=f"{label}: ")
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
        atomic_write_json(output, payload, option="--output")
        console.print(f"wrote {output}")
    if claim is not None:
        from capalign.evaluation.html_report import write_report  # deferred: imports matplotlib

        primary = next((m for m in ("CIDEr", *names) if m in names and all(
            m in results[label].per_image.get(ids[0], {}) for label in labels)), None)
        with write_errors(report, option="--report"):  # an earlier report is replaced once this one is complete
            where = claim.write_dir()
            write_report(where, rows, {label: s.captions for label, s in zip(labels, loaded)},
                         {i: the_split.references[i] for i in ids},
                         {label: results[label].per_image for label in labels},
                         images=the_split.images(), metric=primary,
                         title=f"capalign compare: {', '.join(labels)}")
            atomic_write_json(where / "scores.json", payload, option="--report")
            commit(where)
        console.print(f"wrote {Path(report) / 'index.html'}")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out
