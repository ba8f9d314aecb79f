"""BERTScore through the bert-score package (Zhang et al. 2020), max over references per caption.

Default: bert-score's English model, roberta-large, layer 17, with its published baseline rescaling.
Any local model: `bertscore_model=PATH, bertscore_layer=N` (no rescaling unless a baseline .tsv is given).
Hub names resolve to the local Hugging Face cache only (fail fast offline, never retry).
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import version
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

from capalign.errors import ConfigError
from capalign.metrics.types import EvaluationResult, MetricOptions
from capalign.models import guard
from capalign.models.guard import NO_REMOTE_CODE

DEFAULT_MODEL = "roberta-large"
HINT = "pass a valid --bertscore-model folder"
CHUNK = 2048  # captions per bert-score call: it keeps every token embedding of a call alive


def _packaged_baseline(name: str) -> str | None:
    import bert_score  # deferred: bert-score imports pandas and more; only BERTScore needs it

    path = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{name}.tsv"
    return str(path) if path.is_file() else None


def resolve_model(model: str | None, layer: int | None, baseline: str | None) -> tuple[str, int, str | None, str]:
    """(local model dir, layer, baseline path or None, display label). Raises FileNotFoundError with a
    one-line message when a hub model is not cached; ConfigError for a local model without a layer."""
    from bert_score.utils import model2layers  # deferred: as bert_score above

    name = model or DEFAULT_MODEL
    if Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser().resolve())
        if layer is None:
            raise ConfigError(f"--bertscore-layer N is required with a local --bertscore-model ({name})")
        base = baseline
    else:
        try:
            path = snapshot_download(name, local_files_only=True)
        except Exception:
            raise FileNotFoundError(
                f"BERTScore model '{name}' is not on this machine; run `capalign fetch --model {name}` on a "
                "connected machine, or pass --bertscore-model PATH --bertscore-layer N"
            ) from None
        if layer is None:
            if name not in model2layers:
                raise ConfigError(f"--bertscore-layer N is required for {name} (bert-score has no default layer)")
            layer = model2layers[name]
        base = baseline or _packaged_baseline(name)
    # bert-score loads with AutoModel / AutoTokenizer and no trust_remote_code: refuse a folder that
    # would make transformers ask to run its code (or is damaged) before bert-score sees it.
    guard.check_folder(Path(path), HINT)
    scaling = f"rescaled with baseline {Path(base).name}" if base else "no baseline rescaling"
    label = f"bert-score {_version()}: {name}, layer {layer}, {scaling}"
    return path, layer, base, label


def _version() -> str:
    return version("bert-score")


@functools.lru_cache(maxsize=2)
def _scorer(path: str, layer: int, baseline: str | None, device: str | None):
    from bert_score import BERTScorer  # deferred: as bert_score above

    with guard.loading(path, HINT):
        scorer = BERTScorer(
            model_type=path, num_layers=layer, lang="en", rescale_with_baseline=baseline is not None,
            baseline_path=baseline, device=device,
        )
        scorer._tokenizer = fix_prefix_space(scorer._tokenizer, path)
    return scorer


def fix_prefix_space(tokenizer, path: str):
    """bert-score encodes RoBERTa/GPT-2 text with `encode(..., add_prefix_space=True)`; transformers 5
    ignores that keyword, so reload the tokenizer with a prefix space to get bert-score's tokens."""
    if not isinstance(tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
        return tokenizer
    probe = "a"
    if tokenizer.encode(probe, add_prefix_space=True) == tokenizer.encode(" " + probe):
        return tokenizer
    return AutoTokenizer.from_pretrained(path, use_fast=False, add_prefix_space=True, local_files_only=True,
                                         **NO_REMOTE_CODE)


def score_bertscore(
    candidates: dict[str, str], references: dict[str, list[str]], result: EvaluationResult, options: MetricOptions
) -> None:
    """Fill BERTScore-F1 (corpus = mean of per-caption F1) or report it missing with the reason."""
    try:
        path, layer, baseline, label = resolve_model(
            options.bertscore_model, options.bertscore_layer, options.bertscore_baseline
        )
    except FileNotFoundError as exc:
        result.missing["BERTScore-F1"] = str(exc)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ids = list(candidates)
    scorer = _scorer(path, layer, baseline, options.device)
    parts = []  # without idf weighting each caption's F1 depends on its own references only: chunks change nothing
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        parts.append(scorer.score([candidates[i] for i in chunk], [references[i] for i in chunk],
                                  batch_size=options.batch_size)[2])
    f1 = torch.cat(parts)
    per = dict(zip(ids, f1.tolist()))
    result.summary["BERTScore-F1"] = float(f1.mean())
    result.add_per_image("BERTScore-F1", per)
    result.scorers["BERTScore-F1"] = label
