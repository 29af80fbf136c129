"""Recipes (`data/experiments.yaml`): the file's rules, and a recipe's dataset built from the shared upstream into its
own folder, on the default recipe's split (the check `same_split_as_default`, with a defect planted)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from raft_assets.contracts.recipes import DEFAULT_RECIPE, RecipesError, load_recipes
from raft_assets.defs.dataset.assets import raft_dataset, raft_dataset_checks
from raft_assets.defs.resources import ProjectPaths
from raft_assets_tests.conftest import REPO, run_assets
from raft_assets_tests.test_split_integrity import run_check


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_experiments_file_loads_with_default_first():
    recipes = load_recipes(REPO / "data" / "experiments.yaml")
    assert recipes[0].name == DEFAULT_RECIPE and not recipes[0].overrides
    assert len(recipes) >= 2 and all(recipe.overrides for recipe in recipes[1:])


def test_without_the_file_there_is_the_default_recipe_alone(tmp_path):
    assert [recipe.name for recipe in load_recipes(tmp_path / "absent.yaml")] == [DEFAULT_RECIPE]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recipes:\n  x:\n    dataset: {eval_fraction: 0.3}\n", "overrides eval_fraction, which decide the split"),
        ("recipes:\n  default:\n    dataset: {p: 1.0}\n", "it takes no overrides"),
        ("recipes:\n  ../x: {}\n", "recipe '../x' is invalid"),
        ("recipes:\n  x:\n    training: {lr: 1}\n", "recipe 'x' is invalid"),
        ("recipes: [x]\n", "needs a mapping `recipes:`"),
        ("recipes: {x: {dataset: [p]\n", "is not valid YAML"),
    ],
)
def test_an_invalid_experiments_file_says_what_is_wrong(tmp_path, text, message):
    with pytest.raises(RecipesError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_recipes(write(tmp_path / "experiments.yaml", text))


@pytest.fixture(scope="module")
def with_recipes(sample_pipeline, tmp_path_factory):
    """The sample pipeline's project with an experiments file of its own: the default and `oracle_always`."""
    project, instance, _ = sample_pipeline
    experiments = write(
        tmp_path_factory.mktemp("recipes") / "experiments.yaml",
        "recipes:\n  default: {}\n  oracle_always:\n    dataset: {p: 1.0, refusal_p: 0.0}\n  unknown_setting:\n"
        "    dataset: {oracle_probability: 1.0}\n",
    )
    return ProjectPaths(**{**project.model_dump(), "experiments_file": str(experiments)}), instance


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_a_recipe_builds_its_own_dataset_from_the_shared_upstream_on_the_default_split(with_recipes):
    project, instance = with_recipes
    result = run_assets(project, instance, [raft_dataset, raft_dataset_checks], partition="oracle_always")
    facts = metadata(result, "raft_dataset")
    folder = Path(project.data_dir) / "recipes" / "oracle_always" / "raft"
    assert facts["recipe"] == "oracle_always" and "'p': 1.0" in facts["recipe_overrides"]
    assert facts["oracle_present_share"] == 1.0 and facts["refusal_share"] == 0.0
    records = [json.loads(line) for line in (folder / "raft.jsonl").read_text().splitlines()]
    assert records and all(record["oracle_included"] for record in records)
    default_records = (Path(project.data_dir) / "raft" / "raft.jsonl").read_text().splitlines()
    assert not all(json.loads(line)["oracle_included"] for line in default_records)  # the default's p is 0.8
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["same_split_as_default"].passed and all(check.passed for check in checks.values())


def test_a_recipe_split_unlike_the_default_fails_its_check(with_recipes):
    """Planted: one eval document of the default's split moved to train in the recipe's splits.parquet."""
    project, instance = with_recipes
    run_assets(project, instance, [raft_dataset], partition="oracle_always")
    splits_file = Path(project.data_dir) / "recipes" / "oracle_always" / "raft" / "splits.parquet"
    splits = pl.read_parquet(splits_file)
    moved = splits.filter(pl.col("split") == "eval")["doc_id"][0]
    splits.with_columns(
        pl.when(pl.col("doc_id") == moved).then(pl.lit("train")).otherwise(pl.col("split")).alias("split")
    ).write_parquet(splits_file)
    check = run_check(project, instance, raft_dataset_checks, "oracle_always")["same_split_as_default"]
    assert not check.passed
    assert f"{moved} (train, default: eval)" in check.description


def test_a_recipe_that_names_an_unknown_setting_fails_with_the_settings_it_has(with_recipes):
    project, instance = with_recipes
    instance.add_dynamic_partitions("recipes", ["unknown_setting"])
    result = dg.materialize(
        [raft_dataset],
        partition_key="unknown_setting",
        instance=instance,
        resources={"paths": project},
        raise_on_error=False,
    )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert "Recipe 'unknown_setting': dataset has no setting oracle_probability" in description
    assert "num_distractors" in description  # the settings it has
