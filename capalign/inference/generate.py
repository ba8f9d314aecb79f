"""Batched captioning with the KV cache: greedy, beam search or sampling, with transformers' decoding
controls (top-k, top-p, repetition penalty, no-repeat n-grams, length penalty, min/max new tokens) and
several captions per image."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from accelerate.utils import gather_object

from capalign import reporting
from capalign.data.collate import pixel_values
from capalign.data.images import Unreadable
from capalign.decoding import Decoding, too_many
from capalign.distributed import process_state
from capalign.models.io import load_captioner
from capalign.schema import setting


@dataclass
class DecodeOptions(Decoding):
    """The decoding settings (capalign.decoding.Decoding: declared, helped and checked there) and
    how many images decode at once; `check_model` refuses what the model cannot do."""

    batch_size: int = setting(64, "Images per batch.", at_least=1)

    def check_model(self, captioner) -> None:
        """Refuse more new tokens than the decoder has positions left after its prompt (the image
        prefix, or the start token), more beams than it has tokens to start them with, and a minimum
        above the model's own caption length when --max-length is not given."""
        decoder = getattr(captioner.model, "decoder", None)
        if decoder is None:  # contrastive-only: generate() says it cannot caption
            return
        config = decoder.config
        if self.num_beams > config.vocab_size:
            raise too_many("--num-beams", self.num_beams, 1, config.vocab_size, "for this model: its vocabulary size")
        positions = getattr(config, "max_position_embeddings", None)
        mapper = getattr(captioner.model, "mapper", None)
        prompt = mapper.prefix_length if mapper is not None else 1
        if self.max_length is not None and positions is not None and self.max_length > positions - prompt:
            raise too_many("--max-length", self.max_length, 1, positions - prompt,
                           f"for this model: {positions} positions, {prompt} taken by the prompt")
        default = getattr(captioner.model.generation_config, "max_new_tokens", None)
        if self.max_length is None and default is not None and self.min_new_tokens > default:
            raise too_many("--min-new-tokens", self.min_new_tokens, 0, default,
                           "this model's caption length; raise --max-length to allow more")


@dataclass
class ScoredCaption:
    """A caption with the model's probability of each generated token (EOS included) and their
    log-sum, the sequence log-probability (unnormalised by length, whatever the decoding)."""

    caption: str
    logprob: float
    tokens: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)


def _caption_batch(captioner, tokenizer, processor, images: list, options: DecodeOptions, scored: bool) -> list[list]:
    """One generate call: for each image, its `num_captions` captions (ScoredCaption with `scored`),
    in the order transformers returns them (consecutive rows per image, best beam first)."""
    if not images:
        return []
    device = next(captioner.parameters()).device
    pixels = pixel_values(processor, images).to(device)
    with warnings.catch_warnings():
        # the prefix architecture's prompt is image embeddings, with no tokens an n-gram could repeat
        warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
        items = _generate(captioner, tokenizer, pixels, options, scored)
    n = options.num_captions
    return [items[i * n : (i + 1) * n] for i in range(len(images))]


def _generate(captioner, tokenizer, pixels: torch.Tensor, options: DecodeOptions, scored: bool) -> list:
    """The decoded rows of one generate call: captions, or ScoredCaptions with `scored` (each token's
    probability under the model, softmax of its raw logits before temperature or other processors,
    via transformers' compute_transition_scores)."""
    if not scored:
        output = captioner.generate(pixels, **options.generate_kwargs())
        return [t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True)]
    scorer = captioner.transition_scorer()
    eos = tokenizer.eos_token_id
    generated = captioner.generate(pixels, **options.generate_kwargs(), output_logits=True, return_dict_in_generate=True)
    steps = len(generated.logits)
    logps = scorer.compute_transition_scores(generated.sequences, generated.logits,
                                             getattr(generated, "beam_indices", None), normalize_logits=True)
    items = []
    for ids, row in zip(generated.sequences[:, -steps:].tolist(), logps.tolist()):
        n = ids.index(eos) + 1 if eos in ids else len(ids)  # up to and including EOS; padding after it is not the model's
        ids, row = ids[:n], row[:n]
        items.append(ScoredCaption(tokenizer.decode(ids, skip_special_tokens=True).strip(), float(sum(row)),
                                   tokenizer.convert_ids_to_tokens(ids), [math.exp(x) for x in row]))
    return items


