"""`capalign demo`: the whole job on the embedded default, as a user would type it."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from capalign.cli import ui

DEMO_METRICS = "bleu,meteor,rouge,cider,hallucination,diversity,retrieval"


def demo_steps(workdir: Path) -> list[tuple[str, list[str]]]:
    """The commands the demo runs, in order (each one is a plain `capalign` command line); a rerun
    replaces the demo's own earlier runs and outputs (`--overwrite`)."""
    pretrained, aligned = workdir / "pretrain", workdir / "align"
    examples = Path(__file__).resolve().parents[2] / "examples" / "images"
    steps = [
        ("fetch", ["fetch", "shapes"]),
        ("pretrain", ["pretrain", "--out", str(pretrained), "--overwrite"]),
        ("align", ["align", "--model", str(pretrained), "--beta", "0.1", "--out", str(aligned), "--overwrite"]),
    ]
    if examples.is_dir():
        steps.append(("caption", ["caption", str(examples), "--model", str(aligned), "--output", str(workdir / "examples.jsonl"), "--overwrite"]))
    for name, run in (("pretrained", pretrained), ("aligned", aligned)):
        steps.append((f"evaluate {name}", ["evaluate", "--model", str(run), "--metrics", DEMO_METRICS,
                                          "--output", str(workdir / f"eval-{name}.json"), "--overwrite"]))
    steps.append(("compare", ["compare", str(pretrained), str(aligned), "--metrics", DEMO_METRICS,
                               "--report", str(workdir / "report"), "--output", str(workdir / "compare.json"), "--overwrite"]))
    return steps


def demo(
    ctx: typer.Context,
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its runs and reports."),
) -> None:
    """fetch → pretrain → align → caption → evaluate → compare, on the embedded default."""
    from capalign.data.store import DEFAULT_DATA_ROOT, is_prepared  # deferred: imports datasets

    capalign = ctx.find_root().command  # every step goes through the same command line a user types
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name, args in demo_steps(workdir):
        if name == "fetch" and is_prepared(DEFAULT_DATA_ROOT / "shapes"):
            ui.console.rule("fetch: data/shapes is already prepared")
            continue
        ui.console.rule(f"capalign {' '.join(args)}")
        code = capalign.main(args=args, prog_name="capalign", standalone_mode=False)
        if code == 130:  # the step's Ctrl-C (typer returns it as a status): stop the whole demo
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            raise typer.Exit(code)
    ui.console.rule(f"demo finished in {time.perf_counter() - started:.0f} s; report: {workdir / 'report' / 'index.html'}")
