"""Generic token-routing building blocks; they know nothing about DeiT or SAM."""

from .attention import (
    Attention,
    SemiCrossAttention,
    attention,
    get_attention_backend,
    math_attention,
    set_attention_backend,
)
from .blocks import (
    BigLittleBlock,
    Block,
    DimMatchedBlock,
    DropPath,
    GatedFuse,
    Mlp,
    PerformanceBlock,
)
from .encoder import BigLittleEncoder, BlockFn, BlockSpec, default_block_fn
from .inference import SplitSemiCrossAttention, for_inference
from .policies import GlobalTopK, RoutingPolicy, WindowTopK
from .relpos import decomposed_rel_pos, rel_pos_lookup, resize_rel_pos
from .routing import ClsAttentionScorer, Router, Routes, TokenScorer, TopKDispatcher, tokens_to_keep
from .schedule import LAYOUTS, Schedule, b_t_schedule, h_b_schedule, schedule_for
from .windows import WindowGrid

__all__ = [
    "LAYOUTS",
    "Attention",
    "BigLittleBlock",
    "BigLittleEncoder",
    "Block",
    "BlockFn",
    "BlockSpec",
    "ClsAttentionScorer",
    "DimMatchedBlock",
    "DropPath",
    "GatedFuse",
    "GlobalTopK",
    "Mlp",
    "PerformanceBlock",
    "Router",
    "Routes",
    "RoutingPolicy",
    "Schedule",
    "SemiCrossAttention",
    "SplitSemiCrossAttention",
    "TokenScorer",
    "TopKDispatcher",
    "WindowGrid",
    "WindowTopK",
    "attention",
    "b_t_schedule",
    "default_block_fn",
    "for_inference",
    "h_b_schedule",
    "schedule_for",
    "decomposed_rel_pos",
    "get_attention_backend",
    "math_attention",
    "rel_pos_lookup",
    "resize_rel_pos",
    "set_attention_backend",
    "tokens_to_keep",
]
