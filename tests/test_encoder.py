"""The schedule-driven encoder: the paper's layouts, keep_ratio = 1, batch splits, MACs, timing."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from routevit.bench import compare, format_table, peak_activation_bytes, speedups, time_pair, time_round_robin
from routevit.flops import count_macs
from routevit.layers import BigLittleBlock, Block, PerformanceBlock
from routevit.layers.encoder import BigLittleEncoder, Schedule

B_T = Schedule.big_little_from(12, first_routed=2, predict_after=(1, 4, 7, 10))
H_B = Schedule.big_little_from(32, first_routed=10, predict_after=(8, 16, 24), alternate=True)


def test_b_plus_t_layout():
    assert B_T.kinds[0] == "full" and set(B_T.kinds[1:]) == {"big_little"}
    p_blocks = B_T.count("full") + B_T.count("big_little") + B_T.count("performance")
    assert (p_blocks, B_T.count("big_little")) == (12, 11)


def test_h_plus_b_layout():
    assert H_B.kinds[:9] == ("full",) * 9
    assert H_B.kinds[9] == "big_little" and H_B.kinds[10] == "performance" and H_B.kinds[31] == "big_little"
    assert (H_B.depth, H_B.count("big_little")) == (32, 12)  # 32 P-blocks, 12 E-blocks


def _small_encoder(schedule, keep_ratio=0.25):
    return BigLittleEncoder(32, 4, 8, 2, schedule, keep_ratio=keep_ratio, always_keep=(0,)).eval()


def test_encoder_builds_the_block_kinds_of_its_schedule():
    enc = _small_encoder(Schedule(("full", "big_little", "performance"), (1,)))
    assert [type(b) for b in enc.blocks] == [Block, BigLittleBlock, PerformanceBlock]
    assert list(enc.routers) == ["1"]


def test_keep_ratio_one_with_fresh_parameters_reproduces_the_vanilla_stack():
    torch.manual_seed(0)
    schedule = Schedule.big_little_from(4, first_routed=2, predict_after=(1, 3))
    enc = _small_encoder(schedule, keep_ratio=1.0)
    vanilla = nn.Sequential(*[Block(32, 4) for _ in range(4)]).eval()
    for block, ours in zip(vanilla, enc.blocks, strict=True):
        target = ours if isinstance(ours, Block) else ours.performance
        target.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(2, 17, 32)
    out, expected = enc(x), vanilla(x)
    # gamma = 1e-5 still adds 1e-5 of the E path on selected tokens: the only allowed difference
    assert ((out - expected).norm() / expected.norm()).item() < 1e-4


def test_results_do_not_depend_on_the_batch_split():
    torch.manual_seed(0)
    enc = _small_encoder(B_T.__class__.big_little_from(5, 2, (1, 3), alternate=True))
    x = torch.randn(5, 13, 32)
    whole = enc(x)
    parts = torch.cat([enc(chunk) for chunk in x.split(2)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_forward_routes_and_set_keep_ratio():
    enc = _small_encoder(Schedule.big_little_from(4, 2, (1, 3)))
    x = torch.randn(2, 16, 32)
    out, routes = enc.forward_routes(x)
    assert out.shape == x.shape and len(routes) == 2
    assert all(r.num_selected == 4 and (r.indices[:, 0] == 0).all() for r in routes)
    enc.set_keep_ratio(0.5)
    assert enc.keep_ratio == 0.5
    assert all(r.num_selected == 8 for r in enc.forward_routes(x)[1])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        enc.set_keep_ratio(0)


@pytest.mark.parametrize(
    "kinds,predict_after,match",
    [
        (("full", "tiny"), (1,), "unknown layer kinds"),
        (("full", "big_little"), (), "no prediction layer"),
        (("big_little", "full"), (1,), "no prediction layer"),
        (("full", "big_little"), (3,), "must lie in"),
        (("full", "full", "big_little"), (2, 1), "increasing"),
    ],
)
def test_schedule_errors(kinds, predict_after, match):
    with pytest.raises(ValueError, match=match):
        Schedule(kinds, predict_after)


def test_mac_count_of_the_b_plus_t_stack_matches_the_analytic_formula():
    """MACs counted on the real forward pass equal the hand count of every matmul."""
    n, c, little, k = 197, 768, 192, 50
    enc = BigLittleEncoder(c, 12, little, 3, B_T, keep_ratio=0.25, always_keep=(0,)).eval()
    vanilla_layer = 12 * n * c * c + 2 * n * n * c
    p_path = (10 * k + 2 * n) * c * c + 2 * k * n * c
    e_path = 6 * n * c * little + 8 * n * little * little + 2 * n * n * little
    routers = 4 * n * c
    expected = vanilla_layer + 11 * (p_path + e_path) + routers
    assert count_macs(enc, torch.randn(1, n, c), include_attention=True) == expected


def test_compare_times_both_models_and_formats_a_table():
    fast, slow = nn.Linear(8, 8), nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
    timings = compare(fast, slow, lambda b: torch.randn(b, 8), [1, 4], warmup=1, repeats=3)
    assert [t.batch_size for t in timings] == [1, 4]
    assert all(t.candidate_images_per_s > 0 and t.speedup > 0 and t.pairs == 3 for t in timings)
    # activations only: one (4, 8) fp32 output for `fast`; `slow` holds two at a time
    assert timings[1].candidate_peak_mib * 2**20 == 4 * 8 * 4
    assert timings[1].baseline_peak_mib * 2**20 == 2 * 4 * 8 * 4
    table = format_table("fast", "slow", (64 / 1e9, 192 / 1e9), timings)
    assert "MAC ratio 3.00x" in table and table.count("\n| ") == 3
    with pytest.raises(ValueError, match="repeats"):
        time_pair(fast, slow, lambda b: torch.randn(b, 8), 1, repeats=0)
    with pytest.raises(ValueError, match="min_seconds"):
        time_pair(fast, slow, lambda b: torch.randn(b, 8), 1, min_seconds=-1.0)


def test_time_pair_repeats_short_passes_to_fill_min_seconds():
    calls = {"fast": 0, "slow": 0}

    class Counting(nn.Module):
        def __init__(self, name: str, sleep: float) -> None:
            super().__init__()
            self.name, self.sleep = name, sleep

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls[self.name] += 1
            time.sleep(self.sleep)
            return x

    fast, slow = Counting("fast", 0.001), Counting("slow", 0.004)
    t = time_pair(fast, slow, lambda b: torch.randn(b, 2), 1, warmup=1, repeats=3, min_seconds=0.02)
    # sized on the slower model: ceil(0.02 / ~0.004) passes per run, the same for both models
    assert 2 <= t.calls_per_run <= 5
    assert calls["fast"] == calls["slow"] == 1 + 3 * t.calls_per_run + 1  # + warm-up, + peak memory
    assert 2.0 < t.speedup < 6.0
    single = time_pair(fast, slow, lambda b: torch.randn(b, 2), 1, warmup=0, repeats=1, min_seconds=5.0)
    assert single.calls_per_run == 1  # nothing to size the runs on without a warm-up


def test_round_robin_times_every_model_each_round_in_alternating_order():
    order: list[str] = []

    class Sleeping(nn.Module):
        def __init__(self, name: str, sleep: float) -> None:
            super().__init__()
            self.name, self.sleep = name, sleep

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            order.append(self.name)
            time.sleep(self.sleep)
            return x

    models = [Sleeping("a", 0.006), Sleeping("b", 0.003), Sleeping("c", 0.0015)]
    times, calls = time_round_robin(models, torch.zeros(1), warmup=0, repeats=4)
    assert calls == 1 and [len(t) for t in times] == [4, 4, 4]
    assert "".join(order) == "abc" "cba" "abc" "cba"
    ratios = speedups(times)
    assert ratios[0] == 1.0 and 1.5 < ratios[1] < 2.5 and 3.0 < ratios[2] < 5.0
    assert speedups(times, reference=2)[0] < 0.4  # a is slower than c


class _RelPosEinsum(nn.Module):
    """A bf16 activation met by an fp32 parameter inside einsum, as timm's SAM attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = nn.functional.linear(x, torch.eye(8))  # autocast makes it bf16
        return torch.einsum("bhwc,hkc->bhwk", q, self.table)


def test_peak_activation_bytes_under_bf16_autocast_keeps_autocast_for_composite_ops():
    x = torch.randn(2, 4, 3, 8)
    # the einsum's own bf16 x fp32 matmul is cast by autocast, as it is without the tracker
    assert peak_activation_bytes(_RelPosEinsum().eval(), x, bf16=True) > 0


def test_peak_activation_bytes_counts_live_intermediates_only():
    model = nn.Sequential(nn.Linear(100, 300), nn.GELU(), nn.Linear(300, 50)).eval()
    x = torch.randn(7, 100)
    # fc1's output lives while GELU writes its own; then GELU's output and fc2's output
    assert peak_activation_bytes(model, x) == 2 * 7 * 300 * 4
