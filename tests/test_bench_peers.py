"""``routevit bench --peers``: the peers' settings are the ones closest to the bLViT model's MACs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from routevit.baselines import patch_evit, patch_tome  # noqa: E402
from routevit.bench_peers import EVIT_LAYERS, _timm, match_evit, match_tome, run_peers  # noqa: E402
from routevit.cli import main  # noqa: E402
from routevit.flops import count  # noqa: E402

SIZE = (3, 224, 224)
BASE = "deit_tiny_patch16_224"


def test_tome_r_is_the_closest_to_the_target_of_every_r():
    target = 0.75 * count(_timm(BASE, meta=True), SIZE)
    r, gmacs = match_tome(lambda: _timm(BASE, meta=True), target, SIZE)
    scan = {v: count(patch_tome(_timm(BASE, meta=True), v), SIZE) for v in range(0, 30)}
    assert gmacs == scan[r]
    assert abs(scan[r] - target) == min(abs(g - target) for g in scan.values())


def test_evit_keep_rate_lands_on_the_target():
    target = 0.7 * count(_timm(BASE, meta=True), SIZE)
    rate, gmacs = match_evit(lambda: _timm(BASE, meta=True), target, SIZE)
    assert gmacs == count(patch_evit(_timm(BASE, meta=True), rate, EVIT_LAYERS), SIZE)
    step = min(abs(count(patch_evit(_timm(BASE, meta=True), v, EVIT_LAYERS), SIZE) - target)
               for v in (rate - 0.01, rate + 0.01))  # fmt: skip
    assert abs(gmacs - target) <= step and abs(gmacs - target) / target < 0.01


def test_bad_peer_options():
    with pytest.raises(ValueError, match="autocast"):
        run_peers(dtype="bf16", autocast=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        run_peers(dtype="fp16")
    with pytest.raises(ValueError, match="classifiers"):
        run_peers("blvit_sam_b_t")
    assert main(["bench", "--dtype", "bf16"]) == 2


def test_int8_preparation_quantizes_every_linear_of_blvit_and_timm():
    pytest.importorskip("torchao")
    import routevit
    from routevit.bench_peers import prepare
    from routevit.layers import SplitSemiCrossAttention

    ours = prepare(routevit.create_model("blvit_deit_s_t", img_size=32, depth=4), "int8", "cpu")
    theirs = prepare(_timm("deit_tiny_patch16_224"), "int8", "cpu")
    assert any(isinstance(m, SplitSemiCrossAttention) for m in ours.modules())
    for model in (ours, theirs):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features > 1]
        assert linears and all(type(m.weight) is not torch.nn.Parameter for m in linears)
    from routevit.bench import peak_activation_bytes

    assert peak_activation_bytes(ours, torch.randn(1, 3, 32, 32)) > 0  # weights without storages


def test_peer_table_times_every_contender_in_the_same_rounds(monkeypatch):
    import routevit.bench_peers as peers

    calls: list[str] = []

    class Named(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.proj = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.name)
            return self.proj(x.mean(dim=(2, 3)))

    base = peers.Contender("vanilla", Named("vanilla"), "vanilla", 2.0)
    rest = [peers.Contender(n, Named(n), "s", 1.0) for n in ("ours", "evit", "tome")]
    monkeypatch.setattr(peers, "contenders", lambda name, keep_ratio=None: (base, rest))
    table = run_peers("blvit_deit_b_t", batch_sizes=(1, 2), warmup=0, repeats=2, min_seconds=0.0)
    rounds = "".join(c[0] for c in calls)
    assert rounds == "voet" "teov" "voet" "teov"  # two batch sizes x two rounds, every model in each
    assert table.count("\n| ") == 5 and "2.00x" in table  # header, baseline and the 3 contenders
