"""capalign against plain transformers on the same model: captioning images/s and pretraining samples/s;
and the seconds align spends building one round's preference pairs.

    python bench/bench_gpu.py [--device cpu|cuda] [--preset clip-gpt2] [--images 64] [--steps 20]
                              [--batch-size 16] [--max-length 16] [--repeats 3] [--peak-tflops 989]
                              [--pair-images 3199]

(a) Captioning: capalign's `caption_images` against `VisionEncoderDecoderModel.generate` called directly,
on the same images, beam 3, same batch size and maximum length (both after a warm-up batch, in
alternating repeats; the median). The baseline model is the run folder loaded with plain
transformers (`VisionEncoderDecoderModel.from_pretrained`).
(b) Pretraining: capalign's `pretrain` (captioning loss only: `contrastive_weight 0`; every part trained
from pixels, no feature cache) against `transformers.Seq2SeqTrainer` on the same
VisionEncoderDecoderModel, with the same batches, steps, learning rate, loader workers and precision
(bf16 on CUDA, fp32 on the CPU), after one warm-up run of each, in alternating repeats (the median).
Each side's own throughput figure is used: capalign's samples_per_s (metrics.jsonl) and the trainer's
train_samples_per_second; both include their first step, so use enough `--steps`.

The model: `--device cpu` (the default without a GPU) builds a small CLIP ViT + GPT-2 from config;
`--device cuda` builds the published sizes (`CLIPVisionConfig()`: ViT-B/32 at 224 px, `GPT2Config()`:
GPT-2 124M, cross-attention on) with random weights (speed does not depend on them) and also reports
peak GPU memory and the training's model FLOPs utilisation: 6 · params · tokens per second (vision
params × image tokens + decoder params × caption tokens) over `--peak-tflops` (989: H100 bf16 dense).
Images: the shapes dataset; prints ratios capalign / transformers (goal: ≥ 1.0).
(c) Pair building: align's own `round_pairs` for round 1 on the first `--pair-images` training images
(plus up to 256 validation images for held-out pairs) with the pretrained run of (b) as policy, scorer
and reference: greedy + 4 sampled captions per image, ranking, the reference's log-probs (goal on one
H100: under 60 s for 3,199 training images). Random weights rarely stop early, so every candidate runs
to the maximum length: an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_backbones(root: Path, captions: list[str], real_size: bool) -> tuple[Path, Path]:
    """Random-weight vision and decoder folders (with an image processor and a word tokenizer)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2LMHeadModel

    from capalign.config import ModelConfig
    from capalign.models.build import build_image_processor
    from capalign.models.tokenizer import train_word_tokenizer

    tokenizer = train_word_tokenizer(captions)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if real_size:
        vision_config, decoder_config, size = CLIPVisionConfig(), GPT2Config(**ids), 224
    else:
        size = 64
        vision_config = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=size, patch_size=16)
        decoder_config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2, n_positions=64, **ids)
    vision_dir, decoder_dir = root / "vision", root / "decoder"
    CLIPVisionModel(vision_config).save_pretrained(vision_dir)
    build_image_processor(ModelConfig(image_size=size)).save_pretrained(vision_dir)
    GPT2LMHeadModel(decoder_config).save_pretrained(decoder_dir)
    tokenizer.save_pretrained(decoder_dir)
    return vision_dir, decoder_dir


def capalign_pretrain(args, data: Path, vision: Path, decoder: Path, out: Path, precision: str) -> tuple[float, Path, float]:
    """(samples/s of capalign's training loop, the run folder, its learning rate)."""
    from capalign.config import build_config
    from capalign.train.pretrain import pretrain

    config = build_config(args.preset, overrides={
        "data": str(data),
        "model": {"vision": str(vision), "decoder": str(decoder), "freeze_vision": False, "max_caption_tokens": args.max_length},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "contrastive_weight": 0.0,
                  "feature_cache": False, "mixed_precision": precision, "device": args.device, "select": "none",
                  "log_every": args.steps, "eval_every": 10 * args.steps, "checkpoint_every": 10 * args.steps},
    })
    run = pretrain(config, out, overwrite=True)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    return last["samples_per_s"], run, config.train.lr


