"""How the library tells what it is doing, without owning a console.

Messages go through `logging` (logger "capalign"; progress notes at INFO, things the user should see
even when stdout is a result file at WARNING). Progress bars and result tables go to the installed
Reporter: the default one draws no bars and logs tables as plain text, so a notebook or a script gets
log records only; `capalign.cli` installs one that draws rich bars and tables.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

log = logging.getLogger("capalign")
log.addHandler(logging.NullHandler())  # no handler set up by the application: silence, not logging's stderr fallback

# advance(completed=None, info=None): set the bar to `completed` and/or its free-text field; with neither, one step more.
Advance = Callable[..., None]


class Reporter(Protocol):
    def progress(self, description: str, total: int | None, stderr: bool = False) -> contextlib.AbstractContextManager[Advance]:
        """A bar for one loop; `stderr`: the command's stdout is its result, draw it elsewhere."""

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        """A small result table (floats shown with 4 decimals)."""


class LoggingReporter:
    """The default: no bars; tables as one INFO record of plain text."""

    @contextmanager
    def progress(self, description: str, total: int | None, stderr: bool = False) -> Iterator[Advance]:
        yield lambda completed=None, info=None: None

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
        log.info("\n".join([title, " | ".join(columns), *(" | ".join(row) for row in cells)]))


_reporter: Reporter = LoggingReporter()
_show_library_output = False


def set_reporter(reporter: Reporter) -> None:
    """Install the application's reporter (capalign.cli does, at start-up)."""
    global _reporter
    _reporter = reporter


def progress(description: str, total: int | None, stderr: bool = False) -> contextlib.AbstractContextManager[Advance]:
    """`with progress("captioning", n) as advance: ... advance(done, info="loss 1.2")`."""
    return _reporter.progress(description, total, stderr)


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    """Report a result table through the installed reporter."""
    _reporter.table(title, columns, rows)


def show_library_output(on: bool) -> None:
    """Let what chatty libraries print reach stderr (`capalign --verbose`) instead of dropping it."""
    global _show_library_output
    _show_library_output = bool(on)


@contextmanager
def library_output() -> Iterator[None]:
    """Around calls into libraries that print to stdout (pycocoevalcap's `{'testlen': ...}`): what
    they print is dropped, or sent to stderr after show_library_output(True), so stdout holds only
    capalign's own output."""
    with contextlib.redirect_stdout(sys.stderr if _show_library_output else io.StringIO()):
        yield
