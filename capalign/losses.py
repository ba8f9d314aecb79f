"""Every objective: captioning cross-entropy, InfoNCE, seed 003's CLIP-guided terms (cosine alignment,
diversity), the stage-1 sum of them, sequence log-probs and the DPO family (TRL's definitions).

Stage 1 = caption_weight x caption CE + contrastive_weight x InfoNCE + cosine_weight x (1 - cosine)
+ diversity_weight x diversity; a weight of 0 turns a term off. Under multi-process training the terms
are reduced so that N processes equal one process with the same global batch (capalign.distributed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capalign import distributed


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, spread: bool = False) -> torch.Tensor:
    """Mean cross-entropy over real (non -100) tokens; logits[t] predicts labels[t]. `spread` (training
    on several processes): this process's share of the global-batch mean, sum(local) x N / count(all)."""
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100, reduction="sum")
    count = (labels != -100).sum()
    if spread and distributed.world_size() > 1:
        return total * distributed.world_size() / distributed.global_count(count).clamp(min=1)
    return total / count.clamp(min=1)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / NT-Xent form) over L2-normalised embeddings; pair i matches i.

    The temperature is learnable (`logit_scale` is its log inverse), clamped at 100 as in CLIP.
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ text_emb.t()
    targets = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def cosine_alignment_loss(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """1 - mean cos(image_i, caption_i) over L2-normalised embeddings."""
    return 1 - (image_emb * text_emb).sum(dim=-1).mean()


def diversity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity of per-caption mean token distributions (gathered over
    processes, so the value is the single-process one), so that images do not all get one caption."""
    mask = (labels != -100).unsqueeze(-1).to(logits.dtype)
    probs = (logits.float().softmax(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    probs = F.normalize(distributed.gather(probs), dim=-1)
    n = probs.size(0)
    if n < 2:
        return probs.sum() * 0
    sims = probs @ probs.t()
    return (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))


def stage1_loss(parts: dict[str, torch.Tensor], labels: torch.Tensor, weights, spread: bool = False):
    """The pretraining objective from a Captioner's forward `parts` (logits; image/text embeddings and
    logit_scale with a head) and `weights` (a TrainConfig). Returns (loss, logged terms)."""
    loss = torch.zeros((), device=labels.device)
    logs: dict[str, torch.Tensor] = {}
    if "logits" in parts:
        logs["caption_loss"] = token_cross_entropy(parts["logits"], labels, spread=spread)
        if weights.caption_weight:
            loss = loss + weights.caption_weight * logs["caption_loss"]
    if "image_emb" in parts:
        logs["contrastive_loss"] = info_nce(parts["image_emb"], parts["text_emb"], parts["logit_scale"])
        if weights.contrastive_weight:
            loss = loss + weights.contrastive_weight * logs["contrastive_loss"]
        if weights.cosine_weight:
            logs["cosine_loss"] = cosine_alignment_loss(parts["image_emb"], parts["text_emb"])
            loss = loss + weights.cosine_weight * logs["cosine_loss"]
    if weights.diversity_weight and "logits" in parts:
        logs["diversity_loss"] = diversity_loss(parts["logits"], labels)
        loss = loss + weights.diversity_weight * logs["diversity_loss"]
    return loss, logs


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
