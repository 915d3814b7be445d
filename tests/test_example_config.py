"""examples/explorank.toml documents every setting of the settings model, with its default."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from explorank.engine.config import Config, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "explorank.toml"
#: Tables the example fills with illustrations rather than defaults.
EXAMPLES_NOT_DEFAULTS = {("ranking", "policies"), ("ranking", "scorers"), ("state", "options")}


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section, sub-sections (``server.tls``) included, as (dotted name, model)."""
    out = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        out.append((prefix, model))
        for name, field in model.model_fields.items():
            if _is_section(field.annotation):
                walk(f"{prefix}.{name}", field.annotation)  # type: ignore[arg-type]

    for name, field in Config.model_fields.items():
        assert _is_section(field.annotation)
        walk(name, field.annotation)  # type: ignore[arg-type]
    return out


def _section_text(text: str, section: str) -> str:
    """The lines of ``[section]`` and its sub-tables, up to the next other section."""
    lines, inside = [], False
    for line in text.splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            inside = header.group(1) == section or header.group(1).startswith(section + ".")
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines)


def test_example_config_is_valid_and_matches_defaults() -> None:
    cfg = load_config(EXAMPLE, environ={})
    default = load_config(environ={})
    for section, _ in _sections():
        if section == "ranking" or "." in section:
            continue
        assert getattr(cfg, section) == getattr(default, section), section
    assert cfg.ranking.default_policy == default.ranking.default_policy
    assert cfg.ranking.policies["epsilon_greedy"] == {"epsilon": 0.1}


@pytest.mark.parametrize(("section", "model"), _sections())
def test_every_setting_is_in_the_example(section: str, model: type[BaseModel]) -> None:
    text = EXAMPLE.read_text()
    parsed: dict | None = tomllib.loads(text)
    for part in section.split("."):
        parsed = parsed.get(part) if parsed is not None else None
    assert parsed is not None or f"[{section}]" in text, f"[{section}] is missing"
    body = _section_text(text, section)
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            continue  # a sub-section: checked as its own section
        if parsed is not None and name in parsed:
            if (section, name) not in EXAMPLES_NOT_DEFAULTS:
                shown = parsed[name]
                default = field.get_default(call_default_factory=True)
                assert model(**{name: shown}).model_dump()[name] == default, (
                    f"examples/explorank.toml shows {section}.{name} = {shown!r}, "
                    f"but the default is {default!r}"
                )
            continue
        # settings whose default is None (TOML has no null) are shown commented out
        assert re.search(rf"^#\s*{name}\s*=", body, flags=re.MULTILINE), (
            f"{section}.{name} is not in examples/explorank.toml (add it, with its default "
            f"or commented out with an example)"
        )
