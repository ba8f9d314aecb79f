import math

import torch

from capalign.losses import info_nce, preference_loss, sequence_logps, token_cross_entropy


def test_info_nce_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    scale = torch.tensor(math.log(2.0))
    # logits = 2 * image @ text.T = [[1.2, 1.6], [1.6, 1.2]]
    row0 = -1.2 + math.log(math.exp(1.2) + math.exp(1.6))
    row1 = -1.2 + math.log(math.exp(1.6) + math.exp(1.2))
    expected = (row0 + row1) / 2  # the matrix is symmetric, so both directions are equal
    assert abs(float(info_nce(image, text, scale)) - expected) < 1e-6


def test_info_nce_temperature_is_clamped_at_100():
    # Two close embeddings (cosine c ~ 0.98): at scale 100 the loss is log(1 + e^(-100 (1 - c))) ~ 0.13,
    # at an unclamped 1000 it would be ~ 1e-9; orthogonal ones give 0.0 at any scale and test nothing.
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1]]), dim=-1)
    cosine = float(image[0] @ image[1])
    low = info_nce(image, image, torch.tensor(math.log(100.0)))
    high = info_nce(image, image, torch.tensor(math.log(1000.0)))
    assert abs(float(low) - math.log1p(math.exp(-100 * (1 - cosine)))) < 1e-5
    assert float(high) == float(low) > 0.1


def test_sequence_logps_sums_only_real_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[0, 1, -100]])
    assert abs(float(sequence_logps(logits, labels)) - (math.log(0.5) + math.log(0.8))) < 1e-6
    assert abs(float(sequence_logps(logits, labels, average=True)) - (math.log(0.5) + math.log(0.8)) / 2) < 1e-6


def test_token_cross_entropy_ignores_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    assert abs(float(token_cross_entropy(logits, torch.tensor([[0, -100]]))) - math.log(2)) < 1e-6


def _pairs():
    # policy chosen/rejected, reference chosen/rejected
    return torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])


def test_dpo_sigmoid_loss_and_rewards_by_hand():
    pc, pr, rc, rr = _pairs()
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, beta=0.1)
    logits = (-3 + 5) - (-4 + 4.5)  # 1.5
    assert abs(float(losses) - math.log(1 + math.exp(-0.1 * logits))) < 1e-6
    assert abs(float(chosen) - 0.1) < 1e-6 and abs(float(rejected) - (-0.05)) < 1e-6


def test_dpo_label_smoothing_ipo_hinge_robust_by_hand():
    pc, pr, rc, rr = _pairs()
    logits, beta, eps = 1.5, 0.2, 0.1

    def logsig(x):
        return -math.log(1 + math.exp(-x))

    smoothed, _, _ = preference_loss(pc, pr, rc, rr, beta, "sigmoid", eps)
    assert abs(float(smoothed) - (-(1 - eps) * logsig(beta * logits) - eps * logsig(-beta * logits))) < 1e-6
    robust, _, _ = preference_loss(pc, pr, rc, rr, beta, "robust", eps)
    expected = (-(1 - eps) * logsig(beta * logits) + eps * logsig(-beta * logits)) / (1 - 2 * eps)
    assert abs(float(robust) - expected) < 1e-6
    hinge, _, _ = preference_loss(pc, pr, rc, rr, beta, "hinge")
    assert abs(float(hinge) - max(0.0, 1 - beta * logits)) < 1e-6
    ipo, _, _ = preference_loss(pc, pr, rc, rr, beta, "ipo")
    assert abs(float(ipo) - (logits - 1 / (2 * beta)) ** 2) < 1e-6
