"""Markdown tables, verdicts and plots of a CIFAR-10 reproduction (``results.json``).

A difference between two rows is *called* only when it exceeds both rows' spreads (the standard
deviation over seeds); with one seed nothing is called. "At equal measured time" compares a peer
with the bLViT-mini moved along its run-time dial (keep ratio changed at inference) to the peer's
measured speed: its accuracy there is interpolated linearly in the sweep of each seed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bench_pairs import machine_summary
from ..train.checkpoint import atomic_write_text

BEGIN = "<!-- cifar10-reproduction:begin -->"
END = "<!-- cifar10-reproduction:end -->"
METRICS = ("top1", "gmacs", "images_per_s", "speedup_vs_teacher")
PEERS = ("teacher_ft", "evit", "tome", "narrow", "early_prune", "tome_off_the_shelf")


def _spread(values: Sequence[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _change(values: Sequence[float]) -> str:
    """A signed mean and an unsigned spread: ``+0.97 ± 0.55``."""
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f}"


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def grouped(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row key (first-seen order) with the per-seed values collected; ``history``
    becomes the per-seed change of top-1 over the last epoch (``last_epoch_change``)."""
    by_key: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_key.setdefault(row["key"], row)
        for metric in METRICS:
            values[row["key"]][metric].append(row[metric])
        history = row.get("history") or []
        if len(history) >= 2:
            values[row["key"]]["last_epoch_change"].append(history[-1] - history[-2])
    return [{**row, "values": dict(values[key])} for key, row in by_key.items()]


def verdict(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """``"better"``/``"worse"`` when the difference of the means exceeds both spreads, else
    ``"no call"`` (always with a single seed on either side)."""
    if len(ours) < 2 or len(theirs) < 2:
        return "no call (one seed)"
    diff = statistics.mean(ours) - statistics.mean(theirs)
    if abs(diff) > _sd(ours) and abs(diff) > _sd(theirs):
        return "better" if diff > 0 else "worse"
    return "no call"


def at_speed(points: Sequence[dict[str, Any]], speed: float) -> float | None:
    """Top-1 interpolated at ``speed`` (vs the teacher) over one seed's sweep points; None when
    the dial does not reach that speed."""
    pts = sorted((p["speedup_vs_teacher"], p["top1"]) for p in points)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:], strict=False):
        if s0 <= speed <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (speed - s0) / (s1 - s0)
    return None


