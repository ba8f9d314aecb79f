"""`capalign caption`: caption image files and folders with a trained model."""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from capalign.cli import ui
from capalign.cli import flags, options
from capalign.errors import ConfigError
from capalign.inference.caption_log import CaptionLog, finished_images
from capalign.outputs import write_errors
from capalign.runs import atomic_write_text, resolve_model


SCREENFUL = 20  # more images than this: a progress bar and a summary line instead of a row per image


NUM_CAPTIONS = ("Captions per image: the N best beams (N <= --num-beams) or N samples (--temperature > 0); JSONL lists "
                "them as \"captions\", \"caption\" is the first; a COCO .json keeps the first.")


@flags.with_flags(*options.DECODING, defaults=True, helps={"num_captions": NUM_CAPTIONS})
def caption(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Optional[str] = typer.Option(None, help="Run folder (default: the latest finished run)."),
    batch_size: int = options.BATCH_SIZE,
    device: Optional[str] = options.DEVICE,
    dtype: str = options.DTYPE,
    output: Optional[Path] = typer.Option(None, help="Write captions to FILE.jsonl (appended a batch at a time, so an interrupted run keeps what it finished; its settings go to FILE.jsonl.meta.json) or FILE.json (COCO results, written at the end; image_id is the file name without its suffix, or, for files sharing one, the path below their common folder without the suffix, kept when that is shared too)."),
    scores: bool = typer.Option(False, "--scores", help="Also print each token's probability and the caption's log-probability (JSONL output gets tokens, probs, logprob)."),
    table: bool = typer.Option(False, "--table", help=f"Print the captions as a table even for more than {SCREENFUL} images (with --output, more than that get a progress bar and a summary line)."),
    resume: bool = typer.Option(False, "--resume", help="Caption only the images not yet in --output FILE.jsonl (an interrupted run's), with the same settings; appends to it."),
    overwrite: bool = options.OVERWRITE,
    **given,
) -> None:
    """Caption images with a trained model (under torchrun / accelerate launch, each process captions its part of each batch)."""
    from capalign.data.images import ImageFiles, collect_images  # deferred: imports numpy and PIL
    from capalign.inference.generate import DecodeOptions  # deferred: imports torch and transformers
    from capalign.devices import resolve_device  # deferred: imports torch
    from capalign.models.io import load_captioner  # deferred: imports torch and transformers

    options.refuse_overwrite(output, overwrite or resume)  # --resume appends to the file it names
    decode = DecodeOptions(**options.decoding(given), batch_size=batch_size)
    if output is not None and output.suffix not in (".jsonl", ".json"):
        raise ConfigError(f"--output must end in .jsonl or .json, got {output.name}.")
    if resume and (output is None or output.suffix != ".jsonl"):
        raise ConfigError("--resume continues a --output FILE.jsonl; give that file (a COCO .json is written only at the end).")
    if resume and overwrite:
        raise ConfigError("give either --resume (keep FILE's captions) or --overwrite (replace them), not both.")
    paths, skipped = collect_images(inputs)
    model_dir = resolve_model(model)
    run = Run(model_dir, decode, output, scores, table or output is None or len(paths) <= SCREENFUL, skipped)
    done, keep = set(), None
    if resume and output.exists():
        done, keep = finished_images(output, run.settings())
    todo = [p for p in paths if str(p) not in done]
    captioner, tokenizer, processor = load_captioner(model_dir, resolve_device(device), dtype)
    run.go(captioner, tokenizer, processor, ImageFiles(todo), done, keep)


