"""`capalign push`: upload a finished run folder, with its model card, to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from capalign.cli import ui
from capalign.errors import InputError, MissingError
from capalign.runs import is_run_dir, resolve_model


def push(
    run: Path = typer.Argument(..., help="Finished run folder to upload."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repo, owner/name (created if it does not exist)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
) -> None:
    """Upload a run folder (model, tokenizer, model card README.md; not checkpoints/) to the Hugging Face Hub."""
    from capalign.hub import push_run  # deferred: imports huggingface_hub and datasets
    from capalign.model_card import write_model_card  # deferred: imports the package version and yaml only for push

    if not Path(run).exists():
        raise MissingError(f"Run folder {run} does not exist.")
    run_dir = resolve_model(run)
    if not is_run_dir(run_dir):  # a transformers captioner folder is the user's own: no card is written into it
        raise InputError(f"{run} is not a capalign run folder; push uploads finished runs (their card is written first).")
    url = push_run(run_dir, repo_id, write_model_card, private=private)
    ui.console.print(f"Pushed {run_dir} to {url}")
