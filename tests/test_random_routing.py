"""The miniature's routing check: a trained bLViT scored with its routers replaced by random ones."""

from __future__ import annotations

import pytest
import torch

import routevit
from routevit.layers.routing import Router
from routevit.reproduce.checks import UniformScores, random_routing_accuracy

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "little_dim": 16, "little_heads": 1,
        "num_classes": 5, "keep_ratio": 0.25}  # fmt: skip


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return routevit.create_model("blvit_deit_b_t", **TINY).eval()


def _masks(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(prediction layers, B, N) selection masks of one forward."""
    with torch.no_grad():
        _, routes = model.forward_features_with_routes(images)
    return torch.stack([r.mask() for r in routes])


def test_random_scores_ignore_the_image_and_cover_every_patch_alike():
    model = _model()
    images = torch.randn(1, 3, 32, 32).expand(64, -1, -1, -1)  # one image, 64 times
    trained = _masks(model, images)
    assert (trained == trained[:, :1]).all()  # a router: the same image, the same tokens
    captured = {}

    def accuracy_of(m: torch.nn.Module) -> float:
        captured["masks"] = _masks(m, images)
        return 42.0

    assert random_routing_accuracy(model, accuracy_of, seed=3) == 42.0
    masks = captured["masks"]
    assert masks[:, :, 0].all()  # CLS stays selected
    assert len({tuple(row.tolist()) for row in masks[0]}) > 32  # per-image draws differ
    k, n = int(masks[0, 0].sum()) - 1, masks.shape[-1] - 1  # patches chosen of the patches
    share = masks[:, :, 1:].float().mean(dim=(0, 1))  # per patch, over 64 draws x layers
    assert share.mean().item() == pytest.approx(k / n, rel=1e-6)
    assert share.min().item() > 0.05 and share.max().item() < 0.6  # no position favoured (expected 0.25)
    # the model handed in keeps its routers; the same seed draws the same routes
    assert all(isinstance(r, Router) for r in model.encoder.routers.values())
    random_routing_accuracy(model, accuracy_of, seed=3)
    assert torch.equal(captured["masks"], masks)


def test_uniform_scores_sum_to_one_like_a_routers_softmax():
    scores = UniformScores().score(torch.randn(4, 17, 8))
    assert scores.shape == (4, 17) and (scores > 0).all()
    assert torch.allclose(scores.sum(-1), torch.ones(4))


def test_a_model_without_prediction_layers_is_refused():
    vanilla = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"needs a model with prediction layers .* got Linear"):
        random_routing_accuracy(vanilla, lambda m: 0.0)
