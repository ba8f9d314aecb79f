"""Losses: captioning cross-entropy, InfoNCE, sequence log-probs and the DPO family (TRL's definitions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over real (non -100) label tokens; logits[t] predicts labels[t]."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / NT-Xent form) over L2-normalised embeddings; pair i matches i.

    The temperature is learnable (`logit_scale` is its log inverse), clamped at 100 as in CLIP.
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ text_emb.t()
    targets = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence sum (or mean) of token log-probabilities of `labels` (-100 ignored)."""
    mask = labels != -100
    safe = labels.masked_fill(~mask, 0)
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and the implicit rewards (chosen, rejected), as TRL defines them.

    logits = (pi_c - pi_r) - (ref_c - ref_r)
    sigmoid: -logsigmoid(beta * logits) (with label smoothing eps: conservative DPO);
    robust:  (-(1-eps) logsigmoid(beta*logits) + eps logsigmoid(-beta*logits)) / (1 - 2 eps) (Chowdhury et al.);
    hinge:   relu(1 - beta * logits);  ipo: (logits - 1/(2 beta))^2 (pass length-averaged log-probs).
    """
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss_type}")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards
