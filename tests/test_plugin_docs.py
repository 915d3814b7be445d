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


def _public_types() -> list[tuple[str, object]]:
    import explorank.plugins.api as api
    import explorank.plugins.manager as manager
    import explorank.plugins.testing as testing

    out: list[tuple[str, object]] = []
    for name in api.__all__:
        obj = getattr(api, name)
        if isinstance(obj, type):
            out.append((f"explorank.plugins.api.{name}", obj))
    for name in ("PluginManager", "PluginInfo", "PluginClash", "PluginLoadError"):
        out.append((f"explorank.plugins.manager.{name}", getattr(manager, name)))
    for name in ("check_policy_contract", "check_scorer_contract"):
        out.append((f"explorank.plugins.testing.{name}", getattr(testing, name)))
    return out


def _members(obj: object) -> set[str]:
    """The public fields, attributes and methods a reader of the reference needs."""
    import dataclasses

    if not isinstance(obj, type):
        return set()
    names: set[str] = set()
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    for klass in obj.__mro__:
        if klass.__module__.startswith("explorank"):
            names |= {n for n in vars(klass) if not n.startswith("_")}
            names |= {n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")}
    if obj.__name__ == "PluginManager":
        from explorank.plugins.manager import PluginManager

        names |= {n for n in vars(PluginManager(block_external=True)) if not n.startswith("_")}
        names -= {"pm", "allow_lists", "blocked_names", "override", "default_plugins"}
    if hasattr(obj, "model_fields"):  # pydantic models: the base has none
        names = {n for n in names if not n.startswith("model_")}
    return names


@pytest.mark.parametrize(("path", "obj"), _public_types(), ids=lambda v: str(v).split(".")[-1])
def test_public_type_documented_with_every_member(path: str, obj: object) -> None:
    text = DOCS.read_text()
    heading = f"### `{path}`"
    assert heading in text, f"docs/plugins.md lacks a reference entry '{heading}'"
    section = _section(text, heading)
    missing = sorted(m for m in _members(obj) if f"`{m}" not in section)
    assert not missing, f"{path}: docs/plugins.md does not describe {missing}"
