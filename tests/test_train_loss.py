"""The training loss against the paper's formula, written out element by element."""

from __future__ import annotations

import math

import pytest
import torch

from routevit.train import DistillationLoss, feature_distillation_loss
from routevit.train.losses import supervised_loss


def _explicit_fd(s: torch.Tensor, t: torch.Tensor) -> float:
    """1 - mean over (b, n) of <s, t> / (|s| |t|), with Python loops."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for n in range(s.shape[1]):
            u, v = s[b, n].tolist(), t[b, n].tolist()
            dot = sum(x * y for x, y in zip(u, v, strict=True))
            norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
            total += dot / norm
            count += 1
    return 1.0 - total / count


def test_feature_distillation_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    assert feature_distillation_loss(s, t).item() == pytest.approx(_explicit_fd(s, t), abs=1e-6)
    assert feature_distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distillation_loss(-t, t).item() == pytest.approx(2.0, abs=1e-6)
    # scale invariant per token
    assert feature_distillation_loss(s * 7.0, t).item() == pytest.approx(_explicit_fd(s, t), abs=1e-6)


def test_total_loss_is_supervised_plus_lambda_fd() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, 2, 1, 2])
    s = torch.randn(4, 6, 8, generator=g, requires_grad=True)
    t = torch.randn(4, 6, 8, generator=g)
    loss_fn = DistillationLoss(supervised_loss(mixup=False, label_smoothing=0.0), lambda_fd=2.5)
    total, parts = loss_fn(logits, target, s, t)
    ce = -sum(torch.log_softmax(logits[i], -1)[target[i]].item() for i in range(4)) / 4
    assert total.item() == pytest.approx(ce + 2.5 * _explicit_fd(s.detach(), t), abs=1e-5)
    assert parts["loss_sup"].item() == pytest.approx(ce, abs=1e-6)
    total.backward()
    assert s.grad is not None and logits.grad is not None  # the teacher side is a constant


def test_supervised_choices_and_no_teacher() -> None:
    logits, target = torch.randn(2, 3), torch.tensor([0, 1])
    sup_only, parts = DistillationLoss(supervised_loss(False, 0.1), 2.5)(logits, target)
    assert "loss_fd" not in parts
    assert sup_only.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1).item(), abs=1e-6
    )
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    mixed, _ = DistillationLoss(supervised_loss(True, 0.1), 2.5)(logits, soft)
    expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert mixed.item() == pytest.approx(expected.item(), abs=1e-6)


def test_shape_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match=r"student \(2, 5, 8\), teacher \(2, 197, 8\)"):
        feature_distillation_loss(torch.randn(2, 5, 8), torch.randn(2, 197, 8))
