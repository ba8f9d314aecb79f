"""`capalign push`: upload a finished run folder, with its model card, to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from capalign import ui
from capalign.runs import resolve_model


def push(
    run: Path = typer.Argument(..., help="Finished run folder to upload."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repo, owner/name (created if it does not exist)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
) -> None:
    """Upload a run folder (model, tokenizer, model card README.md; not checkpoints/) to the Hugging Face Hub."""
    from capalign.hub import push_run  # deferred: imports huggingface_hub and datasets

    run_dir = resolve_model(run)
    url = push_run(run_dir, repo_id, private=private)
    ui.console.print(f"Pushed {run_dir} to {url}")
