"""The documentation site builds and reads as a manual offline: no script or stylesheet from the
internet, no diagram left for a CDN's Mermaid to draw, no raw Sphinx role, a caption under every
picture, an API page per public module, and a home page whose example runs.

Marked ``docs``: about 10 s (one ``mkdocs build --strict``); ``pytest -m docs`` runs only these.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.docs

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):(?:`|<code>)")
EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']?(?:https?:)?//", re.IGNORECASE)
EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//", re.IGNORECASE)
FIGURE = re.compile(r"<figure\b.*?</figure>", re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    return out


def pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text() for p in site.rglob("*.html")}


def test_no_script_or_stylesheet_from_the_internet(site: Path) -> None:
    bad = {name: EXTERNAL_SCRIPT.findall(html) + EXTERNAL_LINK.findall(html)
           for name, html in pages(site).items()}  # fmt: skip
    assert {k: v for k, v in bad.items() if v} == {}
    # material loads mermaid.js from a CDN for any element of class "mermaid"
    assert [name for name, html in pages(site).items() if 'class="mermaid"' in html] == []
    for svg in (DOCS / "images").glob("*.svg"):  # the committed diagrams draw without a script
        text = svg.read_text()
        assert "<script" not in text and "foreignObject" not in text, svg.name


def test_no_raw_sphinx_role(site: Path) -> None:
    found = {name: ROLE.findall(html) for name, html in pages(site).items()}
    assert {k: len(v) for k, v in found.items() if v} == {}


def test_every_picture_has_a_caption(site: Path) -> None:
    uncaptioned = []
    for name, html in pages(site).items():
        article = html.split('<article', 1)[-1]
        outside = FIGURE.sub("", article)
        uncaptioned += [f"{name}: {img[:80]}" for img in re.findall(r"<img\b[^>]*>", outside)]
        uncaptioned += [f"{name}: figure without caption"
                        for fig in FIGURE.findall(article) if "<figcaption" not in fig]  # fmt: skip
    assert uncaptioned == []


def test_long_code_lines_wrap(site: Path) -> None:
    css = (site / "stylesheets" / "extra.css").read_text()
    assert re.search(r"pre\s*>\s*code\s*\{[^}]*white-space:\s*pre-wrap", css)
    assert "stylesheets/extra.css" in (site / "index.html").read_text()


def test_every_public_module_has_an_api_page(site: Path) -> None:
    """routevit.a.b -> docs/api/a/b.md, package routevit.a -> docs/api/a/index.md, built and
    rendering the module; private modules, the command (cli) and gpu_check have none."""
    missing = []
    for path in sorted((ROOT / "routevit").rglob("*.py")):
        parts = list(path.relative_to(ROOT / "routevit").with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        parts = parts[:-1] if is_package else parts
        if not parts or any(p.startswith("_") for p in parts) or parts[0] in ("cli", "gpu_check"):
            continue
        built = site / "api" / Path(*parts) / "index.html"
        module = ".".join(["routevit", *parts])
        if not built.exists() or f'id="{module}"' not in built.read_text():
            missing.append(module)
    assert missing == []


def test_home_page_installs_shows_speed_and_its_example_runs(tmp_path: Path, monkeypatch) -> None:
    home = (DOCS / "index.md").read_text()
    assert "pip install -e '.[timm]'" in home
    speed = home.split("## Speed", 1)[1].split("\n## ", 1)[0]
    assert "<!-- speed-table -->" in speed and "(results.md)" in speed
    (example,) = re.findall(r"^```python\n(.*?)^```", home, re.DOTALL | re.MULTILINE)
    assert len(example.strip().splitlines()) <= 10
    pytest.importorskip("safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/index.md", "exec"), namespace)
    assert (tmp_path / "blvit" / "config.json").is_file()
    assert namespace["again"].keep_ratio == 0.1  # type: ignore[attr-defined]


def test_results_open_with_a_summary_above_the_log() -> None:
    text = (DOCS / "results.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings[:2] == ["Summary", "Experiment log"]