class Run:
    """One `caption` run after its checks: captions the images chunk by chunk (caption_chunks),
    and on the main process reports what is skipped as it is met, appends each chunk to a JSONL
    output, and at the end writes a COCO .json, prints the table (or a summary) and the scores."""

    def __init__(self, model_dir: Path, decode, output: Path | None, scores: bool, table: bool, skipped: list[str]):
        self.model_dir, self.decode, self.output, self.scores, self.table = model_dir, decode, output, scores, table
        self.skipped = list(skipped)

    def go(self, captioner, tokenizer, processor, images, done: set[str], keep: int | None) -> None:
        from capalign.data.images import Unreadable  # deferred: imports numpy and PIL
        from capalign.distributed import process_state  # deferred: imports torch and accelerate
        from capalign.inference.generate import caption_chunks  # deferred: imports torch and transformers

        self.decode.check_model(captioner)  # before the bar: a refusal is one line
        state = process_state()
        main = state.is_main_process
        if main:
            for message in self.skipped:
                self.skip(message)
            if done:
                ui.err_console.print(f"resuming: {len(done)} images already in {self.output}, {len(images)} to caption",
                                     markup=False, highlight=False, soft_wrap=True)
        chunks = caption_chunks(captioner, tokenizer, processor, images, self.decode, scored=self.scores)
        jsonl = self.output is not None and self.output.suffix == ".jsonl"
        kept: list[tuple[str, list]] = []  # (image, its captions) for the table, the scores or a COCO .json
        count, start = 0, 0
        bar = main and len(images) > self.decode.batch_size * state.num_processes
        with CaptionLog(self.output, self.settings(), keep) if (main and jsonl) else nullcontext() as log, \
                (ui.progress_bar("captioning", len(images), stderr=True) if bar else nullcontext((None, None))) as (progress, task):
            for chunk in chunks:
                paths = images.paths[start : start + len(chunk)]
                start += len(chunk)
                if not main:
                    continue
                finished = []
                for path, result in zip(paths, chunk):
                    if isinstance(result, Unreadable):
                        self.skip(result.message)
                    else:
                        finished.append((str(path), result))
                if log is not None and finished:
                    log.append([self.record(image, group) for image, group in finished])
                if self.table or not jsonl:  # a JSONL output alone keeps nothing here
                    kept.extend(finished)
                count += len(finished)
                if progress is not None:
                    progress.update(task, completed=start)
        if not main:  # under torchrun / accelerate launch the main process reports
            return
        self.report(kept, count, len(done))

    def skip(self, message: str) -> None:
        ui.err_console.print(f"skipped: {message}", markup=False, highlight=False, soft_wrap=True)

    def settings(self) -> dict:
        return {"model": str(Path(self.model_dir).resolve()), "scores": self.scores, "decoding": self.decode.settings()}

    def record(self, image: str, group: list) -> dict:
        """A JSONL line: image, caption (the first), with several the list "captions"; with scores,
        the first caption's tokens, probs and logprob (and every caption's "logprobs")."""
        texts = [item.caption if self.scores else item for item in group]
        record = {"image": image, "caption": texts[0]}
        if len(texts) > 1:
            record["captions"] = texts
        if self.scores:
            first = group[0]
            record.update(tokens=first.tokens, probs=first.probs, logprob=first.logprob)
            if len(group) > 1:
                record["logprobs"] = [item.logprob for item in group]
        return record

    def report(self, kept: list[tuple[str, list]], count: int, before: int) -> None:
        texts = [[item.caption if self.scores else item for item in group] for _, group in kept]
        if self.table:
            ui.print_table(f"captions by {self.model_dir}", ["image", "caption"],
                           [[image, "\n".join(t)] for (image, _), t in zip(kept, texts)])
        if self.scores and self.table:
            print_token_scores([Path(image) for image, _ in kept], [group[0] for _, group in kept])
        if self.output is None:
            return
        if self.output.suffix == ".json":
            write_results(self.output, [Path(image) for image, _ in kept], [t[0] for t in texts])
        already = f" ({before} were there already)" if before else ""
        ui.console.print(f"Wrote {count} captions to {self.output}{already}", markup=False, highlight=False)


def print_token_scores(paths: list[Path], scored) -> None:
    """One block per image: the sequence log-probability, then each token with its probability."""
    for path, s in zip(paths, scored):
        ui.console.print(f"{path}  log p = {s.logprob:.4f}  ({len(s.tokens)} tokens)", markup=False, highlight=False)
        ui.console.print("  " + "  ".join(f"{t} {p:.3f}" for t, p in zip(s.tokens, s.probs)), markup=False,
                         highlight=False, soft_wrap=True)


def write_results(output: Path, paths: list[Path], captions: list[str]) -> None:
    """A COCO results file (one distinct image id per file, see image_ids), written atomically."""
    with write_errors(output, option="--output"):
        output.parent.mkdir(parents=True, exist_ok=True)
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
