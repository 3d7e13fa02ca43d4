"""MAC counting on the real forward pass (the paper's "GFLOPs" are GMACs).

torch's FlopCounterMode counts what actually runs, so a routed model is charged only for the
tokens it routes (fvcore-style tracers that read the graph statically do not see that). Its
table lacks the CPU flash-attention kernel that scaled_dot_product_attention calls on CPU;
we add it with torch's own SDPA formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_macs(module: nn.Module, *inputs: object, **kwargs: object) -> int:
    """Multiply-accumulates of one ``module(*inputs, **kwargs)`` call (whole batch)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.no_grad(), counter:
        module(*inputs, **kwargs)
    return counter.get_total_flops() // 2


def count(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
) -> float:
    """GMACs per image of ``model`` on a random ``(batch_size, *input_size)`` input."""
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        macs = count_macs(model, x)
    finally:
        model.train(was_training)
    return macs / batch_size / 1e9


# The paper's classification convention counts only the weight layers' MACs (linear and conv),
# not the attention matmuls; the SAM numbers (Table 2: 372.0 for ViT-B) match it too.
WEIGHT_OPS: frozenset[str] = frozenset({"addmm", "mm", "convolution"})


def count_macs_by_op(module: nn.Module, *inputs: object, **kwargs: object) -> dict[str, int]:
    """MACs of one ``module(*inputs)`` call per aten op name (``addmm``, ``bmm``, ...).

    ``sum(v for k, v in result.items() if k in WEIGHT_OPS)`` is the weight-layers-only count;
    the sum of all values adds the attention matmuls (and the relative-position einsums).
    Works on meta tensors (a model built under ``torch.device("meta")``), so full-size models
    can be counted without running them.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.no_grad(), counter:
        module(*inputs, **kwargs)
    by_op: dict[str, int] = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[1]  # aten.addmm.default -> addmm
        by_op[name] = by_op.get(name, 0) + flops // 2
    return by_op
