"""Same-run speed of this tree's models against the same models at an earlier git revision.

Usage: ``python docs/scripts/ab_revision.py --rev REV [--models blvit_deit_b_t,blvit_sam_b_t]
[--batch-sizes 1,32] [--repeats 7]``

The package at ``REV`` is exported with ``git archive`` into a temporary folder under the name
``routevit_before`` (its absolute ``routevit.`` imports rewritten), both models get the same
weights (the revision's model loads this tree's state dict), and ``routevit.bench.time_pair``
alternates them. A speed-up above 1.0x means this tree is faster. Used to check that a
refactor left the speed alone (docs/results.md).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import routevit
from routevit.bench import time_pair
from routevit.bench_pairs import machine_summary


def import_revision(rev: str, into: Path) -> object:
    """``routevit`` as of ``rev``, imported as ``routevit_before``."""
    repo = Path(__file__).resolve().parents[2]
    archive = into / "before.tar"
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), rev, "routevit"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    package = into / "routevit_before"
    (into / "routevit").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"from routevit ", "from routevit_before ", text)
        path.write_text(re.sub(r"\broutevit\.", "routevit_before.", text))
    sys.path.insert(0, str(into))
    return importlib.import_module("routevit_before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with, e.g. HEAD~3")
    parser.add_argument("--models", default="blvit_deit_b_t,blvit_sam_b_t")
    parser.add_argument("--batch-sizes", default="1,32", help="for the classifiers (SAM: batch 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = import_revision(args.rev, Path(tmp))
        print(f"{machine_summary()}; torch {torch.__version__}; this tree vs {args.rev}")
        print("| model | batch | this tree img/s | before img/s | speed-up |\n|---|---:|---:|---:|---:|")
        for name in args.models.split(","):
            torch.manual_seed(0)
            ours = routevit.create_model(name).eval()
            theirs = before.create_model(name).eval()
            theirs.load_state_dict(ours.state_dict())
            size = routevit.model_info(name).input_size
            is_sam = routevit.model_info(name).task == "sam"
            batches = [1] if is_sam else [int(b) for b in args.batch_sizes.split(",")]
            for batch in batches:
                t = time_pair(
                    ours, theirs, lambda b, size=size: torch.randn(b, *size), batch,
                    repeats=args.repeats, min_seconds=args.min_seconds,
                )
                print(f"| {name} | {batch} | {t.candidate_images_per_s:.2f} | {t.baseline_images_per_s:.2f} "
                      f"| {t.speedup:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
