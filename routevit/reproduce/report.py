"""Markdown tables and the accuracy/speed plot of a CIFAR-10 reproduction (``results.json``)."""

from __future__ import annotations

import platform
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..train.checkpoint import atomic_write_text

BEGIN = "<!-- cifar10-reproduction:begin -->"
END = "<!-- cifar10-reproduction:end -->"


def _spread(values: Sequence[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def grouped(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row key (first-seen order) with the per-seed values collected."""
    by_key: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_key.setdefault(row["key"], row)
        for metric in ("top1", "gmacs", "images_per_s", "speedup_vs_teacher"):
            values[row["key"]][metric].append(row[metric])
    return [{**row, "values": dict(values[key])} for key, row in by_key.items()]


def _table(entries: Sequence[dict[str, Any]], teacher_gmacs: float) -> list[str]:
    lines = [
        "| model | seeds | top-1 (%) | GMACs | MACs vs teacher | images/s | speed vs teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        v = e["values"]
        lines.append(
            f"| {e['label']} | {len(v['top1'])} | {_spread(v['top1'], '.2f')} | {v['gmacs'][0]:.4f} | "
            f"{v['gmacs'][0] / teacher_gmacs:.0%} | {_spread(v['images_per_s'], '.0f')} | "
            f"{_spread(v['speedup_vs_teacher'], '.2f')}x |"
        )
    return lines


def markdown(results: dict[str, Any], command: str) -> str:
    """The reproduction's section of docs/results.md."""
    entries = grouped(results["rows"])
    teacher = next(e for e in entries if e["key"] == "teacher")
    t_gmacs = teacher["values"]["gmacs"][0]
    b = results["budget"]
    table1 = [e for e in entries if "table1" in e["tables"]]
    table3 = [e for e in entries if "table3" in e["tables"]]
    table3.sort(key=lambda e: 1 if e["key"] == "blvit" else 0)  # the full model closes the ablation
    cpu = platform.processor() or platform.machine()
    lines = [
        BEGIN,
        f"Command: `{command}`",
        "",
        f"Machine: {torch.get_num_threads()} CPU threads ({cpu}), torch {torch.__version__}, fp32. "
        f"Teacher {_epochs(b['teacher_epochs'])}; every other row {_epochs(b['student_epochs'])} "
        f"(the narrow ViT, trained from scratch, {b['teacher_epochs'] + b['student_epochs']}); batch "
        f"{b['batch_size']}. top-1 on the 5,000 held-out images (500 per class), final weights. "
        f"images/s: batch {b['bench_batch']}, forward only, each model alternated with the teacher "
        f"in one process, median of {b['bench_repeats']} pairs; 'speed vs teacher' is the median "
        "per-pair ratio. GMACs: routevit.flops.count (Linear + Conv MACs, the paper's convention). "
        "± is the standard deviation over seeds.",
        "",
        "**Table 1 in miniature** (peers at about the bLViT-mini's MACs):",
        "",
        *_table(table1, t_gmacs),
        "",
        "**Table 3 in miniature** (each row adds one design choice; rows above '+ init from the "
        "teacher' train from scratch for the same epochs):",
        "",
        *_table(table3, t_gmacs),
        "",
    ]
    if results["sweep"]:
        lines += [
            "**Keep-ratio sweep** of the trained bLViT-mini (seed "
            f"{b['seeds'][0]}), changed at inference only:",
            "",
            "| keep ratio | top-1 (%) | GMACs | images/s | speed vs teacher |",
            "|---|---|---|---|---|",
        ]
        for s in results["sweep"]:
            lines.append(
                f"| {s['keep_ratio']:g} | {s['top1']:.2f} | {s['gmacs']:.4f} | {s['images_per_s']:.0f} | "
                f"{s['speedup_vs_teacher']:.2f}x |"
            )
        lines.append("")
    seconds = results.get("seconds", {})
    if seconds:
        calls = seconds.get("calls", 1)
        total = seconds.get("total_all_calls", seconds["total_this_call"]) / 60
        training = seconds.get("training_all_calls", seconds["training_this_call"]) / 60
        lines += [f"Wall-clock on this machine: {total:.1f} min over {calls} call{'s' if calls != 1 else ''} "
                  f"of the command that built this output folder (training {training:.1f} min; a resumed "
                  "call adds only what it trained and measured).", ""]  # fmt: skip
    lines.append(END)
    return "\n".join(lines)


def write_section(doc: str | Path, section: str) -> None:
    """Replace the reproduction's section of ``doc`` (between the markers), or append it."""
    path = Path(doc)
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def plot(results: dict[str, Any], path: str | Path) -> None:
    """Accuracy against measured speed (relative to the teacher, the median of per-pair ratios,
    which is steadier than absolute images/s on a noisy machine): Table 1 with the keep-ratio
    sweep on the left, Table 3 on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = grouped(results["rows"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120)
    markers = iter("o^vsDPXhp<>*")
    for e in entries:
        if "table1" not in e["tables"]:
            continue
        v = e["values"]
        x, y = statistics.mean(v["speedup_vs_teacher"]), statistics.mean(v["top1"])
        star = e["key"] == "blvit"
        left.scatter([x], [y], marker="*" if star else next(markers), s=160 if star else 50, zorder=3,
                     label=e["label"])  # fmt: skip
    if results["sweep"]:
        xs = [s["speedup_vs_teacher"] for s in results["sweep"]]
        ys = [s["top1"] for s in results["sweep"]]
        left.plot(xs, ys, "--", color="gray", lw=1, label="bLViT-mini, keep ratio changed at inference")
        for s in results["sweep"]:
            left.annotate(f"{s['keep_ratio']:g}", (s["speedup_vs_teacher"], s["top1"]), fontsize=7,
                          color="gray", textcoords="offset points", xytext=(-3, -11))  # fmt: skip
    left.set_title("Table 1 in miniature (peers at about the bLViT-mini's MACs)", fontsize=9)
    left.legend(fontsize=6.5, loc="best")
    table3 = [e for e in entries if "table3" in e["tables"]]
    table3.sort(key=lambda e: 1 if e["key"] == "blvit" else 0)
    for i, e in enumerate(table3, start=1):
        v = e["values"]
        x, y = statistics.mean(v["speedup_vs_teacher"]), statistics.mean(v["top1"])
        right.scatter([x], [y], marker="*" if e["key"] == "blvit" else "s", s=80, zorder=3)
        right.annotate(f"{i}. {e['label']}", (x, y), fontsize=7, textcoords="offset points", xytext=(6, -3))
    right.set_title("Table 3 in miniature (one design choice per row)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel(f"speed vs the teacher (batch {results['budget']['bench_batch']}, this CPU)")
        ax.set_ylabel("top-1 on the held-out split (%)")
        ax.grid(alpha=0.3)
    right.margins(x=0.35, y=0.1)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
