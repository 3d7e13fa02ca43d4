"""MAC counting on the real forward pass (the paper's "GFLOPs" are GMACs).

torch's FlopCounterMode counts what actually runs, so a routed model is charged only for the
tokens it routes (fvcore-style tracers that read the graph statically do not see that). Its
table lacks the CPU flash-attention kernel that scaled_dot_product_attention calls on CPU;
we add it with torch's own SDPA formula.

**One unit, one default, everywhere in routevit** (this module, ``routevit bench``,
``routevit eval``, ``routevit reproduce``):

* the unit is **MACs per image** (per sample of the batch): [count_macs][routevit.flops.count_macs]
  returns them as an ``int``, [count][routevit.flops.count] and
  [analytic_vit][routevit.flops.analytic_vit] the same number in GMACs (``/ 1e9``);
* the default is the **paper's convention**, ``include_attention=False``: MACs of the Linear
  and Conv layers only. The attention matmuls (``Q K^T`` and ``A V``) are left out, as fvcore
  leaves out a fused attention op; this is how the paper's DeiT-B gets 16.86 GFLOPs
  (12 layers x 12 N C^2 + patch embedding + head, N = 197, C = 768).
  ``include_attention=True`` adds them, ``2 N_q N_k C`` per layer.

The split is made by aten op: Linear layers lower to ``mm``/``addmm`` and convolutions to
``convolution``, while attention runs as batched matmuls (``bmm``/``baddbmm``) or a fused SDPA
kernel. [analytic][routevit.flops.analytic] gives the paper's per-layer formulas for a cross-check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .layers.encoder import Schedule, check_selector
from .layers.routing import tokens_to_keep

if TYPE_CHECKING:
    from .models.vit import BigLittleViTConfig


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_macs(
    module: nn.Module, *inputs: object, include_attention: bool = False, **kwargs: object
) -> int:
    """Multiply-accumulates per sample of one ``module(*inputs, **kwargs)`` call.

    The call is counted whole and divided by its batch size, the first dimension of the first
    tensor argument (``(B, 3, H, W)`` images, ``(B, N, C)`` tokens): the same unit as
    [count][routevit.flops.count], which gives it in GMACs. Paper convention (Linear and Conv
    layers) unless ``include_attention=True``, which adds the attention matmuls.
    """
    tensors = [a for a in (*inputs, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0]
    if not tensors:
        raise TypeError("count_macs needs a batched tensor argument, e.g. (B, 3, H, W) images")
    by_op = count_macs_by_op(module, *inputs, **kwargs)
    total = sum(macs for op, macs in by_op.items() if include_attention or op in WEIGHT_OPS)
    return round(total / tensors[0].shape[0])


def count(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    *,
    include_attention: bool = False,
) -> float:
    """GMACs per image of ``model`` on a random ``(batch_size, *input_size)`` input:
    [count_macs][routevit.flops.count_macs] ``/ 1e9``.

    Paper convention by default (Linear + Conv only); ``include_attention=True`` adds the
    attention matmuls. A model on the ``meta`` device is counted without allocating weights.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    if device.type == "meta":
        x = torch.empty(batch_size, *input_size, device=device, dtype=dtype)
    else:  # drawn from its own generator: the caller's random stream is left alone
        noise = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))
        x = noise.to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        macs = count_macs(model, x, include_attention=include_attention)
    finally:
        model.train(was_training)
    return macs / 1e9


ANALYTIC_KINDS = ("vanilla", "big_little", "performance", "efficiency")


