"""Stage 2, `--method scst`: self-critical sequence training (Rennie et al. 2017).

Each step samples `num_samples` captions per training image from the policy (ancestral sampling
from torch's RNG, so a resumed run draws what an uninterrupted one would), scores them with the
reward (`align.reward`: a weighted sum of CIDEr-D, CLIPScore with the pretrained run's contrastive
head, and a hallucination count), and follows the policy gradient

    loss = -mean_k[(r_k - b_k) * sum_t log p(w_kt)] + beta * KL + contrastive_weight * InfoNCE
           + sft_weight * CE(references)

with baseline b_k the mean reward of the image's other samples (`mean`, as RLOO / "new SCST") or the
reward of the greedy caption (`greedy`, classic SCST). KL is the per-token k3 estimate
exp(d) - d - 1, d = log p_ref - log p, on the sampled tokens against the frozen pretrained model
(GRPO's form: non-negative, and its gradient pulls towards the reference); beta 0 turns it off.
The InfoNCE term on (image, its first reference) keeps the contrastive head matched, as in DPO; the
optional cross-entropy on every reference of the image (`sft_weight`) is the mixed ML + RL objective
(Paulus et al. 2018), which keeps the sampled policy anchored to human captions.

On a streamed --data (webdataset shards, or --streaming; capalign.data.streaming) the engine reads
capalign.data.streaming.TrainingStream with each image's references, so memory holds the shuffle
buffer, not the data. CIDEr-D's document frequencies are computed once, before training, from the
references of the first STREAM_DF_SAMPLES samples in shard order; each batch's images are scored
against their own references with them. The hallucination term (no ground-truth objects in a
stream) and --reward-clip (it embeds each dataset row once) are refused on a stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset

from capalign.config import RunConfig, parse_reward
from capalign.data.collate import pixel_values, tokenize_captions
from capalign.data.shapes import find_hallucinations
from capalign.data.streaming import TrainingStream
from capalign.distributed import process_state
from capalign.errors import ConfigError, InputError
from capalign.inference.generate import DecodeOptions, caption_images
from capalign.inference.scorer import RunScorer
from capalign.losses import token_cross_entropy
from capalign.metrics.cider_reward import CiderD
from capalign.metrics.clipscore import PROMPT as CLIP_PROMPT, W as CLIP_W, load_clip
from capalign.reporting import log
from capalign.runs import finish_run, new_run_dir
from capalign.train import stage2
from capalign.train.engine import Engine
from capalign.train.stage2 import Start
from capalign.train.stages import clear_stage


STREAM_DF_SAMPLES = 10_000  # a streamed run's CIDEr-D document frequencies come from this many samples' references

# A reward term: (dataset rows, batch positions of the images, captions, pixel values, each caption's
# references on a stream else None) -> one reward per caption.
RewardFn = Callable[[list[int], torch.Tensor, list[str], torch.Tensor, list | None], torch.Tensor]


@dataclass
class RewardContext:
    """What the reward terms are built from: the training split (or TrainingStream) and the frozen
    pretrained model."""

    split: object
    pretrained: torch.nn.Module
    tokenizer: object
    processor: object
    clip: str | None = None  # align.reward_clip: a CLIP model judges clipscore instead of the run's head


def cider_reward(context: RewardContext) -> RewardFn:
    """CIDEr-D against each image's references, document frequencies over the whole training split
    (a stream: over its first STREAM_DF_SAMPLES samples)."""
    scorer = CiderD(document_frequency_references(context.split))

    def reward(rows, positions, captions, pixels, references=None):
        values = scorer.scores(rows, captions) if references is None else scorer.scores_against(references, captions)
        return torch.tensor(values, dtype=torch.float32)

    return reward


def document_frequency_references(split) -> list[list[str]]:
    """The reference sets CIDEr-D's document frequencies count: every training image's, or a
    stream's first STREAM_DF_SAMPLES samples' (read once, before training)."""
    if not isinstance(split, TrainingStream):
        return [list(c) for c in split["captions"]]
    references = list(split.reference_sets(STREAM_DF_SAMPLES))
    log.info(f"CIDEr-D document frequencies from the references of the first {len(references)} streamed samples.")
    return references


def clipscore_reward(context: RewardContext) -> RewardFn:
    """CLIP-S = 2.5 max(cos, 0) with the CLIP model `context.clip` names, or else the pretrained run's
    contrastive head (frozen: the policy cannot move its own judge)."""
    if context.clip is not None:
        return clip_model_reward(context.split, context.clip)
    model = context.pretrained
    if model.head is None:
        raise ConfigError("--reward clipscore needs a run with a contrastive head; this pretrained run has none "
                          "(use --reward cider).")
    scorer = RunScorer(model, context.tokenizer, context.processor)

    def reward(rows, positions, captions, pixels, references=None):
        with torch.no_grad():
            images = model.head.embed_image(model.encode_images(pixels).pooler_output).float()
            texts = scorer.embed_texts(captions)
        cosines = (images[positions.to(images.device)] * texts).sum(-1)
        return (CLIP_W * cosines.clamp(min=0)).cpu()

    return reward


def clip_model_reward(split, name_or_path: str) -> RewardFn:
    """CLIP-S as capalign.metrics.clipscore scores it (prompt "A photo depicts", w 2.5) with a CLIP
    model; each training image is embedded once, when it is first drawn."""
    scorer = load_clip(name_or_path)
    embedded: dict[int, torch.Tensor] = {}

    def reward(rows, positions, captions, pixels, references=None):
        fresh = [r for r in dict.fromkeys(rows) if r not in embedded]
        if fresh:
            embedded.update(zip(fresh, scorer.embed_images([split[r]["image"] for r in fresh])))
        images = torch.stack([embedded[r] for r in rows])  # `rows`: each caption's image
        texts = scorer.embed_texts([f"{CLIP_PROMPT} {c}" for c in captions])
        return CLIP_W * (images * texts).sum(-1).clamp(min=0)

    return reward


def hallucination_reward(context: RewardContext) -> RewardFn:
    """The number of hallucinated mentions in each caption (exact: shapes' ground-truth objects)."""
    if "objects" not in context.split.column_names:
        raise ConfigError("--reward hallucination needs each image's ground-truth objects (the shapes data has them); "
                          "this dataset has no objects column.")
    objects = list(context.split["objects"])

    def reward(rows, positions, captions, pixels, references=None):
        return torch.tensor([float(len(find_hallucinations(c, objects[r]))) for r, c in zip(rows, captions)])

    return reward


REWARD_BUILDERS: dict[str, Callable[[RewardContext], RewardFn]] = {
    "cider": cider_reward, "clipscore": clipscore_reward, "hallucination": hallucination_reward,
}


class WeightedReward:
    """The weighted sum of `align.reward`'s terms, with each term's mean kept for the logs."""

    def __init__(self, spec: str, context: RewardContext):
        self.weights = parse_reward(spec)
        self.terms = {name: REWARD_BUILDERS[name](context) for name in self.weights}

    def __call__(self, rows, positions, captions, pixels, references=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, parts = torch.zeros(len(captions)), {}
        for name, weight in self.weights.items():
            values = self.terms[name](rows, positions, captions, pixels, references).float().cpu()
            parts[f"reward/{name}"] = values.mean()
            total = total + weight * values
        return total, parts


class TrainingImages(Dataset):
    """The training split's rows, by index (the batch maker loads their images)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> int:
        return i


class ImageBatchMaker:
    """Rows → {"index", "pixel_values"}; for the contrastive term, each image's first reference
    tokenised for the text side; for the supervised term (`reference_labels`: captions -> labels),
    every reference slot as labels, row i*B + b holding reference i of image b (an image with fewer
    references repeats them in turn)."""

    def __init__(self, split, processor, text_inputs=None, reference_labels=None):
        self.split, self.processor, self.text_inputs = split, processor, text_inputs
        self.reference_labels = reference_labels

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        chosen = self.split.select(rows)
        return image_batch(torch.tensor(rows), pixel_values(self.processor, list(chosen["image"])),
                           list(chosen["captions"]), self.text_inputs, self.reference_labels)


class StreamImageBatchMaker:
    """A stream's (image, references) items → ImageBatchMaker's batch, its "index" the positions in
    the batch, plus the "references" themselves (a streamed image has no dataset row)."""

    def __init__(self, processor, text_inputs=None, reference_labels=None):
        self.processor, self.text_inputs, self.reference_labels = processor, text_inputs, reference_labels

    def __call__(self, items: list[tuple]) -> dict:
        images, references = zip(*items)
        references = [list(r) for r in references]
        batch = image_batch(torch.arange(len(items)), pixel_values(self.processor, list(images)), references,
                            self.text_inputs, self.reference_labels)
        batch["references"] = references
        return batch


def image_batch(index: torch.Tensor, pixels: torch.Tensor, references: list[list[str]], text_inputs,
                reference_labels) -> dict:
    """{"index", "pixel_values"} and the contrastive / supervised terms' inputs (see ImageBatchMaker)."""
    batch = {"index": index, "pixel_values": pixels}
    if text_inputs is not None:
        text = text_inputs([c[0] for c in references])
        batch["text_input_ids"], batch["text_attention_mask"] = text["input_ids"], text["attention_mask"]
    if reference_labels is not None:
        slots = max(len(c) for c in references)
        batch["reference_labels"] = reference_labels([c[i % len(c)] for i in range(slots) for c in references])
    return batch


def check_stream_rewards(spec: str, reward_clip: str | None) -> None:
    """Refuse, before anything loads, the reward terms a streamed source cannot feed."""
    if "hallucination" in parse_reward(spec):
        raise ConfigError("--reward hallucination needs each image's ground-truth objects, which a streamed source "
                          "does not carry; drop the term or fetch the data first (capalign fetch).")
    if "clipscore" in parse_reward(spec) and reward_clip is not None:
        raise ConfigError("--reward-clip embeds each dataset image once, which a streamed source has no rows for; "
                          "leave it unset (the run's own head judges clipscore) or fetch the data first.")


def _each(values: list | None, positions: Iterable[int]) -> list | None:
    return None if values is None else [values[p] for p in positions]


def sample_labels(sequences: torch.Tensor, prompt: int, eos: int) -> torch.Tensor:
    """Generated ids → labels: the new tokens up to and including the first EOS, -100 after it."""
    labels = sequences[:, prompt:].clone()
    is_eos = labels == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return labels.masked_fill(after, -100)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label token (0 where the label is -100)."""
    mask = labels != -100
    picked = torch.gather(logits.float().log_softmax(-1), 2, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def scst_loss_fn(reward: WeightedReward, reference, tokenizer, num_samples: int, baseline: str, beta: float,
                 contrastive_weight: float = 0.0, sft_weight: float = 0.0):
    """The SCST objective (see the module docstring) with its logs: reward mean / std, advantage
    mean / mean absolute value, the per-token KL estimate, sampled caption length in words, and the
    supervised term's cross-entropy when it is on."""
    eos = tokenizer.eos_token_id

    def decode(sequences, prompt):
        labels = sample_labels(sequences, prompt, eos)
        texts = tokenizer.batch_decode(labels.masked_fill(labels == -100, eos), skip_special_tokens=True)
        return labels, [t.strip() for t in texts]

    def loss_fn(module, batch):
        pixels, rows, stream_refs = batch["pixel_values"], batch["index"].tolist(), batch.get("references")
        prompt = module.prompt_tokens  # e.g. VisionEncoderDecoder's output starts with its decoder start token
        with torch.no_grad():
            sampled = module.generate(pixels, do_sample=True, top_k=0, num_beams=1, num_return_sequences=num_samples)
        labels, captions = decode(sampled, prompt)
        positions = torch.arange(len(rows)).repeat_interleave(num_samples)
        owners = [rows[p] for p in positions.tolist()]
        rewards, parts = reward(owners, positions, captions, pixels, _each(stream_refs, positions.tolist()))
        if baseline == "greedy":
            with torch.no_grad():
                greedy = module.generate(pixels, do_sample=False, num_beams=1)
            greedy_rewards, _ = reward(rows, torch.arange(len(rows)), decode(greedy, prompt)[1], pixels, stream_refs)
            base = greedy_rewards.repeat_interleave(num_samples)
        else:
            grouped = rewards.view(len(rows), num_samples)
            base = ((grouped.sum(1, keepdim=True) - grouped) / (num_samples - 1)).flatten()
        advantage = (rewards - base).to(pixels.device)
        labels = labels.to(pixels.device)
        mask = labels != -100

        encoded = module.encode_images(pixels)
        pooled = encoded.pooler_output
        sft = None
        if sft_weight and "reference_labels" in batch:
            references = batch["reference_labels"].to(pixels.device)
            sft = token_cross_entropy(module.caption_logits(encoded, references), references)
        encoded.last_hidden_state = encoded.last_hidden_state.repeat_interleave(num_samples, 0)
        logps = token_logps(module.caption_logits(encoded, labels), labels)
        loss = -(advantage * logps.sum(-1)).mean()
        with torch.no_grad():
            ref_encoded = reference.encode_images(pixels)
            ref_encoded.last_hidden_state = ref_encoded.last_hidden_state.repeat_interleave(num_samples, 0)
            ref_logps = token_logps(reference.caption_logits(ref_encoded, labels), labels)
        delta = ref_logps - logps
        kl = ((delta.exp() - delta - 1) * mask).sum() / mask.sum().clamp(min=1)
        if beta:
            loss = loss + beta * kl
        if sft is not None:
            loss = loss + sft_weight * sft
        logs = {
            "reward/mean": rewards.mean(), "reward/std": rewards.std() if len(rewards) > 1 else torch.tensor(0.0),
            "advantage/mean": advantage.detach().mean(), "advantage/abs": advantage.detach().abs().mean(),
            "kl": kl.detach(), "length": torch.tensor(sum(len(c.split()) for c in captions) / len(captions)),
            **(parts if len(parts) > 1 else {}), **({"sft_loss": sft.detach()} if sft is not None else {}),
        }
        if contrastive_weight and "text_input_ids" in batch:
            logs["contrastive_loss"] = stage2.contrastive_term(module, pooled, batch["text_input_ids"],
                                                               batch["text_attention_mask"])
            loss = loss + contrastive_weight * logs["contrastive_loss"]
        return loss, logs

    return loss_fn


def greedy_validation(split, tokenizer, processor, images: int):
    """Greedy captions of the first `images` validation images: their CIDEr-D (document frequencies
    from these references, as pycocoevalcap computes them) and mean length in words."""
    split = split.select(range(min(images, len(split))))
    pictures = list(split["image"])
    scorer = CiderD([list(c) for c in split["captions"]])

    def run(module) -> dict[str, float]:
        captions = caption_images(module, tokenizer, processor, pictures, DecodeOptions())
        scores = scorer.scores(list(range(len(captions))), captions)
        return {"val_cider": sum(scores) / len(scores),
                "val_length": sum(len(c.split()) for c in captions) / len(captions)}

    return run


def align_scst(model_dir: Path, config: RunConfig, dataset, start: Start, out: Path | None, resume: bool,
               overwrite: bool) -> Path:
    """Train `start.policy` (loaded and prepared by capalign.train.stage2) with SCST; writes the run folder."""
    a = config.align
    split = _training_split(config, dataset)
    reward = WeightedReward(a.reward, RewardContext(split, start.pretrained, start.tokenizer, start.processor,
                                                          a.reward_clip))
    run_dir = new_run_dir("align", out, resume=resume, overwrite=overwrite)
    main = process_state().is_main_process
    stage2.record_start(run_dir, config)
    images = "streamed training images" if isinstance(split, TrainingStream) else f"{len(split)} training images"
    log.info(f"SCST on {images}, {a.num_samples} samples each, reward {a.reward}, "
             f"baseline {a.baseline}, beta {a.beta}.")
    engine = _engine(config, dataset, split, start, reward, run_dir)
    if resume and engine.resume():
        log.info(f"Resumed from step {engine.state.step}.")
    engine.fit()
    policy = engine.unwrapped()
    engine.finish()
    if not main:
        return run_dir
    stage2.save_aligned(run_dir, policy, start, method="scst", reference=str(model_dir), data=str(config.data),
                        steps=engine.state.step, rounds=1, seed=config.train.seed, reward=a.reward, baseline=a.baseline,
                        num_samples=a.num_samples, beta=a.beta, contrastive_weight=start.contrastive_weight,
                        frozen=dict(policy.frozen))
    clear_stage(run_dir)
    stage2.report(run_dir, policy, start, dataset)
    return finish_run(run_dir)


def _training_split(config: RunConfig, dataset):
    """The images SCST samples captions for (a stream as it is)."""
    if isinstance(dataset.get("train"), TrainingStream):
        return dataset["train"]
    if "train" not in dataset or not len(dataset["train"]):
        raise InputError(f"{config.data} has no training images for --method scst.")
    return dataset["train"]


def _engine(config: RunConfig, dataset, split, start: Start, reward: WeightedReward, run_dir: Path) -> Engine:
    """The engine over the training images: SCST's loss against the frozen pretrained model, greedy
    validation on the validation split (when there is one)."""
    a = config.align
    labels = (lambda captions: tokenize_captions(start.tokenizer, captions, config.model.max_caption_tokens)["labels"]) \
        if a.sft_weight else None
    streamed = isinstance(split, TrainingStream)
    collate = StreamImageBatchMaker(start.processor, stage2.text_inputs(start), labels) if streamed \
        else ImageBatchMaker(split, start.processor, stage2.text_inputs(start), labels)
    loss_fn = scst_loss_fn(reward, start.pretrained, start.tokenizer, a.num_samples, a.baseline, a.beta,
                           start.contrastive_weight, a.sft_weight)
    validation = dataset["validation"] if "validation" in dataset and len(dataset["validation"]) else None
    return Engine(
        start.policy, loss_fn, split if streamed else TrainingImages(split), collate, config.align_engine(), run_dir,
        validate=greedy_validation(validation, start.tokenizer, start.processor, config.train.val_images)
        if validation is not None else None,
        description="scst", remedy="lower --lr or raise --beta", shown={"reward/mean": "reward"},
    )

