"""Griffe extension of the docs build (mkdocs.yml): Sphinx roles left in docstrings become links.

routevit's docstrings write cross-references the mkdocstrings way, ``[Router][routevit.layers.
routing.Router]``. A Sphinx role such as ``:class:`Router``` or ``:func:`~routevit.flops.count```
would show as raw text on the site, so this extension rewrites each one before rendering: into a
cross-reference to the object's documented path when the name resolves (in the docstring's own
scope, as Python would) to a documented object, else into plain code. ``tests/test_docs_site.py``
fails the build on any role that reaches the HTML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")
UNDOCUMENTED = ("cli", "gpu_check", "__main__")  # modules without an API page


def convert(text: str, resolve: Callable[[str], str | None]) -> str:
    """``text`` with every Sphinx role replaced (``resolve(name)``: documented path or None)."""

    def replace(match: re.Match[str]) -> str:
        tilde, target = match.group(1), match.group(2).strip().removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if tilde else target
        path = resolve(target)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    return ROLE.sub(replace, text)


def _documented(path: str) -> bool:
    """Whether ``path`` lies in a module with an API page and no private name on the way."""
    parts = path.split(".")
    private = any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts)
    return parts[0] == "routevit" and not private and not set(parts) & set(UNDOCUMENTED)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        def resolver(scope: griffe.Object) -> Callable[[str], str | None]:
            def resolve(target: str) -> str | None:
                head, dot, rest = target.partition(".")
                candidates = [target]
                try:
                    candidates.insert(0, scope.resolve(head) + dot + rest)
                except (griffe.NameResolutionError, ValueError):
                    pass
                for path in candidates:
                    try:
                        obj = loader.modules_collection[path]
                        if obj.is_alias:
                            obj = obj.final_target
                    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                        continue
                    # mkdocstrings renders only members with a docstring
                    shown = obj.is_module or obj.docstring is not None
                    return obj.path if shown and _documented(obj.path) else None
                return None

            return resolve

        for obj in _walk(pkg):
            if obj.docstring is not None and ROLE.search(obj.docstring.value):
                obj.docstring.value = convert(obj.docstring.value, resolver(obj))