def _table(entries: Sequence[dict[str, Any]], teacher_gmacs: float, label: str = "model") -> list[str]:
    lines = [
        f"| {label} | seeds | epochs | feature distillation | top-1 (%) | last-epoch change (pt) | GMACs | "
        "MACs vs teacher | images/s | speed vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        v = e["values"]
        change = _change(v["last_epoch_change"]) if v.get("last_epoch_change") else "-"
        lines.append(
            f"| {e['label']} | {len(v['top1'])} | {e.get('epochs', '-')} | {e.get('distill') or 'no'} | "
            f"{_spread(v['top1'], '.2f')} | {change} | {v['gmacs'][0]:.4f} | "
            f"{v['gmacs'][0] / teacher_gmacs:.0%} | "
            f"{_spread(v['images_per_s'], '.0f')} | {_spread(v['speedup_vs_teacher'], '.2f')}x |"
        )
    return lines


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """bLViT-mini against each peer: at equal MACs (the rows as trained) and at the peer's measured
    speed (the bLViT-mini's dial, per seed)."""
    entries = {e["key"]: e for e in grouped(results["rows"])}
    if "blvit" not in entries:
        return []
    ours = entries["blvit"]["values"]["top1"]
    sweeps: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in results.get("sweep", []):
        sweeps[p.get("seed", 0)].append(p)
    out = []
    for key in PEERS:
        if key not in entries:
            continue
        v = entries[key]["values"]
        speed = statistics.mean(v["speedup_vs_teacher"])
        moved = [a for a in (at_speed(pts, speed) for pts in sweeps.values()) if a is not None]
        out.append({
            "key": key, "label": entries[key]["label"], "peer_top1": v["top1"], "blvit_top1": ours,
            "equal_macs": verdict(ours, v["top1"]), "peer_speed": speed, "blvit_at_speed": moved,
            "equal_time": verdict(moved, v["top1"]) if moved else "dial does not reach this speed",
        })  # fmt: skip
    return out


def _verdict_lines(results: dict[str, Any]) -> list[str]:
    rows = verdicts(results)
    if not rows:
        return []
    lines = [
        "**Verdicts** (bLViT-mini vs each row; called only when the difference exceeds both spreads):",
        "",
        "| against | its top-1 | bLViT-mini top-1 | at equal MACs | its speed vs teacher | bLViT-mini "
        "top-1 at that speed (dial) | at equal measured time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        moved = _spread(r["blvit_at_speed"], ".2f") if r["blvit_at_speed"] else "-"
        lines.append(
            f"| {r['label']} | {_spread(r['peer_top1'], '.2f')} | {_spread(r['blvit_top1'], '.2f')} | "
            f"{r['equal_macs']} | {r['peer_speed']:.2f}x | {moved} | {r['equal_time']} |"
        )
    return [*lines, ""]


def conclusion(results: dict[str, Any]) -> list[str]:
    """The headline checks and the verdicts, in words, from the numbers of ``results``."""
    entries = {e["key"]: e for e in grouped(results["rows"])}
    if "blvit" not in entries:
        return []
    teacher = entries["teacher"]["values"]
    ours = entries["blvit"]["values"]
    gap = statistics.mean(teacher["top1"]) - statistics.mean(ours["top1"])
    share = ours["gmacs"][0] / teacher["gmacs"][0]
    lines = [
        "**Conclusion** (generated from the numbers above):",
        "",
        f"- The teacher reaches {teacher['top1'][0]:.2f}% held-out top-1; the bLViT-mini "
        f"{statistics.mean(ours['top1']):.2f}% at {share:.0%} of its MACs: "
        + (f"{gap:.2f} points below it" if gap > 0 else f"{-gap:.2f} points above it")
        + "; the target (within 1.0 point at no more than 60% of the MACs) is "
        + ("met." if gap <= 1.0 and share <= 0.6 else "**not met**."),
    ]
    routing = results.get("routing")
    if routing:
        gain = statistics.mean(r["trained"] - r["random"] for r in routing)
        lines.append(f"- The trained prediction layers add {gain:+.2f} points over routing at random "
                     f"({len(routing)} seed{'s' if len(routing) != 1 else ''}).")  # fmt: skip
    for v in verdicts(results):
        lines.append(f"- Against {v['label']}: {v['equal_macs']} at equal MACs; {v['equal_time']} at equal "
                     f"measured time ({v['peer_speed']:.2f}x the teacher's speed).")  # fmt: skip
    return [*lines, ""]


def _points_table(points: Sequence[dict[str, Any]], title: str) -> list[str]:
    by_ratio: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_ratio[p["keep_ratio"]].append(p)
    lines = [title, "", "| keep ratio | seeds | top-1 (%) | GMACs | images/s | speed vs teacher |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for ratio in sorted(by_ratio):
        ps = by_ratio[ratio]
        lines.append(
            f"| {ratio:g} | {len(ps)} | {_spread([p['top1'] for p in ps], '.2f')} | {ps[0]['gmacs']:.4f} | "
            f"{_spread([p['images_per_s'] for p in ps], '.0f')} | "
            f"{_spread([p['speedup_vs_teacher'] for p in ps], '.2f')}x |"
        )
    return [*lines, ""]


def _extras(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    tp = results.get("throughput")
    if tp:
        lines += ["**Training throughput** of the teacher's recipe, same process, "
                  f"{tp['steps']} steps each (images/s, data loading included):", "",
                  "| data path | precision | images/s |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {m['data']} | {m['precision']} | {m['images_per_s']:.0f} |" for m in tp["modes"]]
        lines.append("")
    q = results.get("int8")
    if q:
        lines += ["**int8** (torchao dynamic-activation int8 weights, CPU) on trained models:", "",
                  "| model | fp32 top-1 | int8 top-1 | change (pt) |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {m['label']} | {m['fp32']:.2f} | {m['int8']:.2f} | {m['int8'] - m['fp32']:+.2f} |"
                  for m in q]  # fmt: skip
        lines.append("")
    routing = results.get("routing")
    if routing:
        trained, chance = [r["trained"] for r in routing], [r["random"] for r in routing]
        gains = [t - c for t, c in zip(trained, chance, strict=True)]
        lines += ["**Do the prediction layers matter?** The trained bLViT-mini with its routers, and with "
                  "every router replaced by uniform random scores (same keep ratio, CLS still kept):", "",
                  "| seeds | trained routers | random routing | what the routers add (pt) |",
                  "|---|---|---|---|",
                  f"| {len(routing)} | {_spread(trained, '.2f')} | {_spread(chance, '.2f')} | "
                  f"{_change(gains)} |", ""]  # fmt: skip
    return lines


def markdown(results: dict[str, Any], command: str) -> str:
    """The reproduction's section of docs/results.md."""
    entries = grouped(results["rows"])
    teacher = next(e for e in entries if e["key"] == "teacher")
    t_gmacs = teacher["values"]["gmacs"][0]
    b = results["budget"]

    def in_table(name: str) -> list[dict[str, Any]]:
        return [e for e in entries if name in e["tables"]]

    table3 = sorted(in_table("table3"), key=lambda e: 1 if e["key"] == "blvit" else 0)
    table4 = sorted(
        in_table("table4"),
        key=lambda e: {"t3_pretrain": 0, "blvit": 2.5}.get(
            e["key"], float(e["key"].removeprefix("t4_lambda")) if e["key"].startswith("t4_") else 99
        ),
    )
    table5 = in_table("table5") + [e for e in entries if e["key"] == "blvit"]
    lines = [
        BEGIN,
        f"Command: `{command}`",
        "",
        f"Machine: {machine_summary()}; training and timing in fp32. "
        f"Teacher and narrow ViT {b['teacher_epochs']} epochs from scratch; rows initialised from the "
        f"teacher {b['student_epochs']} epochs (Table 3's from-scratch rows too); batch {b['batch_size']}. "
        "top-1 on the 5,000 held-out images (500 per class), final weights; 'last-epoch change' is the "
        "top-1 after the last epoch minus after the one before. images/s: batch "
        f"{b['bench_batch']}, forward only, each model alternated with the teacher in one process, median of "
        f"{b['bench_repeats']} pairs; 'speed vs teacher' is the median per-pair ratio. GMACs: "
        "routevit.flops.count. "
        "± is the standard deviation over seeds.",
        "",
    ]
    m = results.get("matched")
    if m:
        lines += [f"Peers matched to the bLViT-mini's {m['blvit_gmacs']:.4f} GMACs: EViT keep rate "
                  f"{m['evit_keep_rate']} ({m['evit_gmacs']:.4f} GMACs), ToMe r={m['tome_r']} "
                  f"({m['tome_gmacs']:.4f} GMACs).", ""]  # fmt: skip
    lines += [
        "**Table 1 in miniature**:",
        "",
        *_table(in_table("table1"), t_gmacs),
        "",
        *_verdict_lines(results),
        *conclusion(results),
    ]
    if len(table3) > 1:
        lines += ["**Table 3 in miniature** (each row adds one design choice; rows above '+ init from the "
                  "teacher' train from scratch):", "", *_table(table3, t_gmacs), ""]  # fmt: skip
    if len(table4) > 1:
        lines += ["**Table 4 in miniature** (feature-distillation weight lambda_fd; 0 = '+ init from the "
                  "teacher'):", "", *_table(table4, t_gmacs), ""]  # fmt: skip
    if len(table5) > 1:
        lines += ["**Table 5 in miniature** (keep ratio of the P path, each trained):", "",
                  *_table(table5, t_gmacs), ""]  # fmt: skip
    if results.get("sweep"):
        lines += _points_table(results["sweep"], "**Run-time dial** of the trained bLViT-mini (keep ratio "
                               "changed at inference only):")  # fmt: skip
    if results.get("dial"):
        lines += _points_table(results["dial"], "**One model for every keep ratio** (trained with a keep "
                               "ratio drawn per step), measured at each ratio:")  # fmt: skip
    lines += _extras(results)
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


def _mean_by_ratio(points: Sequence[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    by_ratio: dict[float, list[float]] = defaultdict(list)
    for p in points:
        by_ratio[p["keep_ratio"]].append(p[metric])
    ratios = sorted(by_ratio)
    return ratios, [statistics.mean(by_ratio[r]) for r in ratios]


def plot(results: dict[str, Any], path: str | Path) -> None:
    """Left: accuracy against measured speed (Table 1 and the bLViT-mini's dial). Right: the
    one-model-for-every-keep-ratio against the models trained at one ratio, with the measured
    speed of each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = grouped(results["rows"])
    dial = bool(results.get("dial"))
    fig, axes = plt.subplots(1, 2 if dial else 1, figsize=(12 if dial else 7, 4.8), dpi=120, squeeze=False)
    left = axes[0][0]
    markers = iter("o^vsDPXhp<>*")
    for e in entries:
        if "table1" not in e["tables"]:
            continue
        v = e["values"]
        x, y = statistics.mean(v["speedup_vs_teacher"]), statistics.mean(v["top1"])
        err = _sd(v["top1"])
        star = e["key"] == "blvit"
        left.errorbar([x], [y], yerr=[err], marker="*" if star else next(markers), ms=12 if star else 6,
                      ls="none", capsize=2, zorder=3, label=e["label"])  # fmt: skip
    if results.get("sweep"):
        xs_r, xs = _mean_by_ratio(results["sweep"], "speedup_vs_teacher")
        _, ys = _mean_by_ratio(results["sweep"], "top1")
        left.plot(xs, ys, "--", color="gray", lw=1, label="bLViT-mini, keep ratio changed at inference")
        for r, x, y in zip(xs_r, xs, ys, strict=True):
            left.annotate(
                f"{r:g}", (x, y), fontsize=7, color="gray", textcoords="offset points", xytext=(-3, -11)
            )
    left.set_xlabel(f"speed vs the teacher (batch {results['budget']['bench_batch']}, this CPU)")
    left.set_ylabel("top-1 on the held-out split (%)")
    left.set_title("Table 1 in miniature", fontsize=9)
    left.legend(fontsize=6.5, loc="best")
    left.grid(alpha=0.3)
    if dial:
        right = axes[0][1]
        ratios, acc = _mean_by_ratio(results["dial"], "top1")
        right.plot(ratios, acc, "o-", label="one model, keep ratio drawn per step")
        fixed = results.get("fixed_keep", [])
        if fixed:
            f_r, f_acc = _mean_by_ratio(fixed, "top1")
            right.plot(f_r, f_acc, "s", ms=7, label="one model per keep ratio (Table 5, bLViT-mini)")
        speed_ax = right.twinx()
        _, speed = _mean_by_ratio(results["dial"], "speedup_vs_teacher")
        speed_ax.plot(ratios, speed, ":", color="gray", label="measured speed vs teacher")
        speed_ax.set_ylabel("speed vs the teacher (dotted)", fontsize=8)
        right.set_xlabel("keep ratio (share of tokens on the P path)")
        right.set_ylabel("top-1 on the held-out split (%)")
        right.set_title("One model for every keep ratio", fontsize=9)
        right.legend(fontsize=7, loc="lower right")
        right.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
