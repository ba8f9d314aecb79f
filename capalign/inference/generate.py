"""Batched captioning with the KV cache: greedy, beam search or sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from capalign.data.collate import pixel_values
from capalign.models.io import load_captioner


@dataclass
class DecodeOptions:
    """How captions are decoded; `temperature` > 0 turns on sampling."""

    num_beams: int = 1
    max_length: int = 24
    temperature: float = 0.0
    batch_size: int = 64

    def generate_kwargs(self) -> dict:
        kwargs = {"num_beams": self.num_beams, "max_new_tokens": self.max_length}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0)
        else:
            kwargs.update(do_sample=False)
        return kwargs


@torch.no_grad()
def caption_images(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions()) -> list[str]:
    """Caption PIL images in batches; returns one caption per image, in order."""
    captioner.eval()
    device = next(captioner.parameters()).device
    captions: list[str] = []
    for start in range(0, len(images), options.batch_size):
        chunk = images[start : start + options.batch_size]
        output = captioner.generate(pixel_values(processor, chunk).to(device), **options.generate_kwargs())
        captions.extend(t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True))
    return captions


def caption_split(model_dir: Path, dataset, *, num_beams: int = 1, max_length: int = 24, batch_size: int = 64) -> dict[str, str]:
    """Caption every image of a prepared split with a run folder's model: image_id -> caption."""
    captioner, tokenizer, processor = load_captioner(model_dir)
    options = DecodeOptions(num_beams=num_beams, max_length=max_length, batch_size=batch_size)
    captions = caption_images(captioner, tokenizer, processor, list(dataset["image"]), options)
    return dict(zip(dataset["image_id"], captions))
