"""Turning prepared rows into model batches: (image, caption) pairs, tokenised captions ending in EOS."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class CaptionPairs(Dataset):
    """Every (image, reference caption) pair of a split, in a fixed order."""

    def __init__(self, split):
        self.split = split
        self.index = [(row, k) for row, captions in enumerate(split["captions"]) for k in range(len(captions))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        row, k = self.index[i]
        item = self.split[row]
        return item["image"], item["captions"][k]


def tokenize_captions(tokenizer, captions: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Token ids + EOS, right-padded. `labels` masks only the padding after EOS (-100), so the model
    learns to stop even when pad and EOS share an id; `attention_mask` covers caption and EOS."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"][: max_tokens - 1] + [tokenizer.eos_token_id] for c in captions]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pixel_values(processor, images) -> torch.Tensor:
    """Preprocess PIL images (converted to RGB) into a pixel tensor."""
    return processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]


class CaptionCollator:
    """Batches of (image, caption) pairs for the captioning + contrastive objective."""

    def __init__(self, tokenizer, processor, max_tokens: int):
        self.tokenizer, self.processor, self.max_tokens = tokenizer, processor, max_tokens

    def __call__(self, items):
        images, captions = zip(*items)
        batch = tokenize_captions(self.tokenizer, list(captions), self.max_tokens)
        batch["pixel_values"] = pixel_values(self.processor, images)
        return batch
