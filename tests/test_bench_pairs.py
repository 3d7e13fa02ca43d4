"""`routevit bench`: the report of a real (small) model pair, and the CLI."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")

from routevit.bench_pairs import get_pair, run  # noqa: E402
from routevit.cli import main  # noqa: E402


def test_report_of_the_small_deit_pair(tmp_path):
    report = run("blvit_deit_s_t", batch_sizes=(1,), warmup=0, repeats=1, sweep=(0.5,))
    assert "timm deit_small_patch16_224" in report
    assert "(2.50 GMACs/image)" in report and "(4.24 GMACs/image)" in report  # paper convention
    assert "| 1 |" in report and "| 0.5 |" in report


def test_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    code = main(["bench", "--model", "blvit_deit_s_t", "--batch-sizes", "1", "--warmup", "0",
                 "--repeats", "1", "--out", str(out)])
    assert code == 0 and out.read_text().startswith("# routevit bench blvit_deit_s_t")
    assert "speed-up" in capsys.readouterr().out


def test_unknown_pair():
    with pytest.raises(ValueError, match="available"):
        get_pair("resnet50")
