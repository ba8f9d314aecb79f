"""Hallucination: captions that name what the image does not have.

- Shapes (exact): a caption hallucinates when `capalign.data.shapes.find_hallucinations(caption,
  objects)` returns anything; `Hallucination` is the fraction of such captions.
- COCO: CHAIR-s / CHAIR-i (Rohrbach et al. 2018) from instance annotations. Object words are matched
  to the 80 COCO categories with capalign's own synonym table below (smaller than the paper's
  synonyms.txt, which is not packaged anywhere we can install); the scorer label says so.
  Ground-truth objects of an image = its instance categories plus objects named by its references,
  as in the paper.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from capalign.data.shapes import find_hallucinations
from capalign.errors import InputError
from capalign.metrics.types import EvaluationResult

Checker = Callable[[str, list[dict]], list[str]]


def shapes_checker() -> Checker:
    return find_hallucinations


def score_hallucination(
    candidates: dict[str, str], objects: dict[str, list[dict]] | None, result: EvaluationResult,
    checker: Checker | None = None,
) -> None:
    """Fill `Hallucination` (per image 1/0) and the hallucinated claims in details, or report missing."""
    ids = list(candidates)
    if objects is None or any(i not in objects for i in ids):
        result.missing["Hallucination"] = (
            "Hallucination needs each image's ground-truth objects (shapes data has them); for COCO use CHAIR with --instances"
        )
        return
    checker = checker or shapes_checker()
    found = {i: list(checker(candidates[i], objects[i])) for i in ids}
    per = {i: float(bool(found[i])) for i in ids}
    result.summary["Hallucination"] = sum(per.values()) / max(len(ids), 1)
    result.add_per_image("Hallucination", per)
    result.details["hallucinated"] = {i: v for i, v in found.items() if v}
    name = getattr(checker, "__module__", "?") + "." + getattr(checker, "__name__", "?")
    result.scorers["Hallucination"] = f"{name} (exact ground-truth objects)"


# --- CHAIR -------------------------------------------------------------------------------------------

COCO_CATEGORIES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]
SYNONYMS = {
    "person": "man woman boy girl child kid baby person people guy lady player skier surfer skateboarder "
              "snowboarder rider pedestrian adult teenager toddler gentleman men women children kids",
    "bicycle": "bike bicycle cycle", "car": "car taxi suv sedan cab", "motorcycle": "motorcycle motorbike scooter",
    "airplane": "airplane plane jet aircraft airliner", "bus": "bus", "train": "train locomotive",
    "truck": "truck pickup", "boat": "boat ship kayak canoe sailboat yacht", "bench": "bench",
    "bird": "bird pigeon seagull gull duck goose parrot", "cat": "cat kitten kitty", "dog": "dog puppy pup",
    "horse": "horse pony", "sheep": "sheep lamb", "cow": "cow cattle bull calf", "elephant": "elephant",
    "bear": "bear", "zebra": "zebra", "giraffe": "giraffe", "backpack": "backpack", "umbrella": "umbrella parasol",
    "handbag": "handbag purse", "tie": "tie necktie", "suitcase": "suitcase luggage", "frisbee": "frisbee",
    "skis": "ski skis", "snowboard": "snowboard", "sports ball": "ball football soccer baseball basketball",
    "kite": "kite", "skateboard": "skateboard", "surfboard": "surfboard", "bottle": "bottle",
    "cup": "cup mug", "fork": "fork", "knife": "knife", "spoon": "spoon", "bowl": "bowl", "banana": "banana",
    "apple": "apple", "sandwich": "sandwich burger", "orange": "orange", "broccoli": "broccoli",
    "carrot": "carrot", "pizza": "pizza", "donut": "donut doughnut", "cake": "cake cupcake", "chair": "chair stool",
    "couch": "couch sofa", "bed": "bed", "dining table": "table desk", "toilet": "toilet", "tv": "tv television",
    "laptop": "laptop computer", "mouse": "mouse", "remote": "remote", "keyboard": "keyboard",
    "cell phone": "phone cellphone smartphone", "microwave": "microwave", "oven": "oven stove",
    "toaster": "toaster", "sink": "sink", "refrigerator": "refrigerator fridge", "book": "book",
    "clock": "clock", "vase": "vase", "scissors": "scissors", "toothbrush": "toothbrush",
}
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "knives": "knife",
              "mice": "mouse", "geese": "goose", "skis": "ski", "buses": "bus", "benches": "bench",
              "sandwiches": "sandwich", "couches": "couch", "boxes": "box", "glasses": "glass", "ponies": "pony"}
_AMBIGUOUS = {"orange"}  # a colour as often as a fruit


def _word_table() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    single: dict[str, str] = {}
    double: dict[tuple[str, str], str] = {}
    for category in COCO_CATEGORIES:
        parts = tuple(category.split())
        if len(parts) == 2:
            double[parts] = category
        else:
            single[category] = category
        for word in SYNONYMS.get(category, "").split():
            single.setdefault(word, category)
    return single, double


_SINGLE, _DOUBLE = _word_table()
_TOKEN = re.compile(r"[a-z]+")


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("s") and word[:-1] in _SINGLE:
        return word[:-1]
    return word


def caption_objects(caption: str) -> set[str]:
    """COCO categories a caption names (two-word names first, then words and synonyms)."""
    tokens = [_singular(t) for t in _TOKEN.findall(caption.lower())]
    found: set[str] = set()
    skip = False
    for k, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        pair = (token, tokens[k + 1]) if k + 1 < len(tokens) else None
        if pair in _DOUBLE:
            found.add(_DOUBLE[pair])
            skip = True
        elif token in _SINGLE:
            if token in _AMBIGUOUS and k + 1 < len(tokens) and tokens[k + 1] in _SINGLE:
                continue  # "orange cat": a colour, not the fruit
            found.add(_SINGLE[token])
    return found


def load_coco_instances(path: str | Path) -> dict[str, list[str]]:
    """{image id (str): [category names]} from a COCO instances_*.json file."""
    try:
        data = json.loads(Path(path).read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        objects: dict[str, set[str]] = defaultdict(set)
        for image in data.get("images", []):
            objects[str(image["id"])]
        for ann in data["annotations"]:
            objects[str(ann["image_id"])].add(names[ann["category_id"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a readable COCO instances file ({type(exc).__name__}: {exc})") from None
    return {k: sorted(v) for k, v in objects.items()}


def score_chair(
    candidates: dict[str, str], references: dict[str, list[str]], instances: dict[str, list[str]] | None,
    metrics: list[str], result: EvaluationResult,
) -> None:
    """Fill CHAIR-s (share of captions with a hallucinated object) and CHAIR-i (hallucinated object
    mentions / all object mentions), or report them missing."""
    ids = list(candidates)
    if instances is None or any(i not in instances for i in ids):
        lacking = len([i for i in ids if i not in (instances or {})])
        for m in metrics:
            result.missing[m] = f"CHAIR needs COCO instance annotations (--instances FILE); {lacking} images have none"
        return
    stats, per_s, per_i, hallucinated = {}, {}, {}, {}
    for i in ids:
        truth = set(instances[i]).union(*(caption_objects(r) for r in references[i]))
        named = caption_objects(candidates[i])
        wrong = sorted(named - truth)
        stats[i] = [float(len(wrong)), float(len(named))]
        per_s[i] = float(bool(wrong))
        per_i[i] = len(wrong) / len(named) if named else 0.0
        if wrong:
            hallucinated[i] = wrong
    label = (f"CHAIR (Rohrbach et al. 2018) with capalign's synonym table ({len(_SINGLE) + len(_DOUBLE)} words), "
             "not the paper's synonyms.txt")
    if "CHAIR-s" in metrics:
        result.summary["CHAIR-s"] = sum(per_s.values()) / max(len(ids), 1)
        result.add_per_image("CHAIR-s", per_s)
        result.scorers["CHAIR-s"] = label
    if "CHAIR-i" in metrics:
        mentions = sum(s[1] for s in stats.values())
        result.summary["CHAIR-i"] = sum(s[0] for s in stats.values()) / mentions if mentions else 0.0
        result.add_per_image("CHAIR-i", per_i)
        result.stats["CHAIR-i"] = stats
        result.scorers["CHAIR-i"] = label
    result.details["chair_hallucinated"] = hallucinated
