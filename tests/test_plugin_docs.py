"""docs/plugins.md documents every hook spec and every built-in plugin (datasette style:
adding a hook without documenting it fails here)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from explorank.plugins import hookspecs
from explorank.plugins.manager import PluginManager

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _hookspecs() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
    )


def _section(text: str, heading: str) -> str:
    start = text.index(heading) + len(heading)
    nxt = re.search(r"^#{1,3} ", text[start:], flags=re.MULTILINE)
    return text[start : start + nxt.start()] if nxt else text[start:]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower().replace(":class:", ""))


def test_hookspecs_found() -> None:
    assert {"register_scorers", "register_policies", "register_state_stores"} <= set(_hookspecs())


@pytest.mark.parametrize("hook", _hookspecs())
def test_hook_documented(hook: str) -> None:
    text = DOCS.read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"### `{hook}({params})`"
    assert heading in text, f"docs/plugins.md lacks a '{heading}' section in the hook reference"
    # the section says what the docstring says (same words, markup aside)
    doc_words = _words(inspect.getdoc(getattr(hookspecs, hook)) or "")
    section_words = _words(_section(text, heading))
    assert doc_words == section_words[: len(doc_words)], (
        f"section for {hook} differs from its docstring"
    )


def test_builtins_documented() -> None:
    text = DOCS.read_text()
    pm = PluginManager(block_external=True)
    for kind in ("scorer", "policy"):
        for name in pm.infos(kind):
            assert f"`{name}`" in text, (
                f"built-in {kind} {name!r} is not described in docs/plugins.md"
            )