def transformers_pretrain(args, data: Path, run: Path, out: Path, precision: str, lr: float) -> float:
    """Samples/s of Seq2SeqTrainer on the same VisionEncoderDecoderModel (the run's initial weights are
    not needed: the speed is the same), same batches, steps and loader workers."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments, \
        VisionEncoderDecoderModel

    from capalign.data.collate import CaptionCollator, CaptionPairs
    from capalign.data.store import load_prepared
    from capalign.train.engine import loader_workers

    model = VisionEncoderDecoderModel.from_pretrained(run)
    tokenizer, processor = AutoTokenizer.from_pretrained(run), AutoImageProcessor.from_pretrained(run)
    collate = CaptionCollator(tokenizer, processor, args.max_length)
    workers = loader_workers(torch.device(args.device), augment=False)["num_workers"]
    training = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=int(0.05 * args.steps), weight_decay=0.01, max_grad_norm=1.0, seed=0,
        dataloader_num_workers=workers, dataloader_pin_memory=args.device == "cuda", bf16=precision == "bf16",
        use_cpu=args.device == "cpu", save_strategy="no", report_to=[], logging_steps=args.steps,
        remove_unused_columns=False, disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=training, train_dataset=CaptionPairs(load_prepared(str(data))["train"]),
                             data_collator=lambda items: {k: v for k, v in collate(items).items() if k in ("pixel_values", "labels")})
    return trainer.train().metrics["train_samples_per_second"]


def caption_rates(args, run: Path, images: list, dtype) -> dict[str, float]:
    """Median images/s of capalign's caption_images and of plain VisionEncoderDecoderModel.generate."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    from capalign.inference.generate import DecodeOptions, caption_images
    from capalign.models.io import load_captioner

    device = torch.device(args.device)
    captioner, tokenizer, processor = load_captioner(run, device, dtype)
    plain = VisionEncoderDecoderModel.from_pretrained(run, dtype=dtype).to(device).eval()
    plain_tokenizer, plain_processor = AutoTokenizer.from_pretrained(run), AutoImageProcessor.from_pretrained(run)
    options = DecodeOptions(num_beams=3, max_length=args.max_length, batch_size=args.batch_size)

    @torch.no_grad()
    def transformers_captions(chunk_images):
        out = []
        for start in range(0, len(chunk_images), args.batch_size):
            chunk = chunk_images[start : start + args.batch_size]
            pixels = plain_processor(images=chunk, return_tensors="pt").pixel_values.to(device, dtype)
            ids = plain.generate(pixel_values=pixels, num_beams=3, max_new_tokens=args.max_length, do_sample=False)
            out.extend(plain_tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out

    runners = {"capalign": lambda ims: caption_images(captioner, tokenizer, processor, ims, options),
               "transformers": transformers_captions}
    times: dict[str, list[float]] = {name: [] for name in runners}
    memory: dict[str, float] = {}
    for name, run_it in runners.items():
        run_it(images[: args.batch_size])  # warm-up
    for _ in range(args.repeats):
        for name, run_it in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            run_it(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
                memory[name] = torch.cuda.max_memory_allocated() / 2**30
            times[name].append(time.perf_counter() - started)
    rates = {name: len(images) / statistics.median(t) for name, t in times.items()}
    return rates, memory


def pair_building(args, run: Path, data: Path) -> tuple[float, int, int]:
    """(seconds, pairs made, training images) of align's round-1 pair building with `run` as the policy."""
    import torch

    from capalign.config import load_config
    from capalign.data.store import load_prepared
    from capalign.models.io import load_captioner
    from capalign.pairs.dataset import PairBatchMaker
    from capalign.runs import CONFIG_NAME
    from capalign.train.align import round_pairs

    device = torch.device(args.device)
    config = load_config(run / CONFIG_NAME)
    dataset = load_prepared(str(data))
    dataset["train"] = dataset["train"].select(range(min(args.pair_images, len(dataset["train"]))))
    policy, tokenizer, processor = load_captioner(run, device)
    pretrained = load_captioner(run, device)[0].eval().requires_grad_(False)
    collate = PairBatchMaker(tokenizer, processor, config.model.max_caption_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_pairs, held_out = round_pairs(policy, pretrained, pretrained, tokenizer, processor, dataset, config, collate, 0, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, len(train_pairs) + len(held_out or []), len(dataset["train"])


def training_mfu(run: Path, samples_per_s: float, data: Path, max_length: int, peak_tflops: float) -> float:
    """6 · (vision params × image tokens + decoder params × caption tokens) · samples/s over the peak."""
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    from capalign.data.store import load_prepared

    model = VisionEncoderDecoderModel.from_pretrained(run)
    vision = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    config = model.config.encoder
    image_tokens = (config.image_size // config.patch_size) ** 2 + 1
    tokenizer = AutoTokenizer.from_pretrained(run)
    captions = [c for caps in load_prepared(str(data))["train"]["captions"][:200] for c in caps]
    caption_tokens = statistics.mean(min(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1, max_length) for c in captions)
    return 6 * (vision * image_tokens + decoder * caption_tokens) * samples_per_s / (peak_tflops * 1e12)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=["clip-gpt2"], default="clip-gpt2")
    parser.add_argument("--images", type=int, default=None, help="images captioned (default: 64 on cpu, 512 on cuda)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 10 on cpu, 100 on cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on cpu, 64 on cuda")
    parser.add_argument("--max-length", type=int, default=16, help="most caption tokens (training and generation)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's peak (989: H100 bf16 dense)")
    parser.add_argument("--pair-images", type=int, default=None, help="training images for (c) (default: 48 on cpu, 3199 on cuda)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.images = args.images or (512 if cuda else 64)
    args.steps = args.steps or (100 if cuda else 10)
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.pair_images = args.pair_images or (3199 if cuda else 48)

    import transformers

    transformers.logging.set_verbosity_error()
    from capalign.data.store import prepare_shapes

    precision, dtype = ("bf16", torch.bfloat16) if cuda else ("no", torch.float32)
    scratch = tempfile.TemporaryDirectory(prefix="capalign-bench-gpu-")  # removed when the bench ends
    root = Path(scratch.name)
    data = root / "shapes"
    limit = max(args.images, args.batch_size * 4, args.pair_images + 4) * 10 // 8  # the train split holds about 80 %
    dataset = prepare_shapes(data, limit=limit, seed=0)
    vision, decoder = build_backbones(root, [c for caps in dataset["train"]["captions"] for c in caps], real_size=cuda)
    torch.manual_seed(0)

    _, run, lr = capalign_pretrain(args, data, vision, decoder, root / "run", precision)  # warm-up: one-off costs
    transformers_pretrain(args, data, run, root / "hf", precision, lr)                   # land on neither side
    rates: dict[str, list[float]] = {"capalign": [], "Seq2SeqTrainer": []}
    train_memory: dict[str, float] = {}
    for _ in range(args.repeats):  # alternating, so the machine's noise hits both alike
        for name in rates:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if name == "capalign":
                rates[name].append(capalign_pretrain(args, data, vision, decoder, root / "run", precision)[0])
            else:
                rates[name].append(transformers_pretrain(args, data, run, root / "hf", precision, lr))
            if cuda:
                train_memory[name] = torch.cuda.max_memory_allocated() / 2**30
    capalign_rate, hf_rate = (statistics.median(rates[name]) for name in rates)
    images = list(dataset["train"]["image"][: args.images])
    caption, caption_memory = caption_rates(args, run, images, dtype)
    pair_seconds, pairs_made, pair_images = pair_building(args, run, data)

    print(f"bench_gpu: {args.preset}-shaped model ({'published sizes' if cuda else 'small'}, random weights) on "
          f"{args.device}, {precision if cuda else 'fp32'}; batch {args.batch_size}, max length {args.max_length}")
    print(f"(a) captioning {len(images)} images, beam 3 (median of {args.repeats}): capalign {caption['capalign']:.1f} "
          f"images/s, transformers generate {caption['transformers']:.1f} images/s, "
          f"ratio {caption['capalign'] / caption['transformers']:.2f}")
    print(f"(b) pretraining {args.steps} steps, captioning loss only (median of {args.repeats}): capalign {capalign_rate:.1f} samples/s, "
          f"Seq2SeqTrainer {hf_rate:.1f} samples/s, ratio {capalign_rate / hf_rate:.2f}")
    print(f"(c) align's pair building, round 1: {pair_images} training images (+ held-out from validation), "
          f"{pairs_made} pairs in {pair_seconds:.1f} s")
    if cuda:
        print(f"peak GPU memory: captioning capalign {caption_memory['capalign']:.2f} GiB, transformers "
              f"{caption_memory['transformers']:.2f} GiB; training capalign {train_memory['capalign']:.2f} GiB, "
              f"Seq2SeqTrainer {train_memory['Seq2SeqTrainer']:.2f} GiB")
        mfu = {name: training_mfu(run, rate, data, args.max_length, args.peak_tflops)
               for name, rate in (("capalign", capalign_rate), ("Seq2SeqTrainer", hf_rate))}
        print("training MFU (of {:.0f} TFLOPs): ".format(args.peak_tflops)
              + ", ".join(f"{name} {100 * value:.1f}%" for name, value in mfu.items()))


if __name__ == "__main__":
    main()
