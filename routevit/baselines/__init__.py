"""Token-reduction peers in the same harness as bLViT."""

from .ablation import TABLE3_STEPS, table3_config, table3_overrides

__all__ = ["TABLE3_STEPS", "table3_config", "table3_overrides"]
