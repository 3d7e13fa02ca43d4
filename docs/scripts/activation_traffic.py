"""How many activation elements each model writes per image, next to its MACs.

Usage: ``python docs/scripts/activation_traffic.py``

For the models of ``routevit bench --peers`` (DeiT-B, ``blvit_deit_b_t``, EViT and ToMe at the
bLViT model's MACs) it runs one image through each model under a counting dispatch mode and adds
up the elements of the outputs of (a) the matmuls of the Linear layers (each is written twice on
the CPU: the bias broadcast into the output, then the GEMM accumulating onto it), (b) the
LayerNorms, (c) the other element-wise and indexing ops (adds, products, GELU, dtype casts,
gathers, scatters, copies). Counting only, nothing timed: the numbers do not depend on the machine.

A model whose MACs shrink but whose activation traffic does not keeps paying for the memory passes
of the element-wise work, which the GEMM's speed does not hide once the batch is large.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from routevit.bench_peers import contenders

ELEMENTWISE = {
    "add", "add_", "mul", "sub", "addcmul", "gelu", "_to_copy", "index_add", "index_add_",
    "index_select", "copy_", "clone", "cat",
}  # fmt: skip


class ActivationCounter(TorchDispatchMode):
    """Adds up output elements of matmuls, LayerNorms and element-wise ops, and counts matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul_calls = 0
        self.matmul = 0
        self.layer_norm = 0
        self.elementwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("addmm", "mm") and out.dim() == 2:
            self.matmul_calls += 1
            self.matmul += out.numel()
        elif name == "native_layer_norm":
            self.layer_norm += out[0].numel()
        elif name in ELEMENTWISE and isinstance(out, torch.Tensor):
            self.elementwise += out.numel()
        return out


def main() -> None:
    baseline, rest = contenders("blvit_deit_b_t")
    image = torch.randn(1, 3, 224, 224)
    columns = "GMACs | matmul calls | matmul outputs (M) | LayerNorm (M) | other element-wise (M) | total (M)"
    print(f"| model | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for contender in [baseline, *rest[:3]]:
        model = contender.model.eval()
        with torch.no_grad():  # not inference_mode: composite ops must decompose to what runs
            model(image)
            with ActivationCounter() as counted:
                model(image)
        total = counted.matmul + counted.layer_norm + counted.elementwise
        millions = [counted.matmul, counted.layer_norm, counted.elementwise, total]
        cells = " | ".join(f"{n / 1e6:.2f}" for n in millions)
        print(f"| {contender.label} | {contender.gmacs:.2f} | {counted.matmul_calls} | {cells} |")


if __name__ == "__main__":
    main()
