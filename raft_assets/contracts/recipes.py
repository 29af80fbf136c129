"""The experiments file (`data/experiments.yaml`): named recipes, each a set of overrides of the dataset and
fine-tuning settings, compared side by side by `experiment_report`.

    recipes:
      default: {}                    # the run config as it is: today's configuration and today's file paths
      oracle_always:
        dataset: {p: 1.0}            # raft_dataset's settings (RaftDatasetConfig)
      lora:
        fine_tune: {method: lora, lr: 1.0e-4}   # fsdp_checkpoint's settings (FineTuneConfig)
      small_chunks:
        chunking: {chunk_size: 500}  # the chunks' settings (ChunksConfig): the recipe's own chunking

Each recipe is a partition key of `recipes` and a folder name (`data/generated/recipes/<recipe>/`), so its name
follows the rule of source names. Everything upstream of `raft_dataset` (documents to curated answers, the index,
the base model) is shared, so a new recipe sends no LLM request; the eval set is built once, from the default
recipe's split, so every recipe is measured on the same questions and the comparisons are paired. That is why a
recipe cannot change the settings that decide the split (`SPLIT_SETTINGS`).

A recipe with `chunking:` has its own chunking: its `raft_dataset` splits the shared documents again with the
shared chunks' settings and these overrides, writes the recipe's corpus and index under its folder, and moves each
question's oracle to the recipe chunk of its document that overlaps its original chunk most (still no LLM request);
its `eval_report` retrieves from that index, so the model is served the chunks it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raft_assets.contracts.sources import SOURCE_NAME_PATTERN

DEFAULT_RECIPE = "default"
# raft_dataset's settings that decide which documents train, test and evaluate: the same for every recipe.
SPLIT_SETTINGS = ("seed", "test_fraction", "eval_fraction", "min_split_documents")


class RecipesError(ValueError):
    """The experiments file is invalid."""


class Recipe(BaseModel):
    """Overrides of raft_dataset's, fsdp_checkpoint's and the chunks' settings; empty: the run config as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    description: str = ""
    dataset: dict[str, Any] = Field(default_factory=dict)
    fine_tune: dict[str, Any] = Field(default_factory=dict)
    chunking: dict[str, Any] = Field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        """The non-empty sections, for metadata and reports."""
        return {
            section: values for section in ("dataset", "fine_tune", "chunking") if (values := getattr(self, section))
        }


def load_recipes(path: Path) -> list[Recipe]:
    """The recipes of `path` in file order, `default` first; only `default` when the file does not exist."""
    if not path.is_file():
        return [Recipe(name=DEFAULT_RECIPE)]
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RecipesError(f"{path} is not valid YAML: {error}") from None
    entries = document.get("recipes") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise RecipesError(f"{path} needs a mapping `recipes:` of recipe names to their overrides.")
    recipes = [parse_recipe(path, name, entry) for name, entry in entries.items()]
    default = next((recipe for recipe in recipes if recipe.name == DEFAULT_RECIPE), None)
    if default is None:
        default = Recipe(name=DEFAULT_RECIPE)
    elif default.overrides:
        raise RecipesError(f"{path}: recipe {DEFAULT_RECIPE!r} is the run config as it is; it takes no overrides.")
    return [default, *(recipe for recipe in recipes if recipe.name != DEFAULT_RECIPE)]


def parse_recipe(path: Path, name: object, entry: object) -> Recipe:
    try:
        recipe = Recipe(name=str(name), **(entry or {}))
    except (TypeError, ValidationError) as error:
        raise RecipesError(f"{path}: recipe {name!r} is invalid: {error}") from None
    if split := sorted(set(recipe.dataset) & set(SPLIT_SETTINGS)):
        raise RecipesError(
            f"{path}: recipe {name!r} overrides {', '.join(split)}, which decide the split: every recipe trains and "
            "is evaluated on the same documents, so that their results are paired. Set them in the run config."
        )
    return recipe
