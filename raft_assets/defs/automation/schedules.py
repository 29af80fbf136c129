"""The crawl schedule: every source is read again (daily by default, `RAFT_CRAWL_SCHEDULE` to change)."""

import dagster as dg

from raft_assets.defs.automation.jobs import crawl_job
from raft_assets.defs.partitions import doc_sources
from raft_assets.settings import load_settings

CRAWL_SCHEDULE = load_settings().crawl_schedule


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
