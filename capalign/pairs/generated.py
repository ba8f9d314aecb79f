"""Preference pairs made by capalign itself: the policy's own candidates (best versus worst under the
ranker) and, on shapes, references versus copies corrupted to be wrong."""

from __future__ import annotations

import random
from difflib import SequenceMatcher

import torch

from capalign import reporting
from capalign.data import shapes
from capalign.inference.generate import DecodeOptions, caption_images
from capalign.pairs.types import PreferencePair

_SWAPS = {
    "colour": list(shapes.COLOURS),
    "shape": list(shapes.SHAPES),
    "size": list(shapes.SIZES),
    "position": list(shapes.POSITIONS),
}


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


def best_and_worst_pairs(split, ranked, min_gap: float, start: int = 0) -> list[PreferencePair]:
    """chosen = the ranker's best candidate, rejected = its worst; pairs closer than `min_gap` are
    dropped as ties. On shapes, when even the best candidate is wrong about the image or leaves an
    object out, the reference phrased most like the worst one is chosen instead, so a chosen caption
    is always faithful and complete. `ranked` holds the split's rows from `start` on."""
    pairs = []
    objects = split["objects"] if "objects" in split.column_names else None
    references = split["captions"]  # the column alone: indexing a row would decode its image too
    for row, candidates in enumerate(ranked, start):
        best = max(candidates, key=lambda c: c.score)
        worst = min(candidates, key=lambda c: c.score)
        if best.score - worst.score < min_gap or best.caption == worst.caption:
            continue
        chosen, source = best.caption, "ranked"
        if objects is not None and (best.hallucinations or shapes.find_omissions(best.caption, objects[row])):
            chosen = max(references[row], key=lambda ref: SequenceMatcher(None, ref.split(), worst.caption.split()).ratio())
            source = "ranked+reference"
        if chosen != worst.caption:
            pairs.append(PreferencePair(row, chosen, worst.caption, source))
    return pairs


def corrupted_pairs(split, seed: int) -> list[PreferencePair]:
    """One reference-versus-corrupted pair per image (shapes): a true caption against a copy with one
    colour, shape, size, position or count word changed so that it is wrong."""
    rng = random.Random(seed)
    pairs = []
    for row, (captions, objects) in enumerate(zip(split["captions"], split["objects"])):
        chosen = rng.choice(captions)
        rejected = corrupt_caption(chosen, objects, rng)
        if rejected is not None:
            pairs.append(PreferencePair(row, chosen, rejected, "corrupted"))
    return pairs


def sample_candidates(captioner, tokenizer, processor, images, samples: int, seed: int,
                      sampling: DecodeOptions | None = None) -> list[list[str]]:
    """The policy's greedy caption plus `samples` sampled ones per image, deduplicated; `sampling`
    (default: temperature 1, nothing filtered) decodes the sampled passes, with any of DecodeOptions'
    controls (top-k, top-p, ..., several captions per pass with `num_captions`). A progress bar
    counts images × decoding passes."""
    torch.manual_seed(seed)
    sampling = sampling if sampling is not None else DecodeOptions(temperature=1.0)
    passes = [DecodeOptions()] + [sampling] * samples
    runs: list[list] = [[] for _ in passes]
    with reporting.progress("sampling candidates", len(images) * len(passes)) as advance:
        for run, options in zip(runs, passes):
            for start in range(0, len(images), options.batch_size):  # caption_images' own batches, so the same draws
                chunk = images[start : start + options.batch_size]
                run.extend(caption_images(captioner, tokenizer, processor, chunk, options))
                advance(completed=sum(map(len, runs)))
    return [list(dict.fromkeys(c for item in per_image for c in (item if isinstance(item, list) else [item])))
            for per_image in zip(*runs)]
