"""Preference pairs as training data: where they come from (`--pairs`), their split into training and
held-out pairs, and their batches (pixels, chosen/rejected labels, the reference's log-probs)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from capalign.data.collate import pixel_values, tokenize_captions
from capalign.data.images import open_rgb
from capalign.data.store import get_split
from capalign.errors import ConfigError, InputError
from capalign.inference.scorer import head_similarity
from capalign.pairs.generated import best_and_worst_pairs, corrupted_pairs, sample_candidates
from capalign.pairs.ranker import ranked_chunks
from capalign.pairs.sources import load_pair_source
from capalign.pairs.types import PreferencePair
from capalign.reporting import log

HELD_OUT_IMAGES = 256
HELD_OUT_SHARE = 0.05
GENERATED_PAIRS = ("auto", "corrupted")
MIN_RANK_GAP = 0.5  # ranker-score difference below which best and worst count as a tie (a wording preference)


@dataclass
class PairBatchMaker:
    """Collates pairs into pixel values, chosen/rejected labels and stored reference log-probs; with
    `text_inputs` (captions -> input_ids / attention_mask for the contrastive head's text side) also
    the chosen captions' text inputs, as `chosen_text_*`."""

    tokenizer: object
    processor: object
    max_tokens: int
    text_inputs: Callable[[list[str]], dict[str, torch.Tensor]] | None = None

    def __call__(self, items):
        images = [item["image"] for item in items]
        chosen = tokenize_captions(self.tokenizer, [item["chosen"] for item in items], self.max_tokens)
        rejected = tokenize_captions(self.tokenizer, [item["rejected"] for item in items], self.max_tokens)
        batch = {"chosen_labels": chosen["labels"], "rejected_labels": rejected["labels"]}
        if images[0] is not None:  # image-free pairs (a text preference dataset) have none at all
            batch["pixel_values"] = pixel_values(self.processor, images)
            if self.text_inputs is not None:
                texts = self.text_inputs([item["chosen"] for item in items])
                batch.update({f"chosen_text_{k}": v for k, v in texts.items()})
        if "ref_chosen" in items[0]:
            batch["ref_chosen"] = torch.tensor([item["ref_chosen"] for item in items])
            batch["ref_rejected"] = torch.tensor([item["ref_rejected"] for item in items])
        return batch


class PairSet(Dataset):
    """Pairs with their images (a split row, an image file, or none for text-only pairs);
    reference log-probs are attached by `attach_reference_logps`."""

    def __init__(self, split, pairs: list[PreferencePair]):
        self.split, self.pairs = split, pairs
        self.reference: np.ndarray | None = None  # [pairs, 2] float64: each pair's chosen and rejected log-prob

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, pair: PreferencePair):
        if pair.row is not None:
            return self.split[pair.row]["image"]
        return open_rgb(pair.image) if pair.image is not None else None

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        item = {"image": self.image(pair), "chosen": pair.chosen, "rejected": pair.rejected}
        if self.reference is not None:
            item["ref_chosen"], item["ref_rejected"] = map(float, self.reference[i])
        return item


def make_pairs(split, captioner, tokenizer, processor, source: str, seed: int, samples: int = 4, sampling=None,
               scorer=None) -> list[PreferencePair]:
    """Preference pairs for one split.

    auto: the policy's candidates ranked by the ranker (best vs worst, near-ties dropped), plus on
    shapes one reference-versus-corrupted pair per image; corrupted: only the latter. The ranker's
    image–caption cosine comes from `scorer`'s contrastive head (None: the policy's own); `sampling`
    (DecodeOptions) decodes the sampled candidates (None: temperature 1, nothing filtered)."""
    has_objects = "objects" in split.column_names
    if source == "corrupted":
        if not has_objects:
            raise ConfigError("--pairs corrupted needs a dataset with ground-truth objects (shapes).")
        return corrupted_pairs(split, seed)
    if source != "auto":
        loaded = load_pair_source(source)
        log.info(f"--pairs {source}: {loaded.summary()}")
        if not loaded.pairs:
            raise InputError(f"--pairs {source} holds no usable pair ({loaded.summary()}).")
        return [PreferencePair(None, p["chosen"], p["rejected"], "file", image=p["image"]) for p in loaded.pairs]
    images = split["image"]  # a lazy column: each batch decodes its own slice, never the whole split
    # every image's candidates are sampled first (pass by pass, the seeded draws) and held: CIDEr's
    # document frequencies count each image's candidates; then they are ranked and paired a chunk at a time
    candidates = sample_candidates(captioner, tokenizer, processor, images, samples, seed, sampling)
    similarity = head_similarity(scorer if scorer is not None else captioner, tokenizer, processor, images, candidates)
    pairs = []
    for start, ranked in ranked_chunks(candidates, split["captions"], split["objects"] if has_objects else None,
                                       similarity):
        pairs += best_and_worst_pairs(split, ranked, MIN_RANK_GAP, start)
    if has_objects:
        pairs += corrupted_pairs(split, seed)
    return pairs


def build_pair_sets(dataset, policy, tokenizer, processor, source: str, seed: int,
                    scorer=None, sampling=None) -> tuple[PairSet, PairSet | None]:
    """Training pairs and held-out pairs. Generated pairs come from the train and validation
    splits; pairs read from a file or dataset are split, seeded, with HELD_OUT_SHARE held out."""
    train_split = get_split(dataset, "train")
    if source in GENERATED_PAIRS:
        train = PairSet(train_split, make_pairs(train_split, policy, tokenizer, processor, source, seed, scorer=scorer, sampling=sampling))
        if "validation" not in dataset or not len(dataset["validation"]):
            return train, None
        val_split = dataset["validation"].select(range(min(HELD_OUT_IMAGES, len(dataset["validation"]))))
        return train, PairSet(val_split, make_pairs(val_split, policy, tokenizer, processor, source, seed + 1, scorer=scorer,
                                                sampling=sampling))
    pairs = make_pairs(train_split, policy, tokenizer, processor, source, seed)
    random.Random(seed).shuffle(pairs)
    held = min(HELD_OUT_IMAGES, int(len(pairs) * HELD_OUT_SHARE))
    return PairSet(train_split, pairs[held:]), (PairSet(train_split, pairs[:held]) if held else None)
