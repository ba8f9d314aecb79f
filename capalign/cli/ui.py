"""Terminal output, owned by the command line alone: one rich console for tables and progress, stderr
for errors; `install()` makes it the library's reporter (capalign.reporting) and the handler of its
log records."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from capalign import reporting

# C0/C1 control characters (ESC starts terminal commands: clear screen, set title, ...) and the
# Unicode direction overrides; \n and \t stay as they are.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Untrusted text (captions, tokens from a model's vocabulary, file names) with its control
    characters written as visible escapes (`\\x1b`), so it cannot drive the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text)


class _Console(Console):
    """A rich Console whose `print` passes plain strings through `printable` (rich itself lets ESC
    through); capalign's own styling is markup, not control characters, so nothing of ours is lost."""

    def print(self, *objects, **kwargs) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = _Console()
err_console = _Console(stderr=True)
VERBOSE = False  # `capalign --verbose`: third-party output is shown (on stderr) instead of swallowed


def set_verbose(on: bool) -> None:
    global VERBOSE
    VERBOSE = bool(on)
    reporting.show_library_output(on)


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    """Print a simple table; floats are shown with 4 decimals."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")  # wrap long cells instead of cutting them
    for row in rows:
        table.add_row(*(f"{cell:.4f}" if isinstance(cell, float) else printable(str(cell)) for cell in row))
    console.print(table)


@contextmanager
def progress_bar(description: str, total: int | None, stderr: bool = False) -> Iterator[tuple[Progress, int]]:
    """A rich progress bar with an extra free-text field (`info`) for loss, lr and throughput; with
    `stderr`, drawn there (commands whose stdout is their result)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console if stderr else console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield progress, task


def warn(message: str) -> None:
    """One yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def print_missing(missing: dict[str, str], prefix: str = "") -> None:
    """Metrics that could not be computed, grouped by reason, on stderr."""
    by_reason: dict[str, list[str]] = {}
    for metric, reason in missing.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, metrics in by_reason.items():
        err_console.print(f"{prefix}{', '.join(metrics)} missing: {reason}", highlight=False, soft_wrap=True)


class _RichReporter:
    """capalign.reporting's Reporter for the terminal: rich bars and tables."""

    @contextmanager
    def progress(self, description: str, total: int | None, stderr: bool = False):
        with progress_bar(description, total, stderr=stderr) as (bar, task):
            def advance(completed: int | None = None, info: str | None = None) -> None:
                if completed is None and info is None:
                    bar.advance(task)
                else:
                    bar.update(task, **({} if completed is None else {"completed": completed}),
                               **({} if info is None else {"info": info}))
            yield advance

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        print_table(title, columns, rows)


class _ConsoleHandler(logging.Handler):
    """The library's log records (logger "capalign"): INFO on stdout, WARNING and above on stderr,
    as plain text (no markup is read from them)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = console if record.levelno < logging.WARNING else err_console
        target.print(record.getMessage(), markup=False, highlight=False, soft_wrap=True)


def install() -> None:
    """Route capalign.reporting's bars, tables and log records to this terminal (once per process)."""
    reporting.set_reporter(_RichReporter())
    logger = logging.getLogger("capalign")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
