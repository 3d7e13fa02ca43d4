"""Every Python code block of the tutorials runs, in order, in one namespace per page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted((DOCS / "tutorials").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_there_are_tutorials():
    assert PAGES, f"no tutorial pages under {DOCS / 'tutorials'}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_code_runs(page: Path):
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no python code blocks"
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, code in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as error:  # name the failing block, keep the traceback
            raise AssertionError(f"{page.name}, code block {number} failed: {error!r}") from error
