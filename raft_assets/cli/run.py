"""`raft-assets run`: materialize the graph without the UI, into the same Dagster instance."""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raft_assets.contracts.recipes import DEFAULT_RECIPE, RecipesError
from raft_assets.contracts.sources import SourcesError
from raft_assets.definitions import defs
from raft_assets.defs.automation.sensors import partition_changes
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.instance import fail_dead_runs, local_instance, runner_tags
from raft_assets.defs.partitions import doc_sources, recipes
from raft_assets.defs.resources import ProjectPaths
from raft_assets.generation.extractive import STAND_IN_NOTE
from raft_assets.settings import load_settings

console = Console()
STATUS_STYLE = {"materialized": "green", "check failed": "red", "failed": "red", "skipped": "yellow"}
DAGSTER_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}  # around the asset's error
CHECK_FAILED = "DagsterAssetCheckFailedError"  # a step stopped by a failed blocking check
GENERATED = {questions.key, cot_answers.key}  # what the extractive stand-in writes when no endpoint is set


class RunError(Exception):
    """A run that cannot start: bad selection, unknown source or recipe, invalid sources or experiments file."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one asset (one partition of it, for per-source and per-recipe assets) in the run."""

    asset: str
    partition: str | None
    status: str  # a key of STATUS_STYLE
    rows: int | None = None
    path: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset


@dataclass
class RunReport:
    outcomes: list[Outcome]
    problems: list[str]  # failed steps and failed checks, with their messages

    @property
    def ok(self) -> bool:
        return not self.problems and all(outcome.status == "materialized" for outcome in self.outcomes)


