"""Plugin parameters as pydantic models, validated when the engine starts.

A plugin declares what it accepts as a nested ``Params`` model (stores: ``Options``)::

    class MyPolicy(Policy):
        name = "my_policy"

        class Params(PluginParams):
            width: int = Field(3, ge=1, description="how many items to shuffle")

``MyPolicy(**config)`` validates the values from ``[ranking.policies.my_policy]`` against
it (unknown names, wrong types and out-of-range values fail start-up with a
:class:`~explorank.errors.ConfigError` naming the setting) and sets ``self.params`` to the
validated model, so ``self.params.width`` is an ``int >= 1``. The field descriptions are the
parameters' documentation (``explorank plugins -v`` prints them).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from explorank.errors import ConfigError

__all__ = ["PluginParams", "validate_params"]

M = TypeVar("M", bound=BaseModel)


class PluginParams(BaseModel):
    """Base of every plugin's parameter model: unknown names are refused, values are
    immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_params(section: str, model: type[M], values: Mapping[str, Any]) -> M:
    """``model`` validated from ``values``; a :class:`ConfigError` naming ``section.<field>``
    (e.g. ``ranking.policies.softmax.temperature``) for each problem."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            where = f"{section}.{loc}" if loc else section
            if err["type"] == "extra_forbidden":
                name = str(err["loc"][-1]) if err["loc"] else ""
                known = list(model.model_fields)
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(
                    f"{section}: unknown parameter {name!r} "
                    f"(known: {', '.join(known) or 'none'}){hint}"
                )
            else:
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(problems)) from None
