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
from .routing import Router, Routes, TopKDispatcher, tokens_to_keep

__all__ = [
    "Attention",
    "BigLittleBlock",
    "Block",
    "DimMatchedBlock",
    "DropPath",
    "GatedFuse",
    "Mlp",
    "PerformanceBlock",
    "Router",
    "Routes",
    "SemiCrossAttention",
    "TopKDispatcher",
    "attention",
    "get_attention_backend",
    "math_attention",
    "set_attention_backend",
    "tokens_to_keep",
]
