"""Turning prepared rows into model batches: (image, caption) pairs, tokenised captions ending in EOS."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import Dataset

from capalign.errors import InputError


class CaptionPairs(Dataset):
    """Every (image, reference caption) pair of a split, in a fixed order."""

    def __init__(self, split):
        self.split = split
        self.index = [(row, k) for row, captions in enumerate(split["captions"]) for k in range(len(captions))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        row, k = self.index[i]
        try:
            item = self.split[row]
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's decode errors (UnidentifiedImageError is an OSError)
            raise undecodable(self.split, row, exc) from None
        return item["image"], item["captions"][k]


def undecodable(split, row: int, exc: BaseException) -> InputError:
    """One line for an image the prepared data holds but cannot be decoded (damaged after `fetch`
    checked it: the up-front check decodes only the first and last rows)."""
    files = [f["filename"] for f in getattr(split, "cache_files", [])]
    where = f" in {Path(files[0]).parent}" if files else ""
    return InputError(f"row {row}{where} holds an image that cannot be decoded ({type(exc).__name__}); the prepared "
                      "dataset is damaged: re-run `capalign fetch SOURCE --out DIR` for it.")


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


def augment_image(image):
    """Seed 002's augmentations with PIL (torchvision from PyPI does not fit the CPU torch build):
    horizontal flip (p=0.5), brightness / contrast / saturation jitter (factor in [0.8, 1.2], in
    random order) and rotation by up to ±10 degrees. Draws from torch's RNG, so --seed fixes them and
    checkpoints resume them."""
    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    image = image.convert("RGB")
    if float(torch.rand(())) < 0.5:
        image = ImageOps.mirror(image)
    for k in torch.randperm(3).tolist():
        enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[k]
        image = enhancer(image).enhance(uniform(0.8, 1.2))
    return image.rotate(uniform(-10.0, 10.0), resample=Image.BILINEAR)


class CaptionCollator:
    """Batches of (image, caption) pairs for the captioning + contrastive objective.

    Items may carry cached encoder outputs (a dict of tensors) instead of an image; `text_inputs`
    adds `text_input_ids` / `text_attention_mask` for a separate text tower; `augment` applies
    `augment_image` to each training image."""

    def __init__(self, tokenizer, processor, max_tokens: int, text_inputs=None, augment: bool = False):
        self.tokenizer, self.processor, self.max_tokens = tokenizer, processor, max_tokens
        self.text_inputs, self.augment = text_inputs, augment

    def __call__(self, items):
        images, captions = zip(*items)
        batch = tokenize_captions(self.tokenizer, list(captions), self.max_tokens)
        if isinstance(images[0], dict):
            for key in images[0]:
                batch[key] = torch.stack([features[key] for features in images])
        else:
            if self.augment:
                images = [augment_image(im) for im in images]
            batch["pixel_values"] = pixel_values(self.processor, images)
        if self.text_inputs is not None:
            batch.update({f"text_{k}": v for k, v in self.text_inputs(list(captions)).items()})
        return batch
