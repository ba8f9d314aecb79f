"""Batched captioning with the KV cache: greedy, beam search or sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object

from capalign import ui
from capalign.data.collate import pixel_values
from capalign.distributed import process_state
from capalign.errors import UserError
from capalign.models.io import load_captioner

# Beam search keeps batch × beams sequences (and their logits over the vocabulary) in memory; far
# fewer beams than this already give the best captions, so a larger width is a typo, not a setting.
MAX_NUM_BEAMS = 100


@dataclass
class DecodeOptions:
    """How captions are decoded; `temperature` > 0 turns on sampling; `max_length` None: the model's
    own caption length (its generation config, set from `model.max_caption_tokens`).

    The one place decoding settings are checked (the CLI's options and capalign.Captioner's
    arguments alike): out-of-range values are a UserError naming the option and the allowed range,
    here for what needs no model, in `check_model` for what depends on the model."""

    num_beams: int = 1
    max_length: int | None = None
    temperature: float = 0.0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.num_beams <= MAX_NUM_BEAMS:
            raise UserError(f"--num-beams must be between 1 and {MAX_NUM_BEAMS}, got {self.num_beams}.")
        if self.max_length is not None and self.max_length < 1:
            raise UserError(f"--max-length must be at least 1, got {self.max_length}.")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"--temperature must be a finite number of at least 0 (0 = no sampling), got {self.temperature}.")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}.")

    def check_model(self, captioner) -> None:
        """Refuse more new tokens than the decoder has positions left after its prompt (the image
        prefix, or the start token) and more beams than it has tokens to start them with."""
        decoder = getattr(captioner.model, "decoder", None)
        if decoder is None:  # contrastive-only: generate() says it cannot caption
            return
        config = decoder.config
        if self.num_beams > config.vocab_size:
            raise UserError(f"--num-beams must be between 1 and {config.vocab_size} for this model (its vocabulary "
                            f"size), got {self.num_beams}.")
        positions = getattr(config, "max_position_embeddings", None)
        mapper = getattr(captioner.model, "mapper", None)
        prompt = mapper.prefix_length if mapper is not None else 1
        if self.max_length is not None and positions is not None and self.max_length > positions - prompt:
            raise UserError(f"--max-length must be between 1 and {positions - prompt} for this model ({positions} "
                            f"positions, {prompt} taken by the prompt), got {self.max_length}.")

    def generate_kwargs(self) -> dict:
        kwargs = {"num_beams": self.num_beams}
        if self.max_length is not None:
            kwargs["max_new_tokens"] = self.max_length
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0)
        else:
            kwargs.update(do_sample=False)
        return kwargs


@torch.no_grad()
def caption_images(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions()) -> list[str]:
    """Caption PIL images in batches; returns one caption per image, in order."""
    options.check_model(captioner)
    captioner.eval()
    device = next(captioner.parameters()).device
    captions: list[str] = []
    for start in range(0, len(images), options.batch_size):
        chunk = images[start : start + options.batch_size]
        output = captioner.generate(pixel_values(processor, chunk).to(device), **options.generate_kwargs())
        captions.extend(t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True))
    return captions


@dataclass
class ScoredCaption:
    """A caption with the model's probability of each generated token (EOS included) and their
    log-sum, the sequence log-probability (unnormalised by length, whatever the decoding)."""

    caption: str
    logprob: float
    tokens: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)


@torch.no_grad()
def caption_images_scored(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions()) -> list[ScoredCaption]:
    """As caption_images, with each token's probability under the model (softmax of its raw logits,
    before temperature or other processors) via transformers' compute_transition_scores."""
    options.check_model(captioner)
    captioner.eval()
    device = next(captioner.parameters()).device
    scorer = captioner.transition_scorer()
    eos = tokenizer.eos_token_id
    out: list[ScoredCaption] = []
    for start in range(0, len(images), options.batch_size):
        chunk = images[start : start + options.batch_size]
        generated = captioner.generate(pixel_values(processor, chunk).to(device), **options.generate_kwargs(),
                                       output_logits=True, return_dict_in_generate=True)
        steps = len(generated.logits)
        logps = scorer.compute_transition_scores(generated.sequences, generated.logits,
                                                 getattr(generated, "beam_indices", None), normalize_logits=True)
        for ids, row in zip(generated.sequences[:, -steps:].tolist(), logps.tolist()):
            n = ids.index(eos) + 1 if eos in ids else len(ids)  # up to and including EOS; padding after it is not the model's
            ids, row = ids[:n], row[:n]
            out.append(ScoredCaption(tokenizer.decode(ids, skip_special_tokens=True).strip(), float(sum(row)),
                                     tokenizer.convert_ids_to_tokens(ids), [math.exp(x) for x in row]))
    return out


def caption_sharded(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions(),
                    scored: bool = False) -> list:
    """Caption a sequence of images (a list, or a `datasets` column, decoded a share at a time) with
    every process of a `torchrun` / `accelerate launch` launch taking a contiguous share; the shares
    are gathered back, in the original order, on every process. One process: caption_images as is.
    With `scored`, ScoredCaption items (caption_images_scored).

    The commands' captioning (caption, evaluate, compare) comes here, not to caption_images: that one
    also runs where only the main process calls it (align's report, `capalign.Captioner.caption`),
    where a collective would hang, and where each process needs every caption anyway (pair building,
    selection during training). Sampling (temperature > 0) draws differently on N processes."""
    caption = caption_images_scored if scored else caption_images
    state = process_state()
    n, k, rank = len(images), state.num_processes, state.process_index
    share = list(images[rank * n // k : (rank + 1) * n // k])
    if len(share) <= options.batch_size:  # one batch: no bar
        mine = caption(captioner, tokenizer, processor, share, options)
    else:
        mine = []
        with ui.progress_bar("captioning", len(share), stderr=True) as (progress, task):
            for start in range(0, len(share), options.batch_size):
                mine.extend(caption(captioner, tokenizer, processor, share[start : start + options.batch_size], options))
                progress.update(task, completed=len(mine))
    return mine if k == 1 else gather_object(mine)


def caption_split(model_dir: Path, dataset, *, num_beams: int = 1, max_length: int | None = None, batch_size: int = 64,
                  device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> dict[str, str]:
    """Caption every image of a prepared split with a run folder's model (in `dtype`), shared out
    between the launch's processes (caption_sharded): image_id -> caption, on every process."""
    captioner, tokenizer, processor = load_captioner(model_dir, device, dtype)
    options = DecodeOptions(num_beams=num_beams, max_length=max_length, batch_size=batch_size)
    captions = caption_sharded(captioner, tokenizer, processor, dataset["image"], options)
    return dict(zip(dataset["image_id"], captions))
