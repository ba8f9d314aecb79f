"""UltraFeedback preference pairs (HuggingFaceH4/ultrafeedback_binarized), kept for `align`.

Not image rows: columns prompt, chosen, rejected (the final assistant turn as text), score_chosen,
score_rejected. train_prefs -> train (a seeded 5% held out as validation), test_prefs -> test.
A pair with an empty side, or with chosen == rejected, is skipped as `bad_preference_pair`.
"""

from __future__ import annotations

from typing import Any, Iterator

from datasets import DatasetDict, Features, Value

from capalign.errors import InputError

from . import fetch_report as R
from .fetch_report import SkipLog
from .splits import carve

REPO = "HuggingFaceH4/ultrafeedback_binarized"
PAIR_FEATURES = Features({"prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string"),
                          "score_chosen": Value("float32"), "score_rejected": Value("float32")})
_SOURCE_SPLITS = {"train": ("train_prefs", "train"), "test": ("test_prefs", "test")}


def _text(value: Any) -> str:
    """A message list's last assistant turn (or a plain string), stripped."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        value = turns[-1].get("content", "") if turns else ""
    return value.strip() if isinstance(value, str) else ""


def _score(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def preference_generators(ds: DatasetDict, seed: int, limit: int | None, log: SkipLog):
    """Per-split row generators for write_prepared (limit = pairs per split)."""
    src = {s: next((n for n in names if n in ds), None) for s, names in _SOURCE_SPLITS.items()}
    if src["train"] is None:
        raise InputError(f"{REPO}-style data needs a train_prefs or train split; got {list(ds)}.")
    for col in ("prompt", "chosen", "rejected"):
        if col not in ds[src["train"]].column_names:
            raise InputError(f"{REPO}-style data needs a {col!r} column; got {ds[src['train']].column_names}.")
    train_idx = list(range(len(ds[src["train"]])))
    rest, held = carve(train_idx, seed)
    parts = {"train": (src["train"], sorted(rest)), "validation": (src["train"], sorted(held))}
    if src["test"] is not None:
        parts["test"] = (src["test"], list(range(len(ds[src["test"]]))))
    else:
        rest, test = carve(parts["train"][1], seed + 1)
        parts["train"], parts["test"] = (src["train"], sorted(rest)), (src["train"], sorted(test))

    def gen(split: str, counts: dict) -> Iterator[dict]:
        name, idx = parts[split]
        for i, row in zip(idx, ds[name].select(idx)):
            if limit is not None and counts["rows"] >= limit:
                return
            prompt = row["prompt"].strip() if isinstance(row["prompt"], str) else ""
            chosen, rejected = _text(row["chosen"]), _text(row["rejected"])
            if not (prompt and chosen and rejected) or chosen == rejected:
                log.skip(R.BAD_PAIR, f"{REPO}[{name}][{i}]",
                         "identical chosen and rejected" if chosen and chosen == rejected else "empty field")
                continue
            counts["rows"] += 1
            yield {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                   "score_chosen": _score(row.get("score_chosen")),
                   "score_rejected": _score(row.get("score_rejected"))}

    return {s: (lambda counts, s=s: gen(s, counts)) for s in ("train", "validation", "test")}
