"""An inference form of a trained model, built once: what Linear-rewriting tools need.

[`for_inference`][] replaces every [`SemiCrossAttention`][] (whose fused ``qkv`` weight the
P path slices into q and k/v at every call) with a [`SplitSemiCrossAttention`][] holding two
plain ``nn.Linear`` layers, ``q`` and ``kv``. The function computed is the same; what changes is
that no weight is sliced at run time, so weight-rewriting tools that swap ``Linear.weight`` for
a tensor subclass (torchao's int8 quantization, for one) see only whole-Linear calls.

The inference form is for running a model: its state dict has ``attn.q.*`` / ``attn.kv.*``
where training checkpoints have ``attn.qkv.*``; save and load the model before converting it.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import SemiCrossAttention, _project_windows
from .windows import WindowGrid


class SplitSemiCrossAttention(SemiCrossAttention):
    """[`SemiCrossAttention`][] with the queries' and the keys/values' projections as two
    Linear layers (``q``: C -> C, ``kv``: C -> 2C) instead of one fused ``qkv``.

    Built from a fused layer with [`from_fused`][]; shapes as [`SemiCrossAttention`][].
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 rel_pos_size: tuple[int, int] | None = None) -> None:  # fmt: skip
        super().__init__(dim, num_heads, qkv_bias, rel_pos_size)
        del self.qkv
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    @classmethod
    def from_fused(cls, fused: SemiCrossAttention) -> SplitSemiCrossAttention:
        """The same layer (same weights, device and dtype) with the qkv projection split."""
        ref = fused.qkv.weight
        rel = None if fused.rel_pos_h is None else (fused.rel_pos_h.shape[0] + 1) // 2
        rel_size = None if rel is None else (rel, (fused.rel_pos_w.shape[0] + 1) // 2)
        with torch.device("meta"):
            split = cls(fused.dim, fused.num_heads, fused.qkv.bias is not None, rel_size)
        split = split.to_empty(device=ref.device).to(ref.dtype)
        c = fused.dim
        with torch.no_grad():
            split.q.weight.copy_(ref[:c])
            split.kv.weight.copy_(ref[c:])
            if fused.qkv.bias is not None:
                split.q.bias.copy_(fused.qkv.bias[:c])
                split.kv.bias.copy_(fused.qkv.bias[c:])
            split.proj.load_state_dict(fused.proj.state_dict())
            if fused.rel_pos_h is not None:
                split.rel_pos_h.copy_(fused.rel_pos_h)
                split.rel_pos_w.copy_(fused.rel_pos_w)
        return split.train(fused.training)

    def project_q(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.q(x_q)

    def project_kv(self, x_kv: torch.Tensor, grid: WindowGrid | None = None) -> torch.Tensor:
        return _project_windows(x_kv, self.kv, grid)


def for_inference(model: nn.Module) -> nn.Module:
    """Convert ``model`` in place to its inference form (see the module docstring); eval mode.

    Refused for a trunk with the ``cls_attention`` selector, which reads the P path's fused qkv.
    """
    for module in model.modules():
        if getattr(module, "scorer", None) is not None:
            raise ValueError(
                "for_inference: the cls_attention selector scores tokens with the P path's fused qkv "
                "weight; this model cannot be split"
            )
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is SemiCrossAttention:
                setattr(parent, name, SplitSemiCrossAttention.from_fused(child))
    return model.eval()
