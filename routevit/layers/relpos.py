"""Decomposed relative position terms (MViTv2, used by ViTDet and SAM).

For a query at grid position (qh, qw) and a key at (kh, kw), the attention logit gets
``q . Rh[qh - kh] + q . Rw[qw - kw]`` where ``Rh`` and ``Rw`` are learned tables indexed by
the signed offset. Here the queries may be any subset of the key grid (the selected tokens of
semi-cross attention): each query's terms follow its own position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_tensor, has_shape


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, D) -> (length, D)``, linearly interpolated when ``L != length``."""
    check_tensor(table, "table", 2, "(L, D)")
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def rel_pos_lookup(size: int, table: torch.Tensor) -> torch.Tensor:
    """``R[i, j] = table[i - j + size - 1]``: ``(2 * size - 1, D) -> (size, size, D)`` for
    queries and keys on the same axis of ``size`` positions (table resized if needed)."""
    table = resize_rel_pos(table, 2 * size - 1)
    pos = torch.arange(size, device=table.device)
    return table[pos[:, None] - pos[None, :] + size - 1]


def decomposed_rel_pos(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    grid: tuple[int, int],
    q_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive attention bias of the decomposed relative position terms.

    Args:
        q: ``(B, H, Lq, D)`` queries, before the ``1/sqrt(D)`` scaling.
        rel_pos_h: ``(Lh, D)`` table of the vertical offsets.
        rel_pos_w: ``(Lw, D)`` table of the horizontal offsets.
        grid: ``(gh, gw)``, the key grid; keys are its ``gh * gw`` positions in row-major order.
        q_pos: ``None`` when the queries are the whole grid in row-major order; otherwise the
            flat row-major position of each query in the grid, ``(Lq,)`` or ``(B, Lq)``.

    Returns: ``(B, H, Lq, gh * gw)``.
    """
    check_tensor(q, "q", 4, "(B, H, Lq, D)")
    gh, gw = grid
    b, heads, lq, d = q.shape
    if q_pos is None:
        rh = rel_pos_lookup(gh, rel_pos_h).to(q.dtype)  # (gh, gh, D)
        rw = rel_pos_lookup(gw, rel_pos_w).to(q.dtype)
        if lq != gh * gw:
            raise ValueError(f"without q_pos the queries must be the whole {gh}x{gw} grid, got Lq={lq}")
        grid_q = q.view(b, heads, gh, gw, d)
        rel_h = torch.einsum("bnyxd,ykd->bnyxk", grid_q, rh).reshape(b, heads, lq, gh)
        rel_w = torch.einsum("bnyxd,xkd->bnyxk", grid_q, rw).reshape(b, heads, lq, gw)
    else:
        if not has_shape(q_pos, (lq,), (b, lq)):
            raise ValueError(
                f"q_pos must have shape (Lq,)=({lq},) or (B, Lq)=({b}, {lq}), got {tuple(q_pos.shape)}"
            )
        # Dot each query with every table row, then pick the rows of its own offsets: cheaper
        # than gathering a (B, Lq, g, D) table per query.
        q_pos = q_pos.expand(b, lq)
        # (einsum rather than @, which would lower to the mm that MAC counts take for a linear layer)
        table_h = resize_rel_pos(rel_pos_h, 2 * gh - 1).to(q.dtype)
        table_w = resize_rel_pos(rel_pos_w, 2 * gw - 1).to(q.dtype)
        rel_h = _pick_offsets(torch.einsum("bnqd,ld->bnql", q, table_h), q_pos // gw, gh)
        rel_w = _pick_offsets(torch.einsum("bnqd,ld->bnql", q, table_w), q_pos % gw, gw)
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, lq, gh * gw)


def _pick_offsets(scores: torch.Tensor, coord: torch.Tensor, size: int) -> torch.Tensor:
    """``scores[b, n, i, coord[b, i] - k + size - 1]`` for every key coordinate ``k``:
    ``(B, H, Lq, 2 * size - 1)``, ``coord (B, Lq)`` -> ``(B, H, Lq, size)``."""
    b, heads, lq, _ = scores.shape
    offsets = coord.unsqueeze(-1) - torch.arange(size, device=coord.device) + size - 1  # (B, Lq, size)
    return scores.gather(-1, offsets.unsqueeze(1).expand(b, heads, lq, size))
