"""Preference pairs (image, chosen, rejected) made from the embedded data and the policy itself."""

from __future__ import annotations

import random
from dataclasses import dataclass
from difflib import SequenceMatcher

from capalign.data import shapes

_SWAPS = {
    "colour": list(shapes.COLOURS),
    "shape": list(shapes.SHAPES),
    "size": list(shapes.SIZES),
    "position": list(shapes.POSITIONS),
}


@dataclass
class PreferencePair:
    """One preference: for image `row` of a split, `chosen` is preferred over `rejected`."""

    row: int
    chosen: str
    rejected: str
    source: str  # "policy" (the policy's own wrong caption) or "corrupted" (an edited reference)


def corrupt_caption(caption: str, objects: list[dict], rng: random.Random) -> str | None:
    """Edit one colour, shape, size, position or count word so the caption becomes wrong about
    the scene (checked exactly); None when no single edit makes it wrong."""
    words = caption.split()
    edits = []
    for i, word in enumerate(words):
        for kind, values in _SWAPS.items():
            if word in values:
                edits.extend((i, other) for other in values if other != word)
        if word in ("a", "one") and i + 1 < len(words) and words[i + 1] != "white":
            edits.append((i, "two"))
    rng.shuffle(edits)
    for i, replacement in edits:
        candidate = " ".join(words[:i] + [replacement] + words[i + 1 :])
        if shapes.find_hallucinations(candidate, objects):
            return candidate
    return None


def shapes_pairs(split, policy_captions: list[str] | None, seed: int) -> list[PreferencePair]:
    """One pair per image. When the policy's own caption is wrong about the image it is rejected, and
    the reference phrased most like it is chosen, so the pair differs in what is wrong rather than in
    wording. Otherwise chosen = a random reference and rejected = that reference corrupted (swapped
    colour, shape, size, position or count)."""
    rng = random.Random(seed)
    pairs = []
    for row, (captions, objects) in enumerate(zip(split["captions"], split["objects"])):
        own = policy_captions[row] if policy_captions else None
        if own and shapes.find_hallucinations(own, objects):
            closest = max(captions, key=lambda ref: SequenceMatcher(None, ref.split(), own.split()).ratio())
            pairs.append(PreferencePair(row, closest, own, "policy"))
            continue
        chosen = rng.choice(captions)
        rejected = corrupt_caption(chosen, objects, rng)
        if rejected is not None:
            pairs.append(PreferencePair(row, chosen, rejected, "corrupted"))
    return pairs