def analytic(
    kind: str,
    N: int,  # noqa: N803 - the paper's symbols
    C: int,  # noqa: N803
    K: int | None = None,  # noqa: N803
    c: int | None = None,
    mlp_ratio: float = 4.0,
    include_attention: bool = False,
    semi_cross: bool = True,
) -> int:
    """The paper's MACs of one layer (per image) on ``N`` tokens of width ``C``.

    * ``"vanilla"``: ``(4 + 2r) N C^2`` (``12 N C^2`` for ``r = 4``), plus ``2 N^2 C`` attention.
    * ``"performance"`` (P-only): ``K`` of ``N`` tokens; q and proj on K, k and v on N, FFN on K:
      ``(2N + 2K + 2rK) C^2``, plus ``2 K N C`` semi-cross attention. With ``semi_cross=False``
      k and v are on the K selected tokens too: ``(4K + 2rK) C^2``, plus ``2 K^2 C``.
    * ``"efficiency"`` (E block, inner width ``c``): qkv ``C -> 3c``, proj ``c -> C``, FFN
      ``C -> c -> rc -> c -> C`` on all tokens: ``6 N C c + 2r N c^2``, plus ``2 N^2 c``.
    * ``"big_little"``: performance + efficiency.

    The attention terms count only with ``include_attention`` (the paper's table leaves them out).
    """
    if kind not in ANALYTIC_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; valid kinds are {ANALYTIC_KINDS}")
    if kind == "vanilla":
        macs = (4 + 2 * mlp_ratio) * N * C * C + (2 * N * N * C if include_attention else 0)
        return round(macs)
    if kind == "big_little":
        parts = ("performance", "efficiency")
        return sum(analytic(p, N, C, K, c, mlp_ratio, include_attention, semi_cross) for p in parts)
    if kind == "performance":
        if K is None or not 1 <= K <= N:
            raise ValueError(f"a performance layer needs 1 <= K <= N={N} selected tokens, got K={K}")
        kv_tokens = N if semi_cross else K
        macs = (2 * kv_tokens + 2 * K + 2 * mlp_ratio * K) * C * C
        return round(macs + (2 * K * kv_tokens * C if include_attention else 0))
    if c is None or c < 1:
        raise ValueError(f"an efficiency layer needs its inner width c >= 1, got c={c}")
    macs = 6 * N * C * c + 2 * mlp_ratio * N * c * c + (2 * N * N * c if include_attention else 0)
    return round(macs)


def analytic_encoder(
    schedule: Schedule,
    N: int,  # noqa: N803
    K: int,  # noqa: N803
    C: int,  # noqa: N803
    c: int,
    mlp_ratio: float = 4.0,
    include_attention: bool = False,
    *,
    semi_cross: bool = True,
    selector: str = "router",
    num_heads: int | None = None,
) -> int:
    """MACs per image of a [`BigLittleEncoder`][routevit.layers.encoder.BigLittleEncoder]: its layers plus
    one ``Linear(C -> 1)`` router (``N C``) per prediction layer.

    With ``selector="cls_attention"`` each prediction layer costs instead the CLS query
    (``C^2``, a Linear) and, as attention matmuls, its fold into the key weights (``C^2``) and
    the logits (``N H C``, so ``num_heads`` is needed with ``include_attention``).
    """
    names = {"full": "vanilla", "big_little": "big_little", "performance": "performance"}
    layers = sum(
        analytic(names[kind], N, C, K, c, mlp_ratio, include_attention, semi_cross)
        for kind in schedule.kinds
    )
    if check_selector(selector) == "router":
        per_prediction = N * C
    else:  # cls_attention
        per_prediction = C * C
        if include_attention:
            if num_heads is None:
                raise ValueError("the cls_attention selector's attention MACs need num_heads")
            per_prediction += C * C + N * num_heads * C
    return layers + len(schedule.predict_after) * per_prediction


def analytic_vit(config: BigLittleViTConfig, include_attention: bool = False) -> float:
    """GMACs per image of a [`BigLittleViT`][routevit.models.vit.BigLittleViT] from its config: patch
    embedding, encoder ([`analytic_encoder`][], CLS token included in N and K) and head."""
    n, dim = config.num_tokens, config.embed_dim
    k = tokens_to_keep(config.keep_ratio, n)
    embed = (n - 1) * dim * config.in_chans * config.patch_size**2
    trunk = analytic_encoder(
        config.schedule, n, k, dim, config.little_dim, config.mlp_ratio, include_attention,
        semi_cross=config.semi_cross, selector=config.selector, num_heads=config.num_heads,
    )
    return (embed + trunk + dim * config.num_classes) / 1e9


# The paper's classification convention counts only the weight layers' MACs (linear and conv),
# not the attention matmuls; the SAM numbers (Table 2: 372.0 for ViT-B) match it too.
WEIGHT_OPS: frozenset[str] = frozenset({"addmm", "mm", "convolution"})


def count_macs_by_op(module: nn.Module, *inputs: object, **kwargs: object) -> dict[str, int]:
    """MACs of one whole ``module(*inputs)`` call (all samples) per aten op name (``addmm``,
    ``bmm``, ...): the raw counts behind [count_macs][routevit.flops.count_macs].

    ``sum(v for k, v in result.items() if k in WEIGHT_OPS)`` is the weight-layers-only count;
    the sum of all values adds the attention matmuls (and the relative-position einsums).
    Works on meta tensors (a model built under ``torch.device("meta")``), so full-size models
    can be counted without running them.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.no_grad(), counter:
        module(*inputs, **kwargs)
    by_op: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1]  # aten.addmm.default -> addmm
        by_op[name] = by_op.get(name, 0) + flops // 2
    return by_op
