"""Settings declared once: dataclass fields that carry their description, choices and bounds.

The library's settings dataclasses (`training.params.Hyperparameters`, `dataset.builder.DatasetOptions`) declare
each field with `setting`; their `__post_init__` calls `validate`, and the Dagster layer builds the launchpad
config from the same fields (`defs/launchpad.py`). No heavy imports: the training script uses it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

MISSING = dataclasses.MISSING


def setting(
    default: Any = MISSING,
    description: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    factory: Any = MISSING,
) -> Any:
    """A dataclass field with what the launchpad shows and `validate` checks: description, choices, bounds."""
    bounds = {name: value for name, value in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if value is not None}
    metadata = {"description": description, "choices": choices, "bounds": bounds}
    return field(default=default, default_factory=factory, metadata=metadata)


def validate(spec: dataclasses.Field, value: Any) -> None:
    """A setting's value against its declared choices and bounds (None is always allowed where it is the default)."""
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{spec.name} must be one of {', '.join(choices)}, not {value!r}")
    if value is None:
        return
    for bound, limit in spec.metadata.get("bounds", {}).items():
        ok = {"gt": value > limit, "ge": value >= limit, "lt": value < limit, "le": value <= limit}[bound]
        if not ok:
            words = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}[bound]
            raise ValueError(f"{spec.name} must be {words} {limit:g}, not {value!r}")


def validate_all(settings: Any) -> None:
    """Every field of a settings dataclass instance (`validate`)."""
    for spec in dataclasses.fields(settings):
        validate(spec, getattr(settings, spec.name))
