"""`capalign caption`: caption image files and folders with a trained model."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from capalign import ui
from capalign.cli import options
from capalign.errors import UserError
from capalign.outputs import write_errors
from capalign.runs import atomic_write_text, resolve_model


def caption(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Optional[str] = typer.Option(None, help="Run folder (default: the latest finished run)."),
    num_beams: int = options.NUM_BEAMS,
    max_length: Optional[int] = options.MAX_LENGTH,
    temperature: float = typer.Option(0.0, help="Sampling temperature (0 = no sampling)."),
    batch_size: int = options.BATCH_SIZE,
    device: Optional[str] = options.DEVICE,
    dtype: str = options.DTYPE,
    output: Optional[Path] = typer.Option(None, help="Write captions to FILE.jsonl or FILE.json (COCO results; image_id is the file name without its suffix, or, for files sharing one, the path below their common folder without the suffix, kept when that is shared too)."),
    scores: bool = typer.Option(False, "--scores", help="Also print each token's probability and the caption's log-probability (JSONL output gets tokens, probs, logprob)."),
    overwrite: bool = options.OVERWRITE,
) -> None:
    """Caption images with a trained model (under torchrun / accelerate launch, each process captions its share)."""
    from capalign.data.images import collect_images  # deferred: the rest imports torch and transformers
    from capalign.inference.generate import DecodeOptions, caption_sharded  # deferred: imports torch and transformers
    from capalign.devices import resolve_device  # deferred: imports torch
    from capalign.distributed import process_state  # deferred: imports torch and accelerate
    from capalign.models.io import load_captioner  # deferred: imports torch and transformers

    options.refuse_overwrite(output, overwrite)
    decode = DecodeOptions(num_beams=num_beams, max_length=max_length, temperature=temperature, batch_size=batch_size)
    if output is not None and output.suffix not in (".jsonl", ".json"):
        raise UserError(f"--output must end in .jsonl or .json, got {output.name}.")
    paths, images, skipped = collect_images(inputs)
    model_dir = resolve_model(model)
    captioner, tokenizer, processor = load_captioner(model_dir, resolve_device(device), dtype)
    scored = caption_sharded(captioner, tokenizer, processor, images, decode, scored=True) if scores else None
    captions = [s.caption for s in scored] if scored else caption_sharded(captioner, tokenizer, processor, images, decode)
    if not process_state().is_main_process:  # under torchrun / accelerate launch the main process reports
        return
    ui.print_table(f"captions by {model_dir}", ["image", "caption"], [[str(p), c] for p, c in zip(paths, captions)])
    if scored:
        print_token_scores(paths, scored)
    for message in skipped:
        ui.err_console.print(f"skipped: {message}")
    if output is not None:
        write_captions(output, paths, captions, scored)
        ui.console.print(f"Wrote {len(captions)} captions to {output}")


def print_token_scores(paths: list[Path], scored) -> None:
    """One block per image: the sequence log-probability, then each token with its probability."""
    for path, s in zip(paths, scored):
        ui.console.print(f"{path}  log p = {s.logprob:.4f}  ({len(s.tokens)} tokens)", markup=False, highlight=False)
        ui.console.print("  " + "  ".join(f"{t} {p:.3f}" for t, p in zip(s.tokens, s.probs)), markup=False,
                         highlight=False, soft_wrap=True)


def write_captions(output: Path, paths: list[Path], captions: list[str], scored=None) -> None:
    """JSONL (image path + caption per line; with scores, tokens, probs and logprob) or a COCO results
    file (one distinct image id per file, see image_ids)."""
    with write_errors(output, option="--output"):
        output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        records = [{"image": str(p), "caption": c} for p, c in zip(paths, captions)]
        for record, s in zip(records, scored or []):
            record.update(tokens=s.tokens, probs=s.probs, logprob=s.logprob)
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        text = json.dumps([{"image_id": i, "caption": c} for i, c in zip(image_ids(paths), captions)], indent=1)
    atomic_write_text(output, text, option="--output")


def image_ids(paths: list[Path]) -> list[str]:
    """COCO image ids for image files: the file stem; for files sharing a stem (a/photo.png,
    b/photo.jpg), their path below the folder the sharing files have in common, without the suffix
    (a/photo, b/photo), or with it when that is shared too (photo.png, photo.jpg); the same file
    named twice gets -2, -3, ...: an id is never repeated."""
    stems = Counter(p.stem for p in paths)
    sharing = [p.resolve() for p in paths if stems[p.stem] > 1]
    common = Path(os.path.commonpath([p.parent for p in sharing])) if sharing else None

    def below(path: Path, keep_suffix: bool) -> str:
        rel = path.resolve().relative_to(common)
        return (rel if keep_suffix else rel.with_suffix("")).as_posix()

    ids = [p.stem if stems[p.stem] == 1 else below(p, False) for p in paths]
    shared = Counter(ids)
    ids = [below(p, True) if shared[i] > 1 else i for p, i in zip(paths, ids)]
    taken: set[str] = set()
    for n, i in enumerate(ids):
        copy = 1
        while ids[n] in taken:
            copy += 1
            ids[n] = f"{i}-{copy}"
        taken.add(ids[n])
    return ids
