"""The GPU check script's CPU side: argument parsing, the dry run of every section (tiny, on the
CPU, CUDA-only parts skipped with a reason), failure isolation, the budget, and the shell wrapper."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from routevit import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _statuses(report: str) -> dict[str, str]:
    return dict(re.findall(r"^\| (\w+) \| ([^|]+?) \| [\d.]+ \|$", report, flags=re.M))


def test_dry_run_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    report = out.read_text()
    assert _statuses(report) == dict.fromkeys(gpu_check.SECTIONS, "ok")
    for name in gpu_check.SECTIONS:
        assert f"## {name}" in report
    # CUDA-only parts say why they did not run
    assert "skipped: CUDA graphs need CUDA" in report
    assert "n/a: xformers does not import" in report or "n/a: no cpu kernels" in report
    assert "n/a: CPU (no allocator statistics)" in report
    # what the CPU can check, it checks
    assert report.count("no host read-back") == 4 and "SYNC" not in report
    assert "losses all finite" in report
    assert report.count("identical (bit for bit)") == 2
    assert re.search(r"\| bLViT \(tiny\) \| [\d.]+ \| eager \| 4 \| [\d.]+ \| [\d.]+x \|", report)
    assert "failed" not in report


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "torch.cuda.is_available"),
        (["--dry-run", "--device", "cuda"], "--dry-run runs on the CPU"),
        (["--sections", "bench,nope"], "unknown section"),
        (["--batch-sizes", "0,4"], "positive ints"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(monkeypatch, capsys, argv, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cpu_device_falls_back_to_tiny_sizes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r.md"
    assert gpu_check.main(["--sections", "env", "--out", str(out)]) == 0
    assert "no CUDA: tiny sizes on the CPU" in out.read_text()


def test_a_failing_section_is_reported_and_the_others_run(tmp_path: Path, monkeypatch) -> None:
    def broken(ctx):  # noqa: ANN001
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(gpu_check.RUNNERS, "attention", broken)
    out = tmp_path / "r.md"
    assert gpu_check.main(["--dry-run", "--sections", "attention,env", "--out", str(out)]) == 1
    report = out.read_text()
    assert _statuses(report) == {"attention": "failed: RuntimeError: kernel exploded", "env": "ok"}
    assert "Traceback" in report


def test_a_spent_budget_skips_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert gpu_check.main(["--dry-run", "--budget-s", "0", "--sections", "env,sam", "--out", str(out)]) == 0
    assert _statuses(out.read_text()) == dict.fromkeys(("env", "sam"), "skipped: time budget spent")


def test_shell_wrapper_writes_the_report_into_out(tmp_path: Path) -> None:
    env = dict(os.environ, GPU_CHECK_NO_INSTALL="1", PYTHON=sys.executable, OUT=str(tmp_path))
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--sections", "env"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _statuses((tmp_path / "gpu_check.md").read_text()) == {"env": "ok"}
