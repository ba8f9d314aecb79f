"""Skip bookkeeping and the fetch report written beside every prepared dataset."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from capalign.usertext import printable

# Reasons a record is skipped (keys of FetchReport.skipped and of fetch_report.json).
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
TRUNCATED = "truncated_or_corrupt_image"
NOT_IMAGE = "not_an_image"
BOMB = "decompression_bomb"
PATH_ESCAPE = "path_escapes_images_dir"
EMPTY_CAPTION = "empty_caption"
NO_CAPTIONS = "image_without_captions"
UNKNOWN_IMAGE = "caption_for_unknown_image"
DUPLICATE = "duplicate_image_id"
NOT_IN_SPLIT = "not_in_any_split_list"
DEAD_LINK = "dead_link"
TOO_LARGE = "file_too_large"
NO_IMAGE = "sample_without_image"
BAD_SAMPLE = "malformed_sample"
TRUNCATED_SHARD = "truncated_shard"
BAD_PAIR = "bad_preference_pair"
UNPAIRED = "image_left_without_partner"
NOT_TEXT = "caption_not_text"
BAD_ID = "bad_image_id"
BAD_NAME = "bad_file_name"
UNREADABLE = "unreadable_file"


Held = list[tuple[str, str, str]]  # skips set aside by SkipLog.held, counted later by SkipLog.replay


class SkipLog:
    """Counts skipped records by reason and keeps every one of them for the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.records: list[dict[str, str]] = []
        self._held: Held | None = None

    def skip(self, reason: str, record: str, detail: str = "") -> None:
        """Record that `record` (a path, id or line reference) was skipped for `reason`; text that
        cannot be written as UTF-8 (lone surrogates) is kept escaped."""
        if self._held is not None:
            self._held.append((reason, record, detail))
            return
        self.counts[reason] += 1
        entry = {"reason": reason, "record": printable(record)}
        if detail:
            entry["detail"] = printable(detail)
        self.records.append(entry)

    @contextmanager
    def held(self) -> Iterator[Held]:
        """Skips recorded inside the block go into the list it gives instead of the log, so a reader
        that works ahead (fetch's image workers) can count them at their record's turn (`replay`)."""
        self._held = held = []
        try:
            yield held
        finally:
            self._held = None

    def replay(self, held: Held) -> None:
        """Count skips set aside by `held`, in the order they were recorded."""
        for reason, record, detail in held:
            self.skip(reason, record, detail)


@dataclass
class FetchReport:
    """What an import produced: rows and captions per split, skips by reason, where the report is."""

    source: str
    format: str
    out: Path
    rows: dict[str, int]
    captions: dict[str, int]
    skipped: dict[str, int]
    report_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Human-readable lines for the screen: rows/captions per split and skip counts."""
        lines = [f"{self.source} ({self.format}) -> {self.out}"]
        for split, n in self.rows.items():
            lines.append(f"  {split}: {n} rows, {self.captions.get(split, 0)} captions")
        if self.skipped:
            lines.append(f"  skipped {self.total_skipped} records:")
            lines += [f"    {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        else:
            lines.append("  skipped 0 records")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)


def write_report(path: Path, report: FetchReport, log: SkipLog, settings: dict) -> None:
    """Write fetch_report.json: settings, counts per split and reason, and every skipped record."""
    doc = {
        "source": report.source,
        "format": report.format,
        "settings": settings,
        "rows": report.rows,
        "captions": report.captions,
        "skipped": dict(sorted(log.counts.items())),
        "skipped_records": log.records,
        "notes": report.notes,
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
