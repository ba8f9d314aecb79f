"""`caption --output FILE.jsonl` written as it goes: one JSON line per image, appended, flushed and
fsynced a batch at a time, so that an interrupted run (Ctrl-C, SIGTERM, even kill -9) keeps every
finished caption; and the settings that decided the captions, kept beside it in FILE.jsonl.meta.json
(a sidecar rather than a header line, so every line of FILE stays a caption record), so that
`--resume` continues only a file written with the same ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

from capalign.errors import OutputError
from capalign.outputs import write_errors
from capalign.runs import atomic_write_text

META_SUFFIX = ".meta.json"
COMPARED = ("model", "scores", "decoding")  # the sidecar's keys a resumed run must match


def meta_path(output: Path) -> Path:
    """The settings sidecar of a JSONL output: FILE.jsonl.meta.json."""
    return output.with_name(output.name + META_SUFFIX)


def _differences(recorded: dict, settings: dict) -> list[str]:
    """`name: recorded → now` for each setting that differs (decoding ones by their option name)."""
    out = []
    for key in COMPARED:
        old, new = recorded.get(key), settings.get(key)
        if key == "decoding" and isinstance(old, dict):
            out += [f"--{name.replace('_', '-')} {old.get(name)!r} → {new[name]!r}" for name in new if old.get(name) != new[name]]
            out += [f"{name} {old[name]!r} (unknown here)" for name in old if name not in new]
        elif old != new:
            out.append(f"{key} {old!r} → {new!r}")
    return out


def finished_images(output: Path, settings: dict) -> tuple[set[str], int]:
    """For `--resume`: the images `output` already holds (their "image" values) and the byte length
    of its whole lines; a last line without its newline (cut short by a kill) is not counted, so it
    is dropped and redone. Refuses, as an OutputError, a file without its sidecar, one written with
    other settings, and one with a line that is not a caption record."""
    meta = meta_path(output)
    if not meta.is_file():
        raise OutputError(f"{output} has no {meta.name} beside it, so the settings it was written with are unknown; "
                          "pass --overwrite to caption everything again, or choose another --output.")
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise OutputError(f"{meta} is not a capalign caption settings file ({exc}); pass --overwrite to start afresh.") from None
    differ = _differences(recorded, settings)
    if differ:
        raise OutputError(f"{output} was written with other settings ({'; '.join(differ)}); --resume with the same "
                          "ones, or pass --overwrite to start afresh.")
    data = output.read_bytes()
    whole = data.rfind(b"\n") + 1
    done: set[str] = set()
    for number, line in enumerate(data[:whole].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image = record["image"]
            if not isinstance(image, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise OutputError(f"{output} line {number} is not a caption record ({{\"image\": ..., \"caption\": ...}}); "
                              "pass --overwrite to start afresh, or choose another --output.") from None
        done.add(image)
    return done, whole


class CaptionLog:
    """Appends caption records to a JSONL file, a batch per `append` (one write, flushed and fsynced).
    Opened on the first `append`: the sidecar is written then, and the file is cut to `keep` bytes
    (what --resume keeps) or emptied (`keep` None)."""

    def __init__(self, output: Path, settings: dict, keep: int | None = None) -> None:
        self.output, self.settings, self.keep = Path(output), settings, keep
        self.handle = None
        self.written = 0

    def append(self, records: list[dict]) -> None:
        with write_errors(self.output, option="--output"):
            if self.handle is None:
                self._open()
            self.handle.write("".join(json.dumps(r) + "\n" for r in records))
            self.handle.flush()
            os.fsync(self.handle.fileno())
        self.written += len(records)

    def _open(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta_path(self.output), json.dumps({**self.settings, "written_by": "capalign caption"}, indent=1),
                          option="--output")
        if self.keep is None:
            self.handle = open(self.output, "w", encoding="utf-8")
        else:
            self.handle = open(self.output, "r+", encoding="utf-8")
            self.handle.truncate(self.keep)
            self.handle.seek(self.keep)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "CaptionLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
