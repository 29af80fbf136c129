"""The local instance: a killed `raft-assets run` does not keep its `gpu` slot from the next run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from raft_assets.defs.instance import TEMPLATE, fail_dead_runs

# A run in its own process, holding the `gpu` pool's one slot (dagster.yaml) for `seconds`, tagged as the CLI's.
GPU_RUN = """
import sys, time
import dagster as dg
from raft_assets.defs.instance import runner_tags

@dg.asset(pool="gpu")
def gpu_work():
    print("holding the slot", flush=True)
    time.sleep(float(sys.argv[1]))

with dg.DagsterInstance.get() as instance:
    assert dg.materialize([gpu_work], instance=instance, tags=runner_tags()).success
print("done", flush=True)
"""


def gpu_run(home: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", GPU_RUN, str(seconds)], env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow  # a run killed in a subprocess
def test_the_slot_of_a_killed_run_is_given_back(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    killed = gpu_run(home, 600)
    assert killed.stdout.readline().strip() == "holding the slot"
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [stuck] = instance.get_runs()
        assert stuck.status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert fail_dead_runs(instance) == [stuck.run_id]
        assert instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert fail_dead_runs(instance) == []  # nothing left to mark

    started = time.monotonic()
    after = gpu_run(home, 0)
    assert after.wait(timeout=120) == 0 and after.stdout.read().strip().endswith("done")
    assert time.monotonic() - started < 120


def test_a_live_run_is_left_alone(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    running = gpu_run(home, 600)
    try:
        assert running.stdout.readline().strip() == "holding the slot"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert fail_dead_runs(instance) == []
            [run] = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.STARTED
    finally:
        running.kill()
        running.wait()
