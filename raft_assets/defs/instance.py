"""The local Dagster instance under DAGSTER_HOME (default `.dagster_home`), shared by the CLI and the UI."""

from __future__ import annotations

import filecmp
import os
import shutil
import socket
from pathlib import Path

import dagster as dg

TEMPLATE = Path(__file__).with_name("dagster.yaml")

# Tags of the runs that `raft-assets run` executes in its own process: which process, on which host.
PID_TAG = "raft_assets/pid"
HOST_TAG = "raft_assets/host"


def prepare_home() -> Path:
    """Create DAGSTER_HOME (absolute) with the project's dagster.yaml unless it has one; export it."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        shutil.copyfile(TEMPLATE, settings)
    elif not filecmp.cmp(settings, TEMPLATE, shallow=False):
        print(f"Using {settings}, which differs from {TEMPLATE} (delete it to take the project's).")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def local_instance() -> dg.DagsterInstance:
    prepare_home()
    return dg.DagsterInstance.get()


def runner_tags() -> dict[str, str]:
    """Tags naming this process, so that a later run can tell when the process of this one died."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark the in-process runs of this host whose process is gone as failed, and free their pool slots.

    A killed `raft-assets run` leaves its run STARTED and its `gpu` slot taken, and the next run would wait
    for that slot forever. Returns the ids of the runs marked failed.
    """
    in_progress = dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED], tags={HOST_TAG: socket.gethostname()}
    )
    failed = []
    for record in instance.get_run_records(in_progress):
        run = record.dagster_run
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and not process_alive(pid):
            instance.report_run_failed(run, f"The process that ran it ({pid}) is gone: it was killed.")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
    return failed


if __name__ == "__main__":
    print(prepare_home())
