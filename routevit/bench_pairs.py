"""The model pairs that ``routevit bench`` compares: each big.LITTLE model against the fastest
vanilla models a user could pick instead (timm's, with fused attention), built in one process.
Weights are random: a forward pass costs the same whatever the numbers are (the routed
token count is fixed by keep_ratio, not by the scores).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .bench import compare, format_table, time_pair
from .flops import count
from .models import create_model, list_models, model_info


@dataclass(frozen=True)
class BenchPair:
    """How to build a big.LITTLE model and the vanilla models it is timed against."""

    build: Callable[[], tuple[nn.Module, dict[str, nn.Module]]]
    input_size: tuple[int, int, int]


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"the baseline {name!r} needs timm: pip install 'routevit[timm]'") from error
    return timm.create_model(name, pretrained=False)


def _deit_pair(name: str, baseline: str) -> Callable[[], tuple[nn.Module, dict[str, nn.Module]]]:
    def build() -> tuple[nn.Module, dict[str, nn.Module]]:
        return create_model(name), {f"timm {baseline}": _timm(baseline)}

    return build


def _sam_pair(name: str) -> Callable[[], tuple[nn.Module, dict[str, nn.Module]]]:
    def build() -> tuple[nn.Module, dict[str, nn.Module]]:
        from .interop.sam import build_benchmark_encoders

        encoders = build_benchmark_encoders(name)
        return encoders["blvit"], {
            "timm samvit (fused attention)": encoders["timm"],
            "segment_anything ImageEncoderViT": encoders["segment_anything"],
            "routevit unrouted twin": encoders["routevit_vanilla"],
        }

    return build


def get_pair(name: str) -> BenchPair:
    """The pair of a registered model whose facts name a ``bench_baseline``."""
    info = model_info(name)
    if info.bench_baseline is None:
        raise ValueError(f"no benchmark pair for {name!r}; available: {benchmarked_models()}")
    build = _sam_pair(name) if info.task == "sam" else _deit_pair(name, info.bench_baseline)
    return BenchPair(build, info.input_size)


def benchmarked_models() -> list[str]:
    """Registered models that ``routevit bench`` can time (their facts name a baseline)."""
    return [n for n in list_models() if model_info(n).bench_baseline is not None]


def machine_summary() -> str:
    """CPU model, threads and torch version: what a timing depends on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {cpu}"
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(
    name: str = "blvit_deit_b_t",
    *,
    batch_sizes: Sequence[int] = (1, 32),
    keep_ratio: float | None = None,
    warmup: int = 2,
    repeats: int = 7,
    min_seconds: float = 1.0,
    bf16: bool = False,
    sweep: Sequence[float] = (),
    sweep_batch: int = 1,
    compile_models: bool = False,
    device: str = "cpu",
) -> str:
    """Benchmark a pair and return a Markdown report (MACs, speed per batch size, keep-ratio sweep)."""
    pair = get_pair(name)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream untouched
        torch.random.default_generator.manual_seed(0)
        candidate, baselines = pair.build()
    candidate = candidate.to(device).eval()
    if keep_ratio is not None:
        candidate.set_keep_ratio(keep_ratio)
    baselines = {label: model.to(device).eval() for label, model in baselines.items()}

    inputs = torch.Generator().manual_seed(0)

    def make_input(batch: int) -> torch.Tensor:
        return torch.randn(batch, *pair.input_size, generator=inputs).to(device)

    cand_macs = count(candidate, pair.input_size)
    lines = [
        f"# routevit bench {name}",
        "",
        f"{machine_summary()}; input {pair.input_size}; keep_ratio {candidate.keep_ratio}; "
        f"{'bf16 autocast' if bf16 else 'fp32'}; {'torch.compile' if compile_models else 'eager'}; "
        f"model forward only, {warmup} warm-up pairs, median of {repeats} alternating pairs; each "
        f"run repeats the forward pass to last about {min_seconds:g} s (at least one pass).",
        "",
    ]
    timing = {"warmup": warmup, "repeats": repeats, "bf16": bf16, "min_seconds": min_seconds}
    run_candidate = torch.compile(candidate) if compile_models else candidate
    for label, baseline in baselines.items():
        base_macs = count(baseline, pair.input_size)
        run_baseline = torch.compile(baseline) if compile_models else baseline
        timings = compare(run_candidate, run_baseline, make_input, batch_sizes, **timing)
        lines += [format_table(name, label, (cand_macs, base_macs), timings), ""]
    if sweep:
        label, baseline = next(iter(baselines.items()))
        lines += [
            f"Keep-ratio sweep at batch {sweep_batch} against {label}:",
            "",
            "| keep_ratio | GMACs | MAC ratio | candidate img/s | baseline img/s | speed-up |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        base_macs = count(baseline, pair.input_size)
        for ratio in sweep:
            candidate.set_keep_ratio(ratio)
            macs = count(candidate, pair.input_size)
            t = time_pair(candidate, baseline, make_input, sweep_batch, **timing)
            lines.append(
                f"| {ratio:g} | {macs:.2f} | {base_macs / macs:.2f}x | {t.candidate_images_per_s:.2f} "
                f"| {t.baseline_images_per_s:.2f} | {t.speedup:.2f}x |"
            )
        lines.append("")
    lines.append("GMACs in the paper's convention (Linear and Conv layers; see routevit.flops).")
    return "\n".join(lines)
