"""Reading the text files users hand us (caption, pairs, results, references and metadata files).

One policy, applied here only: files are read as UTF-8, a leading byte-order mark is dropped
(`utf-8-sig`), and anything else (Latin-1, UTF-16, binary) is refused with one line naming the file,
the first bad byte and its line, and the `iconv` command that converts it. Nothing is guessed: a
wrong guess would silently change the captions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from capalign.errors import InputError, MissingError

BOM = b"\xef\xbb\xbf"


def _not_utf8(path: Path, what: str, data: bytes, start: int, line: int) -> InputError:
    """The one-line error for undecodable bytes at offset `start` of `data` (on line `line`)."""
    byte = data[start]
    target = path.with_name(f"{path.stem}.utf8{path.suffix}")
    if b"\0" in data:
        return InputError(f"{what} {path} is not UTF-8 text (binary data or UTF-16 at line {line}); "
                          f"pass the right file, or convert UTF-16 with `iconv -f utf-16 -t utf-8 {path} > {target}`.")
    return InputError(f"{what} {path} is not UTF-8 text (byte 0x{byte:02X} at line {line}); "
                      f"convert it with `iconv -f latin1 -t utf-8 {path} > {target}` and pass {target}.")


def _cannot_read(path: Path, what: str, exc: OSError) -> InputError | MissingError:
    return (MissingError if isinstance(exc, FileNotFoundError) else InputError)(f"cannot read {what} {path}: {exc.strerror or exc}.")


def read_text(path: str | Path, what: str = "file") -> str:
    """The whole file as text (UTF-8, BOM dropped); an InputError naming the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _cannot_read(path, what, exc) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(BOM) if data.startswith(BOM) else 0)
        raise _not_utf8(path, what, data, offset, data.count(b"\n", 0, offset) + 1) from None


def read_json(path: str | Path, what: str = "file", remedy: str = "fix the file") -> object:
    """A whole JSON file (read as read_text does); a syntax error or nesting too deep for the parser
    is an InputError naming the file (and line and column) and `remedy`."""
    path = Path(path)
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); {remedy}.") from None
    except RecursionError:
        raise InputError(f"{what} {path}: JSON nested too deeply to read; {remedy}.") from None

def iter_lines(path: str | Path, what: str = "file") -> Iterator[str]:
    """Yield the file's lines (with their line endings, BOM dropped), streamed so memory stays flat;
    suitable for `csv.reader`. A line that is not UTF-8 is an InputError naming the file and line."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise _cannot_read(path, what, exc) from None
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                if number == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM):]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, what, raw, exc.start, number) from None
        except OSError as exc:
            raise _cannot_read(path, what, exc) from None


def is_text(value: object) -> bool:
    """True for a str that can be stored as UTF-8 (no lone surrogates such as a JSON "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def id_text(value: object) -> str | None:
    """An image id as a string: a non-empty str or an int (not a bool); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if is_text(value) and value.strip() and "\0" not in value:
        return value
    return None


def printable(value: object) -> str:
    """`str(value)` with lone surrogates escaped, safe to write as UTF-8 or to print."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
