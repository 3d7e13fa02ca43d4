"""Rules of the code base's shape (docs/design.md): no import circle, interop depends on models
and never the reverse, every model's facts in the registry, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import routevit
from routevit.models import model_info

PACKAGE = Path(routevit.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """routevit module -> the routevit modules it imports anywhere (function bodies included)."""
    mods, graph = _modules(), {}
    for mod, (path, is_pkg) in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                targets = [sub if sub in mods else target for sub in subs]
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != mod:
                    edges.add(target)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_layers_and_models_never_import_interop_train_or_commands():
    graph = import_graph()
    for mod, edges in graph.items():
        if mod.startswith(("routevit.layers", "routevit.models")):
            outward = ("routevit.interop", "routevit.train", "routevit.bench")
            bad = sorted(e for e in edges if e.startswith(outward))
            assert not bad, f"{mod} imports {bad}"
        if mod.startswith("routevit.layers"):
            assert not any(e.startswith("routevit.models") for e in edges), mod


def test_no_file_over_500_lines():
    lines = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n > 500}
    assert long == {}


@pytest.mark.parametrize("name", [n for n in routevit.list_models() if n.startswith(("blvit_", "sam_vit_"))])
def test_every_model_has_its_facts(name):
    timm = pytest.importorskip("timm")
    info = model_info(name)
    tiny_sam = {"depth": 1, "global_attn_indexes": (0,), "schedule": routevit.layers.Schedule(("full",), ())}
    model = routevit.create_model(name, **(tiny_sam if info.task == "sam" else {"depth": 4}))
    assert (model.config.in_chans, model.config.img_size, model.config.img_size) == info.input_size
    if info.bench_baseline is not None:
        assert info.bench_baseline in timm.list_models()
    if info.vanilla is not None and info.task == "sam":
        assert model_info(info.vanilla).task == "sam" and model_info(info.vanilla).vanilla is None
    elif info.vanilla is not None:
        assert info.vanilla in timm.list_models()


def test_the_engine_runs_tasks_through_the_task_interface():
    from routevit.train.config import recipe_from_dict
    from routevit.train.tasks import TASKS, ClassificationTask, SamTask, get_task

    engine = (PACKAGE / "train" / "engine.py").read_text()
    assert ".task ==" not in engine and '"sam"' not in engine
    assert TASKS == {"classification": ClassificationTask, "sam": SamTask}
    sam = get_task(recipe_from_dict({"task": "sam", "sam": {"train_decoder": True}}))
    assert isinstance(sam, SamTask) and sam.find_unused_parameters
    assert not get_task(recipe_from_dict({"task": "sam"})).find_unused_parameters
    assert not get_task(recipe_from_dict({})).find_unused_parameters


def test_a_task_must_implement_the_interface():
    from routevit.train.config import recipe_from_dict
    from routevit.train.tasks import Task

    class Incomplete(Task):
        def setup(self, info, seed):
            raise AssertionError("not called")

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(recipe_from_dict({}))
