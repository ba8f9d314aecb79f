"""The embedded `shapes` dataset: synthetic scenes of coloured shapes with exact ground truth.

Every image holds one or two objects (colour, shape, size, position). Each image gets several
reference captions phrased differently, and its object list is kept beside it so hallucination
can be checked exactly. The `novel` split holds colour–shape combinations never seen in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
# Colour–shape combinations held out of train/validation/test; they appear only in `novel`.
NOVEL_COMBINATIONS = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "diamond"), ("purple", "square")})
SPLIT_SIZES = {"train": 0.8, "validation": 0.0667, "test": 0.0667, "novel": 0.0667}
NUMBER_WORDS = {"one": 1, "a": 1, "an": 1, "two": 2}
PAIRS_OF_POSITIONS = (("left", "right"), ("top", "bottom"))


@dataclass(frozen=True)
class ShapeObject:
    """One object in a scene."""

    colour: str
    shape: str
    size: str
    position: str | None  # None when it is the only object (centred)

    def as_dict(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "size": self.size, "position": self.position or "center"}


def _phrase(obj: ShapeObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def _where(position: str | None, style: int) -> str:
    if position is None:
        return ["in the middle", "in the center", "in the middle of the picture"][style % 3]
    if position in ("left", "right"):
        return [f"on the {position}", f"on the {position} side", f"to the {position}"][style % 3]
    return [f"at the {position}", f"at the {position} of the image", f"near the {position}"][style % 3]


def describe(objects: list[ShapeObject]) -> list[str]:
    """Five reference captions for a scene, each phrased differently but all true."""
    if len(objects) == 1:
        (obj,) = objects
        return [
            f"{_phrase(obj, True)} {_where(None, 0)}",
            f"there is {_phrase(obj, False)} {_where(None, 1)}",
            f"{_phrase(obj, True)} on a white background",
            f"the picture shows {_phrase(obj, False)}",
            f"one {obj.size} {obj.colour} {obj.shape}",
        ]
    first, second = objects
    return [
        f"{_phrase(first, True)} {_where(first.position, 0)} and {_phrase(second, True)} {_where(second.position, 0)}",
        f"there is {_phrase(first, False)} {_where(first.position, 1)} and {_phrase(second, False)} {_where(second.position, 1)}",
        f"{_phrase(second, True)} {_where(second.position, 2)} and {_phrase(first, True)} {_where(first.position, 2)}",
        f"two shapes : {_phrase(first, False)} and {_phrase(second, False)}",
        f"the image shows {_phrase(first, True)} and {_phrase(second, True)}",
    ]


def sample_scene(rng: random.Random, novel: bool) -> list[ShapeObject]:
    """One or two objects; in a novel scene at least one object is a held-out combination."""
    count = rng.choice((1, 2))
    positions: tuple[str | None, ...] = (None,) if count == 1 else rng.choice(PAIRS_OF_POSITIONS)
    while True:
        objects = [
            ShapeObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(SIZES), position)
            for position in positions
        ]
        combos = [(o.colour, o.shape) for o in objects]
        if len(set(combos)) < len(combos):
            continue  # two identical colour–shape objects make captions ambiguous
        held_out = [c in NOVEL_COMBINATIONS for c in combos]
        if (novel and any(held_out)) or (not novel and not any(held_out)):
            return objects


_BOXES = {None: (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}


def render(objects: list[ShapeObject], image_size: int, rng: random.Random) -> Image.Image:
    """Draw the scene; centres jitter a little so no two images are pixel-identical."""
    image = Image.new("RGB", (image_size, image_size), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        cx, cy = _BOXES[obj.position]
        jitter = 0.04
        cx = (cx + rng.uniform(-jitter, jitter)) * image_size
        cy = (cy + rng.uniform(-jitter, jitter)) * image_size
        r = (0.2 if obj.size == "large" else 0.11) * image_size
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            s = r * 0.88
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


def split_counts(limit: int) -> dict[str, int]:
    """How many images each split gets out of `limit` (at least 1 per split)."""
    counts = {name: max(1, round(limit * share)) for name, share in SPLIT_SIZES.items() if name != "train"}
    counts["train"] = max(1, limit - sum(counts.values()))
    return {"train": counts["train"], "validation": counts["validation"], "test": counts["test"], "novel": counts["novel"]}


def generate_split(split: str, count: int, seed: int, image_size: int = 64):
    """Yield dataset rows for one split, deterministic from (seed, split)."""
    rng = random.Random(f"{seed}-{split}")
    for index in range(count):
        objects = sample_scene(rng, novel=split == "novel")
        yield {
            "image_id": f"shapes-{split}-{index:05d}",
            "image": render(objects, image_size, rng),
            "captions": describe(objects),
            "objects": [o.as_dict() for o in objects],
        }


# ---------------------------------------------------------------- hallucination check

_WORD = re.compile(r"[a-z]+")


def _mentions(caption: str) -> list[dict]:
    """Parse object mentions: [number] [size] [colour] shape [position words up to the next mention]."""
    words = _WORD.findall(caption.lower())
    mentions: list[dict] = []
    start = 0
    for index, word in enumerate(words):
        stem = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word
        if stem not in SHAPES:
            continue
        before = words[start:index]
        mention = {
            "shape": stem,
            "colour": next((w for w in reversed(before) if w in COLOURS), None),
            "size": next((w for w in reversed(before) if w in SIZES), None),
            "count": next((NUMBER_WORDS[w] for w in reversed(before) if w in NUMBER_WORDS), None),
            "plural": stem != word,
            "after_index": index + 1,
        }
        mentions.append(mention)
        start = index + 1
    for mention, following in zip(mentions, mentions[1:] + [None]):
        end = (following["after_index"] - 1) if following else len(words)
        after = words[mention.pop("after_index"):end]
        mention["position"] = next((w for w in after if w in POSITIONS), None)
    return mentions


def find_hallucinations(caption: str, objects: list[dict]) -> list[str]:
    """Everything the caption claims that the scene does not have (empty list: faithful caption).

    A mention is hallucinated when no object matches its shape, colour, size and position (each
    only when named), or when it names more objects of a kind than the scene holds; mentions are
    matched to distinct objects, so "a blue square and a blue square" needs two blue squares.
    "shapes" and "two shapes" count the whole scene.
    """
    problems = []
    words = set(_WORD.findall(caption.lower()))
    if "two" in words and "shapes" in words and len(objects) != 2:
        problems.append(f"says two shapes, scene has {len(objects)}")
    mentions = _mentions(caption)
    slots = []  # one per object a mention claims, with the objects it could be
    for mention in mentions:
        matches = [i for i, o in enumerate(objects) if _fits(mention, o)]
        count = mention["count"] or (2 if mention["plural"] else 1)
        named = " ".join(str(mention[k]) for k in ("size", "colour", "shape", "position") if mention[k])
        if len(matches) < count:
            problems.append(f"no {named}" if not matches else f"only {len(matches)} {named}")
        else:
            slots.extend((named, matches) for _ in range(count))
    assigned = _assign([matches for _, matches in slots])
    problems.extend(f"{named} named again, scene has no other" for (named, _), obj in zip(slots, assigned) if obj is None)
    return problems


def find_omissions(caption: str, objects: list[dict]) -> list[str]:
    """The scene's objects that no mention in the caption could refer to (empty: every object is described)."""
    mentions = _mentions(caption)
    return [f"{o['colour']} {o['shape']}" for o in objects if not any(_fits(m, o) for m in mentions)]


def _fits(mention: dict, obj: dict) -> bool:
    return (obj["shape"] == mention["shape"] and mention["colour"] in (None, obj["colour"])
            and mention["size"] in (None, obj["size"]) and mention["position"] in (None, obj["position"]))


def _assign(candidates: list[list[int]]) -> list[int | None]:
    """A maximum matching of slots to distinct objects (Kuhn's augmenting paths; scenes hold a few
    objects, so no library is worth importing): each slot's object index, or None when unmatched."""
    owner: dict[int, int] = {}  # object -> slot

    def place(slot: int, seen: set[int]) -> bool:
        for obj in candidates[slot]:
            if obj not in seen:
                seen.add(obj)
                if obj not in owner or place(owner[obj], seen):
                    owner[obj] = slot
                    return True
        return False

    for slot in range(len(candidates)):
        place(slot, set())
    by_slot = {slot: obj for obj, slot in owner.items()}
    return [by_slot.get(slot) for slot in range(len(candidates))]