@torch.no_grad()
def _caption_all(captioner, tokenizer, processor, images, options: DecodeOptions, scored: bool) -> list:
    options.check_model(captioner)
    captioner.eval()
    out: list = []
    for start in range(0, len(images), options.batch_size):
        out.extend(_caption_batch(captioner, tokenizer, processor, list(images[start : start + options.batch_size]),
                                  options, scored))
    return out if options.num_captions > 1 else [group[0] for group in out]


def caption_images(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions()) -> list:
    """Caption PIL images in batches, in order: one caption per image, or with `num_captions` N > 1
    a list of N per image (beam search: the N best beams, best first)."""
    return _caption_all(captioner, tokenizer, processor, images, options, scored=False)


def caption_images_scored(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions()) -> list:
    """As caption_images, each caption a ScoredCaption: each token's probability under the model
    (softmax of its raw logits, before temperature or other processors) and their log-sum."""
    return _caption_all(captioner, tokenizer, processor, images, options, scored=True)


@torch.no_grad()
def caption_chunks(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions(),
                   scored: bool = False) -> Iterator[list]:
    """Caption a sequence of images (a list, a `datasets` column or capalign.data.images.ImageFiles:
    only the slice a process captions is read at a time) chunk by chunk, with every process of a
    `torchrun` / `accelerate launch` launch taking a contiguous part of each chunk of
    batch_size × processes images; yields each chunk's results, gathered in the original order, on
    every process, so memory is bounded by the chunk. A result is the list of an image's
    `num_captions` captions (ScoredCaption with `scored`), or the Unreadable item it replaces.
    One process: one chunk is one batch, exactly caption_images' batches (the same draws)."""
    options.check_model(captioner)
    captioner.eval()
    state = process_state()
    k, rank = state.num_processes, state.process_index
    step = options.batch_size * k
    for start in range(0, len(images), step):
        size = min(step, len(images) - start)
        mine = list(images[start + rank * size // k : start + (rank + 1) * size // k])
        readable = [image for image in mine if not isinstance(image, Unreadable)]
        results = iter(_caption_batch(captioner, tokenizer, processor, readable, options, scored))
        done = [image if isinstance(image, Unreadable) else next(results) for image in mine]
        yield done if k == 1 else gather_object(done)


def caption_sharded(captioner, tokenizer, processor, images, options: DecodeOptions = DecodeOptions(),
                    scored: bool = False) -> list:
    """Caption a sequence of images with every process of a launch taking its part of each chunk
    (caption_chunks), gathered back in the original order on every process: one caption per image
    (ScoredCaption with `scored`), or a list of `num_captions` per image. A bar counts the images
    on the main process when there is more than one chunk.

    The commands' captioning (evaluate, compare) comes here, not to caption_images: that one also
    runs where only the main process calls it (align's report, `capalign.Captioner.caption`), where a
    collective would hang, and where each process needs every caption anyway (pair building,
    selection during training). Sampling (temperature > 0) draws differently on N processes."""
    state = process_state()
    chunks = caption_chunks(captioner, tokenizer, processor, images, options, scored)
    out: list = []
    if len(images) <= options.batch_size * state.num_processes or not state.is_main_process:  # one chunk: no bar
        for chunk in chunks:
            out.extend(chunk)
    else:
        with reporting.progress("captioning", len(images), stderr=True) as advance:
            for chunk in chunks:
                out.extend(chunk)
                advance(completed=len(out))
    return out if options.num_captions > 1 else [group[0] for group in out]


def caption_split(model_dir: Path, dataset, *, num_beams: int = 1, max_length: int | None = None, batch_size: int = 64,
                  device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                  options: DecodeOptions | None = None) -> dict[str, str]:
    """Caption every image of a prepared split with a run folder's model (in `dtype`), shared out
    between the launch's processes (caption_sharded): image_id -> caption (the first, with
    `num_captions` > 1), on every process. `options`, when given, replaces the three decoding
    arguments."""
    captioner, tokenizer, processor = load_captioner(model_dir, device, dtype)
    if options is None:
        options = DecodeOptions(num_beams=num_beams, max_length=max_length, batch_size=batch_size)
    captions = caption_sharded(captioner, tokenizer, processor, dataset["image"], options)
    if options.num_captions > 1:
        captions = [group[0] for group in captions]
    return dict(zip(dataset["image_id"], captions))
