"""A recipe-partitioned asset's recipe: its files (`Layout.of_recipe`) and its settings (the run config with the
recipe's overrides), so that `raft_dataset`, `fsdp_checkpoint`, `hf_checkpoint` and `eval_report` read it one way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pydantic

from raft_assets.contracts.layout import InvalidSourceName, Layout
from raft_assets.contracts.recipes import Recipe
from raft_assets.defs.resources import ProjectPaths


@dataclass(frozen=True)
class RecipeRun:
    recipe: Recipe
    layout: Layout


def recipe_run(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, paths: ProjectPaths) -> RecipeRun:
    """The recipe of the partition being materialized (or checked), and its layout (its own corpus and index when
    it has its own chunking)."""
    key = partition_key(context)
    try:
        paths.layout.of_recipe(key)  # a key that is no folder name is refused before the file is read
    except InvalidSourceName as error:
        raise dg.Failure(str(error)) from None
    recipe = paths.recipe(key)
    return RecipeRun(recipe, paths.layout.of_recipe(key, own_chunking=bool(recipe.chunking)))


def partition_key(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    if isinstance(context, dg.AssetCheckExecutionContext):
        return context.op_execution_context.partition_key
    return context.partition_key


def with_overrides(config: dg.Config, recipe: Recipe, section: str) -> dict[str, Any]:
    """The run config's settings with the recipe's `section` (dataset, fine_tune, chunking) over them, validated as
    the launchpad validates them."""
    overrides = getattr(recipe, section)
    known = type(config).model_fields
    if unknown := sorted(set(overrides) - set(known)):
        raise dg.Failure(
            f"Recipe {recipe.name!r}: {section} has no setting {', '.join(unknown)}; its settings are "
            f"{', '.join(known)}."
        )
    try:
        return type(config)(**{**config.model_dump(), **overrides}).model_dump()
    except pydantic.ValidationError as error:
        raise dg.Failure(f"Recipe {recipe.name!r}: {section} overrides are invalid: {error}") from None


def recipe_metadata(recipe: Recipe) -> dict[str, Any]:
    """What the asset page says about the recipe it was built for."""
    overrides = "; ".join(f"{section}: {values}" for section, values in recipe.overrides.items())
    return {"recipe": recipe.name, "recipe_overrides": overrides or "none (the run config as it is)"}
