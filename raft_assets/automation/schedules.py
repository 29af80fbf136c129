"""The crawl schedule: every source is read again (daily by default, `RAFT_CRAWL_SCHEDULE` to change)."""

import os

import dagster as dg

from raft_assets.automation.jobs import crawl_job
from raft_assets.partitions import doc_sources

CRAWL_SCHEDULE = os.environ.get("RAFT_CRAWL_SCHEDULE", "0 3 * * *")


@dg.schedule(
    job=crawl_job,
    cron_schedule=CRAWL_SCHEDULE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-crawls every source; unchanged documents keep their data version, so nothing downstream runs.",
)
def crawl_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    if not sources:
        return dg.SkipReason("No source partitions yet: doc_sources_sensor adds them from the sources file.")
    tick = context.scheduled_execution_time.isoformat()
    return [dg.RunRequest(run_key=f"{source}:{tick}", partition_key=source) for source in sources]
