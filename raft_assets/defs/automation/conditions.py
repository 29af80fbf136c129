"""Declarative automation: an asset is refreshed when the data of a dependency changed, once upstream is settled.

`documents` is the root: the crawl schedule and the folder sensor materialize it. Its data version is a hash
of the documents' contents, so a crawl that finds nothing new leaves it unchanged and nothing downstream runs:
no LLM request, no training. A changed document changes the data version of its partition; the assets
downstream of that partition are requested one stage after another, each only when its input really changed.
"""

import dagster as dg

# Longer than the longest path in the asset graph (documents -> chunks -> questions -> cot_answers ->
# curated_answers -> raft_dataset -> fsdp_checkpoint -> hf_checkpoint -> eval_report -> experiment_report).
UPSTREAM_DEPTH = 10


def upstream_busy(depth: int = UPSTREAM_DEPTH) -> dg.AutomationCondition:
    """True while an asset upstream (up to `depth` levels) is queued, running, or requested on this tick.

    An asset with several paths from a changed input (raft_dataset reads chunks, questions and cot_answers)
    waits for all of them instead of running once per path.
    """
    busy = dg.AutomationCondition.in_progress() | dg.AutomationCondition.will_be_requested()
    condition = dg.AutomationCondition.any_deps_match(busy)
    for _ in range(depth - 1):
        condition = dg.AutomationCondition.any_deps_match(busy | condition)
    return condition.with_label("upstream_busy")


def on_upstream_data_change() -> dg.AutomationCondition:
    """Requested when a dependency's data version changed since this asset was last requested or updated.

    Updates of a dependency made by a run that also targeted this asset (a manual run of the whole job) do
    not count: that run refreshed this asset already.
    """
    dependency_changed = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() & ~dg.AutomationCondition.executed_with_root_target()
    ).with_label("dependency_data_changed")
    return (
        dependency_changed.since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~upstream_busy()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("on_upstream_data_change")
