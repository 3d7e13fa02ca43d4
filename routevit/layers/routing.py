"""Token routing: the prediction layer (Router), the parameter-free CLS-attention selector
(ClsAttentionScorer), top-k selection (TopKDispatcher) and the routing plan that the big.LITTLE
blocks share (Routes).

A Routes object is computed once at a prediction layer and reused by every block until the
next prediction layer. It holds flat row indices into a ``(B * N, C)`` view, so gathering and
scattering are single ``index_select`` / ``index_add`` calls with no Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime
from ._checks import check_keep_ratio, check_last_dim, check_same_device_dtype, check_tensor, has_shape


def tokens_to_keep(keep_ratio: float, num_tokens: int) -> int:
    """``ceil(keep_ratio * num_tokens)``, robust to float noise (0.3 * 10 is 3, not 4)."""
    # int(): under torch.onnx's TorchScript tracer a shape entry is a 0-d tensor, which has no
    # round(); k is static per input size anyway, so it becomes a constant in the graph.
    return max(1, math.ceil(round(check_keep_ratio(keep_ratio) * int(num_tokens), 6)))


class Routes:
    """The routing plan of one prediction layer.

    Attributes:
        indices: ``(B, K)`` int64, selected token positions, ascending per sample (per group).
        scores: ``(B, N)`` router scores (softmax over tokens), kept for the score scaling.
        selected_scores: ``(B, K)`` the scores of the selected tokens.
    """

    __slots__ = ("indices", "scores", "selected_scores", "_flat")

    def __init__(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        check_tensor(indices, "indices", 2, "(B, K)")
        check_tensor(scores, "scores", 2, "(B, N)")
        if indices.dtype != torch.long:
            raise TypeError(f"indices must be int64, got {indices.dtype}")
        if indices.shape[0] != scores.shape[0]:
            raise ValueError(
                f"indices and scores must share the batch size, got {tuple(indices.shape)} "
                f"and {tuple(scores.shape)}"
            )
        check_same_device_dtype(scores, "scores", indices=indices)
        self.indices = indices
        self.scores = scores
        self.selected_scores = scores.gather(1, indices)
        batch, num_tokens = scores.shape
        offsets = torch.arange(batch, device=indices.device).unsqueeze(1) * num_tokens
        self._flat = (indices + offsets).reshape(-1)

    @property
    def batch_size(self) -> int:
        return self.indices.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.scores.shape[1]

    @property
    def num_selected(self) -> int:
        return self.indices.shape[1]

    def mask(self) -> torch.Tensor:
        """``(B, N)`` bool, True where a token is selected (the paper's M)."""
        m = torch.zeros_like(self.scores, dtype=torch.bool)
        return m.scatter_(1, self.indices, True)

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_tensor(x, name, 3, "(B, N, C)")
        if x.shape[0] != self.batch_size or x.shape[1] != self.num_tokens:
            raise ValueError(
                f"{name} must have shape (B={self.batch_size}, N={self.num_tokens}, C) to match "
                f"the routes, got {tuple(x.shape)}"
            )
        if x.device != self.indices.device:
            raise TypeError(f"{name} is on {x.device} but the routes are on {self.indices.device}")

    def _check_rows(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Validate ``rows`` and return them in ``x``'s dtype: under autocast the updates come out
        of the matmuls in bf16/fp16 while the residual stream keeps its own dtype."""
        expected = (self.batch_size, self.num_selected, x.shape[2])
        if tuple(rows.shape) != expected:
            raise ValueError(f"rows must have shape (B, K, C) = {expected}, got {tuple(rows.shape)}")
        if rows.device != x.device:
            raise TypeError(f"rows are on {rows.device} but x is on {x.device}")
        if not rows.is_floating_point():
            raise TypeError(f"rows must be floating point, got {rows.dtype}")
        return rows.to(x.dtype)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Selected rows of ``x``: ``(B, N, C) -> (B, K, C)``."""
        self._check(x, "x")
        b, n, c = x.shape
        return x.reshape(b * n, c).index_select(0, self._flat).view(b, self.num_selected, c)

    def scatter(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A copy of ``x`` ``(B, N, C)`` whose selected rows are replaced by ``rows`` ``(B, K, C)``."""
        self._check(x, "x")
        rows = self._check_rows(rows, x)
        b, n, c = x.shape
        return x.reshape(b * n, c).index_copy(0, self._flat, rows.reshape(-1, c)).view(b, n, c)

    def scatter_add(self, x: torch.Tensor, rows: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x`` with ``rows`` ``(B, K, C)`` added to its selected rows; other rows untouched.

        ``inplace=True`` writes into ``x`` and is meant for a buffer the caller just created
        (it saves one full-size copy on the hot path).
        """
        self._check(x, "x")
        rows = self._check_rows(rows, x)
        b, n, c = x.shape
        flat_x = x.view(b * n, c) if inplace else x.reshape(b * n, c)
        flat_rows = rows.reshape(-1, c)
        if runtime.get_policy().scatter_add == "index_put":
            put = flat_x.index_put_ if inplace else flat_x.index_put
            return put((self._flat,), flat_rows, accumulate=True).view(b, n, c)
        if inplace:
            return flat_x.index_add_(0, self._flat, flat_rows).view(b, n, c)
        return flat_x.index_add(0, self._flat, flat_rows).view(b, n, c)

    def __repr__(self) -> str:
        return f"Routes(batch={self.batch_size}, tokens={self.num_tokens}, selected={self.num_selected})"


@runtime_checkable
class TokenScorer(Protocol):
    """What a prediction layer is to the trunk: ``score(x (B, N, C), next_block) -> (B, N)``.

    ``next_block`` is the first routed block after the prediction layer (None if there is none);
    a learned [`Router`][] ignores it, [`ClsAttentionScorer`][] borrows its attention.
    """

    def score(self, x: torch.Tensor, next_block: nn.Module | None = None) -> torch.Tensor: ...


class Router(nn.Module):
    """Prediction layer: ``Linear(C -> 1)`` then softmax over the token axis.

    ``(B, N, C) -> (B, N)`` scores in (0, 1) that sum to 1 per sample.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        return self.proj(x).squeeze(-1).softmax(dim=-1)

    def score(self, x: torch.Tensor, next_block: nn.Module | None = None) -> torch.Tensor:
        """The scorer protocol of the trunk (see [`TokenScorer`][]); ``next_block`` is unused."""
        return self(x)


class ClsAttentionScorer(nn.Module):
    """Parameter-free Evo-ViT-style selector: how much the CLS token attends to each token.

    ``s_j = mean_h softmax_j(q_h . k_{j,h} / sqrt(d))`` with ``q = W_q LN(x_cls) + b_q`` and
    ``k_j = W_k LN(x_j) + b_k``, where ``LN`` and the fused ``qkv`` weights are borrowed from an
    attention block (for a bLViT: the P-block of the next routed layer), ``d = C / num_heads``.
    It owns no parameters, so it replaces the [`Router`][] of the ablation rows of the
    paper's Table 3 that come before "+ Predictor".

    Only the CLS query row is computed, and no key is materialised:
    ``q_h . k_{j,h} = (W_{k,h}^T q_h) . LN(x_j) + q_h . b_{k,h}``; the last term is the same for
    every ``j`` and cancels in the softmax. Per image that is ``C^2`` MACs for the CLS query
    (a Linear), ``C^2`` to fold it into the key weights and ``N H C`` for the logits (both
    counted as attention matmuls by [`routevit.flops`][]), instead of ``N C^2`` for all keys.

    The scores carry no gradient (computed under ``torch.no_grad``): they only rank tokens, and
    the P-blocks of a model that uses this selector are built without score scaling.

    Forward: ``x (B, N, C)``, ``norm`` (a LayerNorm over C), ``qkv`` (Linear ``C -> 3C``, q, k, v
    stacked as timm's fused qkv), ``num_heads`` -> ``(B, N)`` scores in (0, 1) summing to 1 per
    sample, in ``x``'s dtype.
    """

    def __init__(self, cls_index: int = 0) -> None:
        super().__init__()
        if isinstance(cls_index, bool) or not isinstance(cls_index, int) or cls_index < 0:
            raise ValueError(f"cls_index must be a non-negative int, got {cls_index!r}")
        self.cls_index = cls_index

    def forward(self, x: torch.Tensor, norm: nn.Module, qkv: nn.Linear, num_heads: int) -> torch.Tensor:
        check_tensor(x, "x", 3, "(B, N, C)")
        b, n, c = x.shape
        if not isinstance(qkv, nn.Linear) or qkv.in_features != c or qkv.out_features != 3 * c:
            raise ValueError(f"qkv must be a Linear({c} -> {3 * c}) fused q/k/v projection, got {qkv!r}")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or c % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing C={c}, got {num_heads!r}")
        if self.cls_index >= n:
            raise ValueError(f"cls_index {self.cls_index} must be < N={n}")
        head_dim = c // num_heads
        with torch.no_grad():
            cls = norm(x[:, self.cls_index])  # (B, C): LayerNorm is per token
            bias = None if qkv.bias is None else qkv.bias[:c]
            q = F.linear(cls, qkv.weight[:c], bias).view(b, num_heads, head_dim)
            w_k = qkv.weight[c : 2 * c].view(num_heads, head_dim, c)
            folded = torch.einsum("bhd,hdc->bhc", q, w_k)  # (B, H, C): W_{k,h}^T q_h
            logits = torch.einsum("bnc,bhc->bhn", norm(x), folded) * head_dim**-0.5
            return logits.float().softmax(dim=-1).mean(dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, next_block: nn.Module | None = None) -> torch.Tensor:
        """The scorer protocol of the trunk: borrow the P path of ``next_block`` (a
        [`BigLittleBlock`][] or a P-only block)."""
        if next_block is None:
            raise ValueError(
                "the CLS-attention scorer reads the next routed block's attention: pass next_block"
            )
        p_block = getattr(next_block, "performance", next_block)
        return self(x, p_block.norm1, p_block.attn.qkv, p_block.attn.num_heads)

    def extra_repr(self) -> str:
        return f"cls_index={self.cls_index}"


class TopKDispatcher(nn.Module):
    """Select the ``k = ceil(keep_ratio * group_size)`` highest-scoring tokens of each group.

    Args:
        keep_ratio: share of tokens that take the performance path, in (0, 1].
        always_keep: token positions that are selected whatever their score (e.g. CLS = 0).
        group_size: tokens per group (an attention window); groups are contiguous runs of
            ``group_size`` tokens and every group gets the same k. ``None``: one group of all N.

    Forward: ``scores (B, N)`` and an optional ``ineligible`` bool mask ``(N,)`` or ``(B, N)``
    (padding tokens, never selected) -> [`Routes`][] with ``(B, G * k)`` indices, sorted.
    Keyword ``k`` overrides the per-group count (for callers whose k is not a share of the
    group size, e.g. of the real tokens when groups are padded windows);
    ``check_eligible=False`` skips the "every group has k eligible tokens" check, for callers
    that proved it once for a fixed geometry. The check reads nothing back from an accelerator:
    off the CPU it is a device-side assertion (``torch._assert_async``; a failure surfaces at the
    next synchronisation as a device-side assert), on the CPU a ``ValueError``.

    No forward pass synchronises with the host: the always-kept positions become a mask built
    on the device, not an index tensor copied from a Python list at every call.
    """

    def __init__(
        self,
        keep_ratio: float = 0.25,
        always_keep: Sequence[int] = (),
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.keep_ratio = check_keep_ratio(keep_ratio)
        always_keep = tuple(int(i) for i in always_keep)
        if len(set(always_keep)) != len(always_keep) or any(i < 0 for i in always_keep):
            raise ValueError(f"always_keep must be distinct non-negative positions, got {always_keep}")
        self.always_keep = always_keep
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        self.group_size = group_size

    def set_keep_ratio(self, keep_ratio: float) -> None:
        self.keep_ratio = check_keep_ratio(keep_ratio)

    def num_selected(self, num_tokens: int) -> int:
        """K, the number of selected tokens for a sequence of ``num_tokens``."""
        group = self.group_size or num_tokens
        return tokens_to_keep(self.keep_ratio, group) * (num_tokens // group)

    def forward(
        self,
        scores: torch.Tensor,
        ineligible: torch.Tensor | None = None,
        *,
        k: int | None = None,
        check_eligible: bool = True,
    ) -> Routes:
        check_tensor(scores, "scores", 2, "(B, N)")
        batch, n = scores.shape
        group = self.group_size or n
        if n % group != 0:
            raise ValueError(f"group_size {group} must divide the number of tokens N={n}")
        if k is None:
            k = tokens_to_keep(self.keep_ratio, group)
        elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= group:
            raise ValueError(f"k must be an int in [1, group size {group}], got {k!r}")
        ranking = scores.detach()
        if self.always_keep:
            self._check_always_keep(n, group, k)
            ranking = ranking.masked_fill(self._always_kept_mask(n, scores.device), float("inf"))
        if ineligible is not None:
            ranking = self._mask_ineligible(ranking, ineligible, group, k, check_eligible)
        ranking = ranking.view(batch, n // group, group)
        local = ranking.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
        offsets = torch.arange(0, n, group, device=scores.device).view(1, -1, 1)
        return Routes((local + offsets).view(batch, (n // group) * k), scores)

    def _always_kept_mask(self, n: int, device: torch.device) -> torch.Tensor:
        """``(N,)`` bool, True at the always-kept positions, built on the device from Python ints
        (kernel arguments): indexing with a Python list would copy an index tensor from the host
        at every prediction layer."""
        positions = torch.arange(n, device=device)
        first, *rest = self.always_keep
        mask = positions == first
        for i in rest:
            mask = mask | (positions == i)
        return mask

    def _check_always_keep(self, n: int, group: int, k: int) -> None:
        if max(self.always_keep) >= n:
            raise ValueError(f"always_keep positions {self.always_keep} must be < N={n}")
        per_group: dict[int, int] = {}
        for i in self.always_keep:
            per_group[i // group] = per_group.get(i // group, 0) + 1
        if max(per_group.values()) > k:
            raise ValueError(
                f"{max(per_group.values())} always-kept tokens in one group but only k={k} are "
                f"selected per group (keep_ratio={self.keep_ratio}, group of {group})"
            )

    def _mask_ineligible(
        self, ranking: torch.Tensor, ineligible: torch.Tensor, group: int, k: int, check: bool
    ) -> torch.Tensor:
        batch, n = ranking.shape
        if not isinstance(ineligible, torch.Tensor) or ineligible.dtype != torch.bool:
            raise TypeError(f"ineligible must be a bool tensor of shape (N,) or (B, N), got {ineligible!r}")
        if not has_shape(ineligible, (n,), (batch, n)):
            raise ValueError(
                f"ineligible must have shape (N,)=({n},) or (B, N)=({batch}, {n}), "
                f"got {tuple(ineligible.shape)}"
            )
        if ineligible.device != ranking.device:
            raise TypeError(f"ineligible is on {ineligible.device} but scores are on {ranking.device}")
        if not check:  # the caller proved the counts
            return ranking.masked_fill(ineligible, float("-inf"))
        kept_but_ineligible = (
            (ineligible & self._always_kept_mask(n, ineligible.device)).any() if self.always_keep else None
        )
        fewest = (~ineligible).reshape(-1, n // group, group).sum(-1).min()
        kept_message = f"always-kept positions {self.always_keep} are marked ineligible"
        count_message = (
            f"a group of {group} tokens has fewer than k={k} eligible tokens, but k must be selected "
            f"in every group (keep_ratio={self.keep_ratio}); lower keep_ratio"
        )
        if ranking.device.type != "cpu":
            # Queued on the device, not read back (no host sync); a failure is a device-side
            # assertion, reported at the next synchronisation.
            if kept_but_ineligible is not None:
                torch._assert_async(~kept_but_ineligible, kept_message)
            torch._assert_async(fewest >= k, count_message)
        else:  # on the CPU reading a value back costs nothing: a ValueError with the numbers
            if kept_but_ineligible is not None and bool(kept_but_ineligible):
                raise ValueError(kept_message)
            if int(fewest) < k:
                raise ValueError(
                    f"a group of {group} tokens has only {int(fewest)} eligible tokens but k={k} must "
                    f"be selected in every group (keep_ratio={self.keep_ratio}); lower keep_ratio"
                )
        return ranking.masked_fill(ineligible, float("-inf"))

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, always_keep={self.always_keep}, "
            f"group_size={self.group_size}"
        )