def run_command(args: argparse.Namespace) -> int:
    instance = local_instance()
    for run_id in fail_dead_runs(instance):
        console.print(f"[yellow]![/yellow] run {run_id} of a killed process: marked failed, its pool slot freed")
    started = time.monotonic()
    try:
        run_config = load_run_config(args.config)
        report = materialize(args.select, Only(args.source, args.recipe), instance, run_config, verbose=args.verbose)
    except (RunError, SourcesError, RecipesError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2
    print_summary(report, time.monotonic() - started, instance)
    return 0 if report.ok else 1


def load_run_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise RunError(f"cannot read --config {path}: {error}") from None
    if not isinstance(config, dict) or set(config) - {"ops", "resources"}:
        raise RunError(f"--config {path} must be a mapping with `ops` and/or `resources`")
    return config


def run_config_for(keys: list[dg.AssetKey], config: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """The user's run config narrowed to the assets of one run, plus the console log level."""
    names = {key.to_python_identifier() for key in keys}
    narrowed = {**config, "ops": {name: ops for name, ops in config.get("ops", {}).items() if name in names}}
    # Without --verbose the summary below says what failed; Dagster's own log stays quiet.
    return narrowed if verbose else {**narrowed, "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class Only:
    """The partitions named by --source and --recipe (None: every one)."""

    sources: list[str] | None = None
    recipes: list[str] | None = None


def materialize(
    selection: str | None, only: Only, instance: dg.DagsterInstance, config: dict[str, Any], verbose: bool
) -> RunReport:
    """Run the selected per-source assets partition by partition; then, recipe by recipe (`default` first, with the
    unpartitioned assets they read), the per-recipe assets; then the assets over every recipe. Without a selection:
    every asset, or with --recipe alone, the recipes' assets and what reads every recipe (a new recipe's run)."""
    asset_graph = defs.resolve_asset_graph()
    if selection is None and only.recipes and not only.sources:
        keys = recipe_assets(asset_graph)
    else:
        keys = resolve_selection(selection or "*", asset_graph)
    ordered = [key for key in asset_graph.toposorted_asset_keys if key in keys]
    partitioned = {key: asset_graph.get(key).partitions_def for key in ordered}
    per_source = [key for key in ordered if partitioned[key] == doc_sources]
    per_recipe = [key for key in ordered if partitioned[key] == recipes]
    unpartitioned = [key for key in ordered if partitioned[key] is None]
    after_recipes = [key for key in unpartitioned if reads_every_recipe(asset_graph, key)]
    with_default = [key for key in unpartitioned if key not in after_recipes]

    report = RunReport([], [])
    if keys & GENERATED and not generator_configured(config):
        console.print(f"[yellow]![/yellow] {escape(STAND_IN_NOTE[0].upper() + STAND_IN_NOTE[1:])}.")
    paths = ProjectPaths.from_settings(load_settings())
    sources = Entries("source", paths.sources_file, [spec.name for spec in paths.sources()]) if per_source else None
    source_keys = sync_partitions(instance, doc_sources, sources, only.sources) if sources else []
    for partition_key in source_keys:
        console.print(f"[bold]▶[/bold] {names(per_source)} for source {escape(partition_key)}")
        add_result(report, execute(instance, per_source, config, verbose, partition_key), per_source, partition_key)
    recipe_names = Entries("recipe", paths.experiments_file, [r.name for r in paths.recipes()]) if per_recipe else None
    recipe_keys = sync_partitions(instance, recipes, recipe_names, only.recipes) if recipe_names else []
    if with_default and DEFAULT_RECIPE not in recipe_keys:
        run_after(report, with_default, instance, config, verbose)
    for recipe in recipe_keys:
        selected = [*with_default, *per_recipe] if recipe == DEFAULT_RECIPE else per_recipe
        run_after(report, selected, instance, config, verbose, recipe)
    run_after(report, after_recipes, instance, config, verbose)
    return report


def recipe_assets(asset_graph: dg.AssetGraph) -> set[dg.AssetKey]:
    """The per-recipe assets, and the assets that read every recipe (the experiment report)."""
    keys = asset_graph.get_all_asset_keys()
    return {
        key for key in keys if asset_graph.get(key).partitions_def == recipes or reads_every_recipe(asset_graph, key)
    }


def reads_every_recipe(asset_graph: dg.AssetGraph, key: dg.AssetKey) -> bool:
    """Whether an unpartitioned asset reads per-recipe assets and none reads it (experiment_report): it runs after
    every recipe, while the others (the index, the eval set) run with the default recipe."""
    per_recipe = {k for k in asset_graph.get_all_asset_keys() if asset_graph.get(k).partitions_def == recipes}
    read_by_a_recipe = any(key in asset_graph.get_ancestor_asset_keys(k) for k in per_recipe)
    return bool(asset_graph.get_ancestor_asset_keys(key) & per_recipe) and not read_by_a_recipe


def run_after(
    report: RunReport,
    keys: list[dg.AssetKey],
    instance: dg.DagsterInstance,
    config: dict[str, Any],
    verbose: bool,
    recipe: str | None = None,
) -> None:
    """Run `keys` (for `recipe`), or mark them skipped when an earlier run of this command failed."""
    if not keys:
        return
    if report.problems:
        report.outcomes += [Outcome(key.to_user_string(), recipe, "skipped") for key in keys]
        return
    console.print(f"[bold]▶[/bold] {names(keys)}" + (f" for recipe {escape(recipe)}" if recipe else ""))
    add_result(report, execute(instance, keys, config, verbose, recipe), keys, recipe)


def generator_configured(config: dict[str, Any]) -> bool:
    """Whether the `llm` resource has an endpoint: from the run config, or from RAFT_LLM_BASE_URL."""
    llm_config = (config.get("resources") or {}).get("llm", {}).get("config", {})
    return bool(llm_config.get("base_url") or defs.resources["llm"].base_url)


def execute(
    instance: dg.DagsterInstance,
    keys: list[dg.AssetKey],
    config: dict[str, Any],
    verbose: bool,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of `keys` in this process, tagged with it (see `fail_dead_runs`); failures are in the result."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=keys,
        run_config=run_config_for(keys, config, verbose),
        raise_on_error=False,
        tags=runner_tags(),
    )


def names(keys: list[dg.AssetKey]) -> str:
    return ", ".join(key.to_user_string() for key in keys)


def resolve_selection(selection: str, asset_graph: dg.AssetGraph) -> set[dg.AssetKey]:
    """Comma-separated clauses of Dagster's asset selection syntax, united."""
    clauses = [clause.strip() for clause in selection.split(",") if clause.strip()]
    if not clauses:
        raise RunError("--select is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            selections = [dg.AssetSelection.from_string(clause) for clause in clauses]
    except dg.DagsterError as error:
        raise RunError(f"cannot parse --select {selection!r}: {error}") from None
    try:
        return set().union(*(clause.resolve(asset_graph) for clause in selections))
    except dg.DagsterInvalidSubsetError as error:
        known = names(sorted(asset_graph.get_all_asset_keys()))
        raise RunError(f"{error}\nKnown assets: {known}") from None


@dataclass(frozen=True)
class Entries:
    """The names in the sources or experiments file: the partitions there should be."""

    what: str  # source, recipe
    file: str
    names: list[str]


def sync_partitions(
    instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition, entries: Entries, only: list[str] | None
) -> list[str]:
    """Make the partitions match the file's entries; return the keys to run, in file order."""
    wanted = entries.names
    added, removed = partition_changes(instance.get_dynamic_partitions(partitions.name), wanted)
    if added:
        instance.add_dynamic_partitions(partitions.name, added)
    for key in removed:
        instance.delete_dynamic_partition(partitions.name, key)
    if not only:
        return wanted
    unknown = [name for name in only if name not in wanted]
    if unknown:
        what = entries.what
        raise RunError(f"unknown {what} {', '.join(unknown)}; {what}s in {entries.file}: {', '.join(wanted)}")
    return [name for name in wanted if name in only]


def add_result(
    report: RunReport, result: dg.ExecuteInProcessResult, keys: list[dg.AssetKey], partition: str | None
) -> None:
    """Record each asset's outcome and every failed step or check of one in-process run."""
    where = f" [{partition}]" if partition else ""
    failed_steps = set()
    for event in result.all_events:
        if event.is_step_failure:
            failed_steps.add(event.step_key)
            error = event.step_failure_data.error
            if error is None or error.cls_name != CHECK_FAILED:  # else the failed check's own line says why
                report.problems.append(f"step {event.step_key}{where} failed: {failure_reason(event)}")
    failed_checks = set()
    asset_graph = defs.resolve_asset_graph()
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            failed_checks.add(evaluation.asset_key)
            reason = evaluation.description or asset_graph.get_check_spec(evaluation.asset_check_key).description
            report.problems.append(
                f"check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}{where} failed: {reason}"
            )
    materializations = {event.asset_key: event.materialization for event in result.get_asset_materialization_events()}
    for key in keys:
        materialization = materializations.get(key)
        if materialization is None:
            status = "failed" if key.to_python_identifier() in failed_steps else "skipped"
            report.outcomes.append(Outcome(key.to_user_string(), partition, status))
            continue
        rows = materialization.metadata.get("dagster/row_count")
        path = materialization.metadata.get("path")
        report.outcomes.append(
            Outcome(
                key.to_user_string(),
                partition,
                "check failed" if key in failed_checks else "materialized",
                rows=rows.value if rows else None,
                path=display_path(path.value) if path else None,
                note="by a stand-in" if "stand_in" in materialization.metadata else None,
            )
        )


def failure_reason(step_failure: dg.DagsterEvent) -> str:
    """Why a step failed, without --verbose: a dg.Failure's description, or else the exception the asset raised
    and what caused it (`Type: message`, each cause after a ←), without Dagster's wrapper around them."""
    failure = step_failure.step_failure_data
    if failure.user_failure_data is not None and failure.user_failure_data.description:
        return failure.user_failure_data.description
    chain = []
    error = failure.error
    while error is not None:
        if error.cls_name not in DAGSTER_WRAPPERS:
            text = error.message.strip()
            # `message` starts with the qualified class name (`raft_assets.training.base_model.BaseModelMissing: ...`)
            text = text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith(error.cls_name) else text
            chain.append(f"{error.cls_name}: {text}")
        error = error.cause
    return " ← ".join(chain) or "unknown error"


def display_path(path: str) -> str:
    """Relative to the working directory when inside it: shorter in a terminal."""
    absolute = Path(path)
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else path


def print_summary(report: RunReport, seconds: float, instance: dg.DagsterInstance) -> None:
    table = Table(title=f"raft-assets run: {len(report.outcomes)} materializations planned, {seconds:.1f} s")
    for column in ("asset", "status", "rows", "file", "note"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes:
        table.add_row(
            escape(outcome.label),
            f"[{STATUS_STYLE[outcome.status]}]{outcome.status}[/]",
            "-" if outcome.rows is None else str(outcome.rows),
            escape(outcome.path or "-"),
            escape(outcome.note or ""),
        )
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]✗[/red] {escape(problem)}")
    console.print(f"Runs are recorded in {instance.root_directory}; `make dev` shows them in the Dagster UI.")
