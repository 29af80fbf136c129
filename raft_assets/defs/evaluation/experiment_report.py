"""`experiment_report`: every recipe's eval report side by side, with intervals, paired tests and the judge's
calibration (`evaluation/experiments.py`, `evaluation/calibration.py`).

It reads what each recipe's `eval_report` and `raft_dataset` wrote and recorded: their reports, and the fingerprints
of the chunks the dataset was built from and of the index the evaluation retrieved from, so a recipe evaluated
against another chunking, or on another eval set, is listed apart instead of compared.
"""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from raft_assets.defs.dataset.assets import raft_dataset
from raft_assets.defs.evaluation.assets import eval_report
from raft_assets.defs.metadata import CHUNKS_FINGERPRINT, EVAL_SET_VERSION, file_link, partition_metadata
from raft_assets.defs.partitions import every_partition, recipes
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.evaluation.calibration import (
    MIN_KAPPA,
    calibrate,
    judged_answers,
    judged_rows,
    load_verdicts,
    self_consistency,
    verdicts_file,
)
from raft_assets.evaluation.experiments import (
    RecipeEvaluation,
    experiment_table,
    metadata_markdown,
    write_experiment_report,
)
from raft_assets.evaluation.report import REPORT_JSON
from raft_assets.evaluation.run import judge_rows
from raft_assets.evaluation.statistics import Agreement
from raft_assets.hashing import content_hash
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.settings import load_settings


class ExperimentReportConfig(dg.Config):
    curation_file: str = Field(
        default=load_settings().eval_curation,
        description="The eval set's curation file; people's verdicts on the judge are beside it "
        "(`<name>.verdicts.jsonl`, written by `raft-assets review`).",
    )
    min_kappa: float = Field(
        default=MIN_KAPPA,
        ge=-1,
        le=1,
        description="The judge's Cohen's kappa with people (and with itself) below which the report warns.",
    )
    self_consistency_answers: int = Field(
        default=20,
        ge=0,
        description="Judged answers asked of the judge again, with the two answers in the other order, for its "
        "self-consistency (0: not measured).",
    )
    judge_attempts: int = Field(default=3, gt=0, description="Tries for a judge reply that is not YES or NO.")


@dg.asset(
    group_name="evaluation",
    kinds={"python", "markdown"},
    deps=[every_partition(eval_report), every_partition(raft_dataset)],
)
def experiment_report(
    context: dg.AssetExecutionContext, config: ExperimentReportConfig, paths: ProjectPaths, judge: LLMResource
) -> dg.MaterializeResult:
    """The recipes side by side: judge accuracy, F1 and precision on answered questions with 95% bootstrap
    intervals, each recipe against `default` on the same questions (McNemar, paired bootstrap), in words; the judge
    against people's verdicts and against itself."""
    evaluations, missing = recipe_evaluations(context.instance, paths)
    if not evaluations:
        raise dg.Failure("No recipe has an eval report yet: materialize eval_report first.")
    table = experiment_table(evaluations)
    table.notes += [f"Recipe {name}: no eval report yet (materialize eval_report[{name}])." for name in missing]
    verdicts_path = verdicts_file(Path(config.curation_file))
    human = load_verdicts(verdicts_path)
    consistency = judge_consistency(judge, paths, evaluations, config) if judge.configured else None
    calibration = calibrate(human, judged_answers(e.report for e in evaluations), consistency, config.min_kappa)
    files = write_experiment_report(paths.layout.experiment_reports_folder, table, calibration, verdicts_path)
    for warning in calibration.warnings():
        context.log.warning(warning.replace("**", ""))
    return dg.MaterializeResult(
        metadata={
            **file_link(files["markdown"]),
            "recipes": len(evaluations),
            "compared": len(evaluations) - len(table.excluded),
            "excluded": "; ".join(f"{name}: {why}" for name, why in table.excluded.items()) or "none",
            "human_verdicts": len(human),
            **({"judge_self_kappa": consistency.kappa} if consistency and consistency.kappa is not None else {}),
            "report": dg.MetadataValue.md(metadata_markdown(table, calibration, files["plot"])),
        },
        data_version=dg.DataVersion(content_hash(files["json"].read_text(encoding="utf-8"))),
    )


def recipe_evaluations(instance: dg.DagsterInstance, paths: ProjectPaths) -> tuple[list[RecipeEvaluation], list[str]]:
    """The eval report of every recipe that has one (and the recipes that have none), with what says whether its
    numbers are comparable: the chunks its dataset was built from and those its index served, and its eval set."""
    found, missing = [], []
    for recipe in instance.get_dynamic_partitions(recipes.name):
        layout = paths.layout.of_recipe(recipe)
        report_file = layout.reports_folder / REPORT_JSON
        evaluated = partition_metadata(instance, eval_report.key, recipe)
        built = partition_metadata(instance, raft_dataset.key, recipe)
        if not report_file.is_file() or evaluated is None or built is None:
            missing.append(recipe)
            continue
        report = json.loads(report_file.read_text(encoding="utf-8"))
        served, trained = evaluated.get(CHUNKS_FINGERPRINT), built.get(CHUNKS_FINGERPRINT)
        found.append(RecipeEvaluation(recipe, report, str(served), str(trained), evaluated.get(EVAL_SET_VERSION)))
    return found, missing


def judge_consistency(
    judge: LLMResource, paths: ProjectPaths, evaluations: list[RecipeEvaluation], config: ExperimentReportConfig
) -> Agreement | None:
    """The judge's verdicts on the first `self_consistency_answers` judged answers against its verdicts when asked
    again with the answers in the other order (new requests, so not answered from the reply cache)."""
    sample = list(judged_rows(e.report for e in evaluations).values())[: config.self_consistency_answers]
    if not sample:
        return None
    cache = ReplyCache(paths.layout.reply_cache_file)
    try:
        again = judge_rows(judge.endpoint(), cache, [row for row, _ in sample], config.judge_attempts, reordered=True)
    finally:
        cache.close()
    return self_consistency([verdict for _, verdict in sample], again)
