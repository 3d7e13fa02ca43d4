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
from .relpos import decomposed_rel_pos, rel_pos_lookup, resize_rel_pos
from .routing import ClsAttentionScorer, Router, Routes, TopKDispatcher, tokens_to_keep
from .windows import WindowGrid

__all__ = [
    "Attention",
    "BigLittleBlock",
    "Block",
    "ClsAttentionScorer",
    "DimMatchedBlock",
    "DropPath",
    "GatedFuse",
    "Mlp",
    "PerformanceBlock",
    "Router",
    "Routes",
    "SemiCrossAttention",
    "TopKDispatcher",
    "WindowGrid",
    "attention",
    "decomposed_rel_pos",
    "get_attention_backend",
    "math_attention",
    "rel_pos_lookup",
    "resize_rel_pos",
    "set_attention_backend",
    "tokens_to_keep",
]
