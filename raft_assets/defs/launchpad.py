"""Launchpad configs built from the library's settings dataclasses, so a setting is declared once.

A settings dataclass declares each field's type, default and, with `training.params.setting`, its description,
choices and bounds; `config_class` turns it into the `dg.Config` an asset takes, which the Dagster UI shows with
the same defaults and descriptions and validates with the same bounds.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import dagster as dg
import pydantic
from pydantic import Field


def config_class(name: str, settings: type, doc: str | None = None) -> type[dg.Config]:
    """A `dg.Config` subclass named `name` with the fields of the dataclass `settings`."""
    hints = typing.get_type_hints(settings)
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(settings):
        choices = spec.metadata.get("choices")
        annotation = Literal[choices] if choices else hints[spec.name]
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        fields[spec.name] = (
            annotation,
            Field(default=default, description=spec.metadata.get("description"), **spec.metadata.get("bounds", {})),
        )
    return pydantic.create_model(name, __base__=dg.Config, __doc__=doc or settings.__doc__, **fields)
