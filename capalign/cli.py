"""The `capalign` command line: parse options, call the modules, print. No ML logic here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from capalign import ui
from capalign.errors import UserError

app = typer.Typer(
    help="Train, align, run and judge image captioners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars of saving, backend fallbacks) off the user's screen."""
    import logging

    import datasets
    import transformers

    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Removed shared tensor" on tied weights
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command()
def fetch(
    source: str = typer.Argument("shapes", help="shapes | flickr8k | flickr30k | coco | cc3m | cifar100-pairs | ultrafeedback | HF dataset id | local path"),
    out: Optional[Path] = typer.Option(None, help="Where to write the prepared dataset (default data/<source>)."),
    limit: Optional[int] = typer.Option(None, help="Number of images to keep."),
    seed: int = typer.Option(0, help="Seed for generation and splits."),
    images: Optional[Path] = typer.Option(None, help="Folder holding the images of a local annotation file."),
    image_size: int = typer.Option(256, help="Longest side of stored images (shapes: the image size, default 64)."),
    image_column: Optional[str] = typer.Option(None, help="Image column of a Hugging Face dataset."),
    caption_column: Optional[str] = typer.Option(None, help="Caption column of a Hugging Face dataset."),
    model: Optional[str] = typer.Option(None, help="Cache this model (name or path) for offline use instead."),
) -> None:
    """Prepare a dataset into capalign's on-disk format (or cache a model with --model)."""
    from capalign.data import store

    if model is not None:
        from capalign.data.importers import fetch_model

        ui.console.print(f"Model cached at {fetch_model(model)}")
        return
    if source == "shapes":
        if limit is not None and limit < 4:
            raise UserError(f"--limit must be at least 4 for shapes (one image per split), got {limit}.")
        target = out or store.DEFAULT_DATA_ROOT / "shapes"
        size = 64 if image_size == 256 else image_size
        dataset = store.prepare_shapes(target, limit=limit or store.SHAPES_DEFAULT_LIMIT, seed=seed, image_size=size)
        ui.print_table(f"shapes → {target}", ["split", "images", "captions"],
                       [[name, len(split), sum(map(len, split["captions"]))] for name, split in dataset.items()])
        return
    from capalign.data.importers import import_source

    target = out or store.DEFAULT_DATA_ROOT / Path(source).name.replace("/", "_")
    report = import_source(source, target, images=images, limit=limit, seed=seed, image_size=image_size,
                           image_column=image_column, caption_column=caption_column)
    ui.console.print(report.summary() if hasattr(report, "summary") else report)


def _overrides(**sections) -> dict:
    """Nested config overrides from CLI options, leaving out options the user did not give."""
    return {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()}


