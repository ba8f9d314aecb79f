"""The `capalign` app: the commands (one module each, listed in COMMANDS) and the entry point; no ML logic.

Each command module imports only typer, rich and capalign's light modules at start-up; what pulls in
torch, transformers or datasets is imported inside the command, so `capalign --help` stays fast
(bench/bench_cli_startup.py measures it). Libraries are quietened only when a command actually runs
(`_runs_quietly`), never for --help.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading

import typer
from typer.exceptions import TyperException

from capalign.cli import ui
from capalign.cli.align import align
from capalign.cli.caption import caption
from capalign.cli.compare import compare
from capalign.cli.demo import demo
from capalign.cli.evaluate import evaluate
from capalign.cli.fetch import fetch
from capalign.cli.pretrain import pretrain
from capalign.cli.push import push
from capalign.errors import CapalignError

COMMANDS = [fetch, pretrain, align, caption, evaluate, compare, demo, push]

app = typer.Typer(
    help="Train, align, run and judge image captioners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global_options(
    verbose: bool = typer.Option(False, "--verbose", help="Show third-party libraries' output and warnings (on stderr)."),
) -> None:
    """Train, align, run and judge image captioners."""
    ui.set_verbose(verbose)


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars of saving, backend fallbacks) off the user's screen,
    unless --verbose."""
    import datasets  # deferred: slow to import, and only the commands that run models need it
    import transformers  # deferred: slow to import, as datasets

    if ui.VERBOSE:
        return
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Removed shared tensor" on tied weights
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _runs_quietly(command):
    """The command as registered: libraries are quietened when it runs (not when its --help is asked)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        _quiet_libraries()
        return command(*args, **kwargs)

    return run


for command in COMMANDS:
    app.command()(_runs_quietly(command))


INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one stderr line and exit status 2; Ctrl-C (anywhere outside the
    training loop, which checkpoints first) one line and 130; SIGTERM one line and 143."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ui.install()
    command = typer.main.get_command(app)
    received: list[int] = []
    try:
        with _sigterm_interrupts(received):
            code = command.main(args=argv, prog_name="capalign", standalone_mode=False)
        # Typer turns KeyboardInterrupt into Exit(130), and a command's typer.Exit(n) into n: returned here.
        if isinstance(code, int) and code:
            if code == INTERRUPTED:
                _interrupted(received)
            sys.exit(code)
    except KeyboardInterrupt:  # outside typer's own handling (option parsing, start-up)
        _interrupted(received)
    except CapalignError as exc:
        ui.err_console.print(f"capalign: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except TyperException as exc:  # typer's own (vendored click) usage errors: bad option, bad value
        if exc.format_message():  # empty after `capalign` alone has printed the help
            ui.err_console.print(f"capalign: error: {exc.format_message()} (see --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input where typer reads it
        _interrupted(received)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    finally:
        _leave_process_group()


def _interrupted(received: list[int]) -> None:
    """One line, and 130 for Ctrl-C (143 for SIGTERM)."""
    signum = received[0] if received else signal.SIGINT
    ui.err_console.print(f"capalign: interrupted ({signal.Signals(signum).name})", markup=False, highlight=False)
    sys.exit(128 + signum)


@contextlib.contextmanager
def _sigterm_interrupts(received: list[int]):
    """SIGTERM (a scheduler, `timeout`, `kill`) stops a command as Ctrl-C does, so its clean-up runs
    (temporary files removed) and it ends with one line; the training loop installs its own handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch, leave the process group before the interpreter exits: a
    gloo group torn down at exit can abort the process ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")  # only when a command loaded torch: --help stays light
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
