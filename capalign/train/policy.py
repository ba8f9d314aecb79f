"""What both stage-2 methods (DPO and SCST) do to the policy before and after training: dropout off,
LoRA adapters on the decoder, and folding them back in."""

from __future__ import annotations

import torch

from capalign.errors import InputError, MissingError


def disable_dropout(module: torch.nn.Module) -> None:
    """Set every dropout rate to 0 (the saved config keeps the model's own rates)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
        elif isinstance(getattr(layer, "dropout", None), float):  # attention dropout kept as a rate (CLIP)
            layer.dropout = 0.0


def add_lora(policy, rank: int) -> None:
    """Freeze the captioner and train rank-`rank` LoRA adapters on its decoder (peft's default
    target modules for the decoder's architecture)."""
    try:
        from peft import LoraConfig, get_peft_model  # deferred: peft is needed only with --lora-rank
    except ImportError:
        raise MissingError("--lora-rank needs peft: pip install peft.") from None
    policy.requires_grad_(False)
    try:
        policy.set_decoder(get_peft_model(policy.decoder, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0)))
    except ValueError as exc:
        raise InputError(f"LoRA cannot wrap this decoder: {str(exc).splitlines()[0]}") from None


def merge_lora(policy) -> None:
    """Fold trained adapters back into the decoder, so the run folder is a plain model again."""
    if hasattr(policy.decoder, "merge_and_unload"):
        policy.set_decoder(policy.decoder.merge_and_unload())