@app.command()
def pretrain(
    data: Optional[str] = typer.Option(None, help="Prepared dataset folder or source name (default shapes)."),
    preset: Optional[str] = typer.Option(None, help="Model preset (default tiny)."),
    config: Optional[Path] = typer.Option(None, help="YAML config file; flags override it."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/pretrain-<time>)."),
    epochs: Optional[int] = typer.Option(None),
    max_steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    mixed_precision: Optional[str] = typer.Option(None, help="no | fp16 | bf16"),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimiser step."),
    vision: Optional[str] = typer.Option(None, help="Vision encoder: Hugging Face name or local folder."),
    decoder: Optional[str] = typer.Option(None, help="Caption decoder (causal LM): Hugging Face name or local folder."),
    text_encoder: Optional[str] = typer.Option(None, help="Frozen CLIP text tower for caption features: name or folder."),
    arch: Optional[str] = typer.Option(None, help="cross-attention | prefix | contrastive"),
    freeze_vision: Optional[bool] = typer.Option(None, "--freeze-vision/--no-freeze-vision", help="Keep the vision encoder fixed (its features are cached)."),
    freeze_decoder: Optional[bool] = typer.Option(None, "--freeze-decoder/--no-freeze-decoder", help="Keep the decoder fixed (cross-attention layers still train)."),
    select: Optional[str] = typer.Option(None, help="Validation metric for best-metric/: cider (default), cider+0.5*bleu4, top1, none."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many validations without a lower validation loss."),
    tracker: Optional[str] = typer.Option(None, help="tensorboard | wandb (through accelerate)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    dry_run: bool = typer.Option(False, help="Build data, model and one batch; report sizes; do not train."),
) -> None:
    """Stage 1: captioning loss + image–text contrastive loss."""
    from capalign.config import build_config
    from capalign.train.pretrain import pretrain as run_pretrain

    if resume and out is None:
        raise UserError("--resume needs --out pointing at the interrupted run folder.")
    overrides = _overrides(train=dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                                      mixed_precision=mixed_precision, grad_accum=grad_accum, select=select,
                                      patience=patience, tracker=tracker),
                           model=dict(vision=vision, decoder=decoder, text_encoder=text_encoder, arch=arch,
                                      freeze_vision=freeze_vision, freeze_decoder=freeze_decoder))
    if data is not None:
        overrides["data"] = data
    run_dir = run_pretrain(build_config(preset, config, overrides), out, resume=resume, dry_run=dry_run)
    if not dry_run:
        ui.console.print(f"[green]Pretrained model written to {run_dir}")


@app.command()
def align(
    model: Optional[str] = typer.Option(None, help="Pretrained run folder (default: the latest pretrain run)."),
    data: Optional[str] = typer.Option(None, help="Dataset (default: the one the model was trained on)."),
    pairs: Optional[str] = typer.Option(None, help="Where pairs come from: auto."),
    beta: Optional[float] = typer.Option(None, help="Strength of the pull towards the reference (default 0.1)."),
    loss: Optional[str] = typer.Option(None, help="sigmoid | ipo | hinge | robust"),
    label_smoothing: Optional[float] = typer.Option(None, help="Robust / conservative DPO noise rate."),
    sft_weight: Optional[float] = typer.Option(None, help="Weight of a supervised loss on the chosen caption."),
    lora_rank: Optional[int] = typer.Option(None, help="Train rank-N LoRA adapters on the decoder only (0 = full tuning)."),
    rounds: Optional[int] = typer.Option(None, help="Iterative DPO: rounds of fresh on-policy pairs (default 1)."),
    lr: Optional[float] = typer.Option(None),
    epochs: Optional[int] = typer.Option(None),
    max_steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    config: Optional[Path] = typer.Option(None, help="YAML config file; flags override it."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/align-<time>)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Stage 2: DPO-family preference optimisation of caption generation."""
    from capalign.config import build_config
    from capalign.train.align import align as run_align
    from capalign.workspace import resolve_model

    if resume and out is None:
        raise UserError("--resume needs --out pointing at the interrupted run folder.")
    overrides = _overrides(align=dict(pairs=pairs, beta=beta, loss=loss, label_smoothing=label_smoothing,
                                      sft_weight=sft_weight, lora_rank=lora_rank, rounds=rounds, lr=lr, epochs=epochs, max_steps=max_steps,
                                      batch_size=batch_size))
    run_config = build_config(None, config, overrides)
    model_dir = resolve_model(model, kind="pretrain")
    run_dir = run_align(model_dir, run_config, data=data, out=out, resume=resume)
    ui.console.print(f"[green]Aligned model written to {run_dir}")


@app.command()
def caption(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Optional[str] = typer.Option(None, help="Run folder (default: the latest finished run)."),
    num_beams: int = typer.Option(1, help="Beam width (1 = greedy)."),
    max_length: int = typer.Option(24, help="Most new tokens per caption."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0 = no sampling)."),
    batch_size: int = typer.Option(64),
    output: Optional[Path] = typer.Option(None, help="Write captions to FILE.jsonl or FILE.json (COCO results)."),
) -> None:
    """Caption images with a trained model."""
    from capalign.generate import DecodeOptions, caption_images
    from capalign.images import collect_images
    from capalign.models.captioner import load_captioner
    from capalign.workspace import resolve_model

    if num_beams < 1 or max_length < 1 or temperature < 0 or batch_size < 1:
        raise UserError("--num-beams, --max-length and --batch-size must be at least 1 and --temperature at least 0.")
    if output is not None and output.suffix not in (".jsonl", ".json"):
        raise UserError(f"--output must end in .jsonl or .json, got {output.name}.")
    paths, images, skipped = collect_images(inputs)
    model_dir = resolve_model(model)
    captioner, tokenizer, processor = load_captioner(model_dir)
    options = DecodeOptions(num_beams=num_beams, max_length=max_length, temperature=temperature, batch_size=batch_size)
    captions = caption_images(captioner, tokenizer, processor, images, options)
    ui.print_table(f"captions by {model_dir}", ["image", "caption"], [[str(p), c] for p, c in zip(paths, captions)])
    for message in skipped:
        ui.err_console.print(f"skipped: {message}")
    if output is not None:
        write_captions(output, paths, captions)
        ui.console.print(f"Wrote {len(captions)} captions to {output}")


def write_captions(output: Path, paths: list[Path], captions: list[str]) -> None:
    """JSONL (image path + caption per line) or a COCO results file (image id = file stem)."""
    from capalign.workspace import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        text = "".join(json.dumps({"image": str(p), "caption": c}) + "\n" for p, c in zip(paths, captions))
    else:
        text = json.dumps([{"image_id": p.stem, "caption": c} for p, c in zip(paths, captions)], indent=1)
    atomic_write_text(output, text)


def _register_judge_commands() -> None:
    from capalign.commands import judge

    app.command("evaluate")(judge.evaluate)
    app.command("compare")(judge.compare)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its runs and reports."),
) -> None:
    """fetch → pretrain → align → caption → evaluate → compare, on the embedded default."""
    from capalign.demo import run_demo

    run_demo(workdir)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one stderr line and exit status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    _register_judge_commands()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="capalign", standalone_mode=False)
    except UserError as exc:
        ui.err_console.print(f"capalign: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except TyperException as exc:  # typer's own (vendored click) usage errors: bad option, bad value
        if exc.format_message():  # empty after `capalign` alone has printed the help
            ui.err_console.print(f"capalign: error: {exc.format_message()} (see --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
