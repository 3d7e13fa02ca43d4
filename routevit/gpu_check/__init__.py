"""One GPU check: what a first run on a GPU must show, written to one Markdown file.

``python -m routevit.gpu_check --out gpu_check.md`` (or ``tools/gpu_check.sh``, which also
installs what it can) runs these sections, each timed, each isolated (a failure is reported and
the next section runs), the report rewritten after every section so a killed run leaves what
it measured:

``env``        torch / CUDA / device / xformers / timm versions and what "auto" attention picks.
``bench``      blvit_deit_b_t against DeiT-B, EViT and ToMe (MACs matched to the bLViT's by
               choosing EViT's keep rate and ToMe's r), bf16 autocast, batch 1, 64 and 256,
               eager, ``torch.compile`` and CUDA graphs (``mode="reduce-overhead"``).
``attention``  xformers vs SDPA vs math for self and semi-cross attention, fp16 and bf16, with and
               without a SAM-shaped (unaligned) bias: forward and forward+backward times, error
               against fp32 math on the same inputs.
``sync``       forwards (and a backward) of the DeiT and SAM models under
               ``torch.cuda.set_sync_debug_mode("error")``.
``train``      20 training steps of a small recipe in bf16 (DDP over 2 GPUs when there are 2),
               losses finite, then two resumes from the step-18 checkpoint: identical weights?
``sam``        blvit_sam_b_t and its unrouted twin at 1024 px, batch 1 and 8, bf16: time and
               peak memory, inference and training (forward + backward).

Without CUDA (``--device cpu``, or ``--dry-run``) every section runs on tiny models and inputs,
and the CUDA-only parts are skipped with the reason in the report: that is what CI runs. A
``--budget-s`` (default 450 s) bounds the whole run; parts that would not fit are skipped and
say so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .common import ESTIMATE_S, SECTIONS, Context, Section, Skip, _first_line, _table
from .perf import section_attention, section_bench, section_env
from .runs import section_sam, section_sync, section_train

RUNNERS: dict[str, Callable[[Context], list[str]]] = {
    "env": section_env,
    "bench": section_bench,
    "attention": section_attention,
    "sync": section_sync,
    "train": section_train,
    "sam": section_sam,
}


# --------------------------------------------------------------------------------------------
# report and command line


def _write(path: Path, header: list[str], sections: list[Section]) -> None:
    lines = list(header)
    summary = [(s.name, s.status, f"{s.seconds:.1f}") for s in sections]
    lines += _table(("section", "status", "seconds"), summary)
    for s in sections:
        lines += [f"## {s.name}", "", f"Status: {s.status}", ""] + s.lines + [""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _sections(value: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; valid: {','.join(SECTIONS)}")
    return names


def _batch_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive ints, comma-separated, got {value!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m routevit.gpu_check",
        description="Check routevit on a GPU (numbers, kernels, syncs, training, memory) and write one "
        "Markdown report. Exit status: 0 all sections ran or were skipped with a reason, 1 a section "
        "failed, 2 bad arguments.",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda when available; cpu runs every section tiny")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="tiny models and inputs on the CPU (what CI runs)")
    p.add_argument("--out", default="gpu_check.md", help="the Markdown report, rewritten after each section")
    p.add_argument("--sections", type=_sections, default=SECTIONS,
                   help=f"comma-separated subset of {','.join(SECTIONS)}")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; later parts are skipped")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=None,
                   help="bench batch sizes (default 1,64,256; tiny 1,4)")  # fmt: skip
    p.add_argument("--workdir", help="scratch folder for the training runs (default: a temporary one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # cuBLAS reproducible across runs (the train section's resume check); must precede CUDA's init
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    parser = build_parser()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv_list)
    reasons = []
    if args.dry_run:
        if args.device == "cuda":
            parser.error("--dry-run runs on the CPU; drop --device cuda")
        device = torch.device("cpu")
        reasons.append("dry run: tiny sizes on the CPU")
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False (use --device cpu or --dry-run)")
    elif args.device == "cpu" or not torch.cuda.is_available():
        device = torch.device("cpu")
        why = "no CUDA" if args.device == "auto" else "--device cpu"
        reasons.append(f"{why}: tiny sizes on the CPU")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    tiny = device.type != "cuda"
    batch_sizes = args.batch_sizes or ((1, 4) if tiny else (1, 64, 256))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        scratch = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-"))
        workdir = Path(scratch)
        ctx = Context(device, tiny, started + args.budget_s, batch_sizes, workdir)
        header = [
            "# routevit GPU check",
            "",
            f"{datetime.datetime.now().isoformat(timespec='seconds')}; "
            f"arguments `{' '.join(argv_list) or '(none)'}`; "
            f"device {device}; budget {args.budget_s:.0f} s{''.join(f'; {r}' for r in reasons)}.",
            "",
        ]  # fmt: skip
        sections = [Section(name) for name in args.sections]
        for i, section in enumerate(sections):
            t0 = time.monotonic()
            later = [s.name for s in sections[i + 1 :]]
            ctx.reserve_s = 0.0 if tiny else sum(ESTIMATE_S[name] for name in later)
            if ctx.left() <= 0:
                section.status = "skipped: time budget spent"
            else:
                try:
                    section.lines = RUNNERS[section.name](ctx)
                    section.status = "ok"
                except Skip as reason:
                    section.status = f"skipped: {reason}"
                except Exception as error:  # noqa: BLE001 - reported; the next section runs
                    section.status = f"failed: {_first_line(error)}"
                    section.lines = ["```", *traceback.format_exc().splitlines()[-25:], "```"]
            section.seconds = time.monotonic() - t0
            print(f"gpu_check: {section.name}: {section.status} ({section.seconds:.1f} s)", flush=True)
            _write(out, header, sections)
    total = time.monotonic() - started
    print(f"gpu_check: wrote {out} in {total:.0f} s", flush=True)
    return 1 if any(s.status.startswith("failed") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
