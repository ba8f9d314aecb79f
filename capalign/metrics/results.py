"""Captions produced by any system: COCO results files and their match against the references."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from capalign.errors import InputError
from capalign.usertext import id_text, is_text, read_json, read_text


@dataclass
class LoadedResults:
    """Captions by image id (first one kept for duplicates), plus what was odd about the file."""

    captions: dict[str, str]
    duplicated: dict[str, int] = field(default_factory=dict)  # id -> times it appeared
    skipped: int = 0  # records without a usable image_id / caption


def load_results(path: str | Path) -> LoadedResults:
    """Read a COCO results file (`[{"image_id": ..., "caption": ...}]`), JSONL with the same records,
    or a `{image_id: caption}` object. Ids become strings; bad records are skipped and counted."""
    path = Path(path)
    text = read_text(path, "results file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise InputError(f"{path} is neither JSON nor JSON lines (line {number}: "
                                     f"{getattr(exc, 'msg', 'nested too deeply')})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to read; fix the file") from None
    if isinstance(data, dict) and "annotations" in data:
        data = data["annotations"]
    if isinstance(data, dict) and set(data) == {"image_id", "caption"}:  # JSON lines holding one record
        data = [data]
    if isinstance(data, dict):
        data = [{"image_id": k, "caption": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise InputError(f"{path} is not a COCO results file: expected a list of {{image_id, caption}} records")
    loaded = LoadedResults(captions={})
    for record in data:
        key = id_text(record.get("image_id")) if isinstance(record, dict) else None
        if key is None or not is_text(record.get("caption")):
            loaded.skipped += 1
            continue
        if key in loaded.captions:
            loaded.duplicated[key] = loaded.duplicated.get(key, 1) + 1
            continue
        loaded.captions[key] = record["caption"]
    if not loaded.captions:
        raise InputError(f"{path} holds no usable {{image_id, caption}} records ({loaded.skipped} skipped)")
    return loaded


@dataclass
class IdReport:
    """How a results file's ids compare with the reference ids."""

    missing: list[str]
    extra: list[str]
    duplicated: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.duplicated)

    def describe(self, limit: int = 10) -> str:
        def some(ids) -> str:
            ids = list(ids)
            return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} reference images have no caption (missing: {some(self.missing)})")
        if self.extra:
            parts.append(f"{len(self.extra)} ids are not in the references (extra: {some(self.extra)})")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} ids appear more than once (duplicated: {some(self.duplicated)})")
        return "; ".join(parts)


def _sort_key(image_id: str):
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def match_ids(
    loaded: LoadedResults, reference_ids, *, allow_partial: bool = False, source: str = "results file"
) -> tuple[dict[str, str], IdReport]:
    """Captions restricted to ids present in both. Any missing / extra / duplicated id is an InputError
    naming them, unless allow_partial (then the common ids are scored, first caption of a duplicate)."""
    refs = set(reference_ids)
    report = IdReport(
        missing=sorted(refs - set(loaded.captions), key=_sort_key),
        extra=sorted(set(loaded.captions) - refs, key=_sort_key),
        duplicated=dict(sorted(loaded.duplicated.items(), key=lambda kv: _sort_key(kv[0]))),
    )
    if not report.ok and not allow_partial:
        raise InputError(f"{source} does not match the references: {report.describe()}; fix the file or pass --allow-partial")
    common = {k: v for k, v in loaded.captions.items() if k in refs}
    if not common:
        raise InputError(f"{source} shares no image ids with the references ({report.describe()})")
    return common, report


def load_references(path: str | Path) -> dict[str, list[str]]:
    """Reference captions from a COCO annotations file (`{"images": [...], "annotations": [{"image_id",
    "caption"}, ...]}`, the captions_val2014.json form) or a plain `{image_id: [captions]}` JSON.
    Ids become strings; images listed without any caption are an error (they could not be scored)."""
    path = Path(path)
    data = read_json(path, "references file")
    references: dict[str, list[str]] = {}
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for record in data["annotations"]:
            key = id_text(record.get("image_id")) if isinstance(record, dict) else None
            if key is not None and is_text(record.get("caption")):
                references.setdefault(key, []).append(record["caption"])
        images = data.get("images") if isinstance(data.get("images"), list) else []
        listed = [id_text(i["id"]) for i in images if isinstance(i, dict) and "id" in i]
        bare = [i for i in listed if i is not None and i not in references]
        if bare:
            raise InputError(f"{path}: {len(bare)} images have no caption annotation (e.g. {bare[0]})")
    elif isinstance(data, dict) and all(isinstance(v, list) and all(map(is_text, v)) for v in data.values()):
        references = {str(k): list(v) for k, v in data.items() if v}
    else:
        raise InputError(f"{path} is neither a COCO annotations file ({{images, annotations: [{{image_id, caption}}]}}) "
                         "nor a {image_id: [captions]} JSON")
    if not references:
        raise InputError(f"{path} holds no reference captions")
    return references
