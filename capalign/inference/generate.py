"""Batched captioning with the KV cache: greedy, beam search or sampling, with transformers' decoding
controls (top-k, top-p, repetition penalty, no-repeat n-grams, length penalty, min/max new tokens) and
several captions per image."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from accelerate.utils import gather_object

from capalign import reporting
from capalign.data.collate import pixel_values
from capalign.data.images import Unreadable
from capalign.distributed import process_state
from capalign.errors import ConfigError
from capalign.models.io import load_captioner

# Beam search keeps batch × beams sequences (and their logits over the vocabulary) in memory; far
# fewer beams than this already give the best captions, so a larger width is a typo, not a setting.
MAX_NUM_BEAMS = 100
MAX_NUM_CAPTIONS = 100  # the same bound for sampled captions per image: batch × N rows decode at once


def _whole(value, option: str, low: int, high: int | None = None, what: str = "") -> None:
    """Refuse a non-integer or out-of-range value, naming the option and the allowed range."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"between {low} and {high}" if high is not None else f"a whole number of at least {low}"
        raise ConfigError(f"{option} must be {allowed}{what}, got {value}.")


@dataclass
class DecodeOptions:
    """How captions are decoded; `temperature` > 0 turns on sampling; `max_length` (the most new
    tokens) None: the model's own caption length (its generation config, set from
    `model.max_caption_tokens`). `top_k` 0 and `top_p` 1 filter nothing; `repetition_penalty` 1,
    `no_repeat_ngram_size` 0 and `length_penalty` 1 change nothing; `num_captions` > 1 returns that
    many captions per image (the best beams, best first, or independent samples).

    The one place decoding settings are checked (the CLI's options and capalign.Captioner's
    arguments alike): out-of-range values are a ConfigError naming the option and the allowed range,
    here for what needs no model, in `check_model` for what depends on the model."""

    num_beams: int = 1
    max_length: int | None = None
    temperature: float = 0.0
    batch_size: int = 64
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    min_new_tokens: int = 0
    num_captions: int = 1

    def __post_init__(self) -> None:
        _whole(self.num_beams, "--num-beams", 1, MAX_NUM_BEAMS)
        if self.max_length is not None:
            _whole(self.max_length, "--max-length", 1)
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature must be a finite number of at least 0 (0 = no sampling), got {self.temperature}.")
        _whole(self.batch_size, "--batch-size", 1)
        _whole(self.top_k, "--top-k", 0, what=" (0 = no top-k filtering)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):  # NaN fails both comparisons
            raise ConfigError(f"--top-p must be above 0 and at most 1 (1 = no nucleus filtering), got {self.top_p}.")
        if (self.top_k or self.top_p < 1) and not self.sampling:
            raise ConfigError("--top-k and --top-p filter what sampling draws from; add --temperature above 0 (e.g. 1).")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ConfigError(f"--repetition-penalty must be a finite number above 0 (1 = none), got {self.repetition_penalty}.")
        _whole(self.no_repeat_ngram_size, "--no-repeat-ngram-size", 0, what=" (0 = off)")
        if not (isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)):
            raise ConfigError(f"--length-penalty must be a finite number (1 = none), got {self.length_penalty}.")
        if self.length_penalty != 1 and self.num_beams == 1:
            raise ConfigError("--length-penalty scores finished beams; it needs --num-beams 2 or more.")
        _whole(self.min_new_tokens, "--min-new-tokens", 0, self.max_length,
               what=" (at most --max-length)" if self.max_length is not None else "")
        if self.num_beams > 1:
            _whole(self.num_captions, "--num-captions", 1, self.num_beams, what=" (at most --num-beams)")
        elif self.sampling:
            _whole(self.num_captions, "--num-captions", 1, MAX_NUM_CAPTIONS)
        elif self.num_captions != 1:
            _whole(self.num_captions, "--num-captions", 1, MAX_NUM_CAPTIONS)
            raise ConfigError(f"--num-captions {self.num_captions}: greedy decoding gives one caption; use "
                              f"--num-beams {self.num_captions} or more, or --temperature above 0.")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def settings(self) -> dict:
        """What decides the captions (everything but the batch size), as plain JSON values."""
        values = asdict(self)
        del values["batch_size"]
        return values

    def check_model(self, captioner) -> None:
        """Refuse more new tokens than the decoder has positions left after its prompt (the image
        prefix, or the start token), more beams than it has tokens to start them with, and a minimum
        above the model's own caption length when --max-length is not given."""
        decoder = getattr(captioner.model, "decoder", None)
        if decoder is None:  # contrastive-only: generate() says it cannot caption
            return
        config = decoder.config
        if self.num_beams > config.vocab_size:
            raise ConfigError(f"--num-beams must be between 1 and {config.vocab_size} for this model (its vocabulary "
                              f"size), got {self.num_beams}.")
        positions = getattr(config, "max_position_embeddings", None)
        mapper = getattr(captioner.model, "mapper", None)
        prompt = mapper.prefix_length if mapper is not None else 1
        if self.max_length is not None and positions is not None and self.max_length > positions - prompt:
            raise ConfigError(f"--max-length must be between 1 and {positions - prompt} for this model ({positions} "
                              f"positions, {prompt} taken by the prompt), got {self.max_length}.")
        default = getattr(captioner.model.generation_config, "max_new_tokens", None)
        if self.max_length is None and default is not None and self.min_new_tokens > default:
            raise ConfigError(f"--min-new-tokens must be between 0 and {default} (this model's caption length; raise "
                              f"--max-length to allow more), got {self.min_new_tokens}.")

    def generate_kwargs(self) -> dict:
        """The matching keyword arguments of transformers' `generate`."""
        kwargs = {"num_beams": self.num_beams, "num_return_sequences": self.num_captions}
        if self.max_length is not None:
            kwargs["max_new_tokens"] = self.max_length
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.repetition_penalty != 1:
            kwargs["repetition_penalty"] = float(self.repetition_penalty)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.num_beams > 1:
            kwargs["length_penalty"] = float(self.length_penalty)
        if self.sampling:
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_k=self.top_k, top_p=float(self.top_p))
        else:
            kwargs.update(do_sample=False)
        return kwargs


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
