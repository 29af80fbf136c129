"""Resume everywhere: `raft-assets run` killed during ingestion, training and evaluation picks up where it stopped.

The whole graph runs as a user runs it (the CLI in a subprocess) on the sample sources plus a sitemap source
served on loopback, with OpenAI-compatible test servers as generator and judge and the tiny base model
(`whole_graph`). The reference is the suite's uninterrupted run, `whole_graph.reference()` (the one
test_end_to_end checks, with the same sources and run config; its servers' faults are retried and change no file),
which runs in the background meanwhile. Another workspace is killed three times with SIGKILL, each run starting
where the last one was killed, and a fourth run completes:

1. during `documents` of the sitemap source `site`, while its web server holds one page: `llama_docs`, before it,
   is done (its LLM requests too), `pytorch_docs` not started;
2. during `fsdp_checkpoint`, once `latest` names step 2 of 4. Only the CLI's process group is killed:
   torchrun's workers run in sessions of their own and must die with their launcher, not train on as orphans;
3. during `eval_report`, once the judge (holding every request after the first few) has answered a few and the
   answers are in the reply cache.

The runs together send exactly the requests the reference run sends, each once (generator and judge), train each
of the 4 steps once, and write the same files: parquet tables, RAFT records, eval set, the fine-tuned weights and
the evaluation report (timings aside). Nothing half-written is left behind.

Killing the generation half way (questions and CoT answers) is tested in test_resume_and_secrets.py. Not saved
across a kill: the pages of a sitemap source (a source is fetched again as a whole). The local models' answers in
`eval_report` are kept under the identity of the checkpoint's files, which the run after the kill in evaluation
keeps (`hf_checkpoint` is not written again for the same checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from raft_assets_tests.conftest import RAFT_ASSETS, REPO, cli_env, run_cli
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.test_resume_and_secrets import cached_replies
from raft_assets_tests.test_train_script import descendants
from raft_assets_tests.whole_graph import (
    HELD_PAGE,
    PAGES,
    STEPS,
    EndToEndRun,
    WholeGraph,
    Workspace,
    generator,
    judge,
    workspace,
)

pytestmark = [pytest.mark.resume, pytest.mark.end_to_end, pytest.mark.torchrun, pytest.mark.timeout(900)]

SAVED_AT_KILL = "step_000002"  # the checkpoint that the run killed in training saved, of the two it saves
JUDGE_HOLD_AFTER = 4  # judge replies before the judge holds the rest: the run is then inside eval_report
TABLES = ("documents", "chunks", "questions", "cot_answers", "curated_answers")


def endpoints(generator_server: OpenAITestServer, judge_server: OpenAITestServer) -> dict[str, str]:
    return {
        "RAFT_LLM_BASE_URL": generator_server.base_url,
        "RAFT_LLM_MODEL": "llama-70b",
        "RAFT_JUDGE_BASE_URL": judge_server.base_url,
        "RAFT_JUDGE_MODEL": "judge",
    }


def start_run(space: Workspace, log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`raft-assets run` in a session of its own (so that its process group can be killed), output to `log`."""
    with log.open("w") as output:
        return subprocess.Popen(
            [RAFT_ASSETS, "run", *space.args()],
            cwd=REPO,
            env=cli_env(space.root, space.sources, **env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(process: subprocess.Popen, log: Path, ready: Callable[[], bool], what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}:\n" + log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"the run never got to {what}:\n" + log.read_text()[-4000:]
        time.sleep(0.01)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pids: list[int]) -> list[int]:
    """The processes of `pids` that still run (a zombie has finished running)."""
    found = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(pid)
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_like_a_lost_machine(process: subprocess.Popen) -> None:
    """SIGKILL the run's process group and every process below it, at once (nothing when it has ended)."""
    if process.poll() is None:
        below = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        kill(below)
    process.wait(timeout=60)


def step_lines(log: Path) -> list[int]:
    """The steps that rank 0 reported in a run's output (one JSON line per optimizer step)."""
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if line.startswith('{"step": ')]


def without_timings(value):
    """The report without what differs between a resumed run and an uninterrupted one: times, which answers came
    from the cache (the resumed run's killed part did), and the note that counts them."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if "seconds" not in key and key != "cached"}
    if isinstance(value, list):
        return [without_timings(item) for item in value if not (isinstance(item, str) and "from the cache" in item)]
    return value


# `.<name>.partial` (parquet, RAFT files, DCP steps, index batches), `.<name>.<pid>.tmp` (write_text_atomically),
# `.<name>.<purpose>-<pid>` (staging_dir: the export, the tiny model)
HALF_WRITTEN = re.compile(r"^\..+\.(partial|\d+\.tmp|[a-z]+-\d+)$")


def leftovers(space: Workspace) -> list[Path]:
    """Half-written files or folders, which a killed run may leave and the next must not."""
    return [
        path
        for folder in (space.data, space.checkpoints)
        for path in folder.rglob(".*")
        if HALF_WRITTEN.match(path.name)
    ]


@dataclass
class Interrupted:
    """The workspace killed three times, then run to the end, with what was seen at each kill."""

    space: Workspace
    logs: list[Path]
    generator: Counter[str]  # requests answered, over all four runs
    judge: Counter[str]
    generator_at_kill: list[Counter[str]]  # at each of the three kills
    judge_at_kill: Counter[str]  # after the kill in eval_report
    site_at_kill: Counter[str]  # pages that the run killed in `documents` had requested
    tables_at_ingestion_kill: list[str]
    checkpoint_at_kill: str
    processes_at_kill: dict[int, str]  # the processes below the CLI when it was killed in training: command lines
    survivors: list[int]  # of those, the ones still running 10 s after
    checkpoint_after_kill: str | None  # what `latest` named once they had died (or 10 s had passed)
    fsdp_after_training_kill: list[dict]
    report_at_kill: bool  # whether eval_report.json existed when the run was killed in eval_report


@pytest.fixture(scope="module")
def runs(site, whole_graph: WholeGraph, tmp_path_factory) -> tuple[Interrupted, EndToEndRun]:
    """The interrupted runs, and the uninterrupted one they are compared with, which runs meanwhile in the
    background: they start once it has fetched the sitemap site, so that the site's requests are theirs alone."""
    whole_graph.wait_until_site_fetched()
    space = workspace(tmp_path_factory.mktemp("interrupted"), site)
    logs = [space.root / f"run{i}.log" for i in range(1, 5)]
    gen = OpenAITestServer(generator, models=["llama-70b"])
    jud = OpenAITestServer(judge, models=["judge"], hold_after=JUDGE_HOLD_AFTER)
    generator_at_kill = []
    with gen, jud:
        env = endpoints(gen, jud)

        # 1. Killed in `documents` of `site`, its second source, while a page hangs.
        requested_before = Counter(site.requests)  # the uninterrupted run's
        site.hold()
        process = start_run(space, logs[0], env)
        try:
            wait_for(process, logs[0], site.held.is_set, "the held page of the sitemap source")
            time.sleep(0.5)  # the other pages of the source are fetched meanwhile
        finally:
            kill_like_a_lost_machine(process)
        site_at_kill = Counter(site.requests) - requested_before
        site.release()
        tables = sorted(str(path.relative_to(space.data)) for path in space.data.rglob("*.parquet"))
        generator_at_kill.append(gen.stats.completed_fingerprints)

        # 2. Killed in `fsdp_checkpoint` at an intermediate checkpoint: the CLI's process group only.
        process, processes_at_kill = start_run(space, logs[1], env), {}
        try:
            wait_for(process, logs[1], lambda: space.latest_checkpoint() == SAVED_AT_KILL, "a checkpoint")
            checkpoint_at_kill = space.latest_checkpoint()
            processes_at_kill = {pid: command_line(pid) for pid in descendants(process.pid)}
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            deadline = time.monotonic() + 10
            while alive(list(processes_at_kill)) and time.monotonic() < deadline:
                time.sleep(0.05)
            survivors = alive(list(processes_at_kill))
            checkpoint_after_kill = space.latest_checkpoint()
        finally:
            kill_like_a_lost_machine(process)
            kill(list(processes_at_kill))
        generator_at_kill.append(gen.stats.completed_fingerprints)
        fsdp_after_training_kill = space.fsdp_materializations()

        # 3. Killed in `eval_report`, once the first judge replies are in the reply cache.
        process = start_run(space, logs[2], env)
        try:
            wait_for(
                process,
                logs[2],
                lambda: (
                    jud.stats.completed >= JUDGE_HOLD_AFTER
                    and cached_replies(space.data) == gen.stats.completed + jud.stats.completed
                ),
                "the judge",
            )
        finally:
            kill_like_a_lost_machine(process)
        generator_at_kill.append(gen.stats.completed_fingerprints)
        judge_at_kill = jud.stats.completed_fingerprints
        report_at_kill = (space.data / "reports" / "eval_report.json").exists()

        # 4. To the end, the judge answering again.
        jud.release()
        result = run_cli(space.root, *space.args(), sources=space.sources, **env)
        logs[3].write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
        interrupted = Interrupted(
            space=space,
            logs=logs,
            generator=gen.stats.completed_fingerprints,
            judge=jud.stats.completed_fingerprints,
            generator_at_kill=generator_at_kill,
            judge_at_kill=judge_at_kill,
            site_at_kill=site_at_kill,
            tables_at_ingestion_kill=tables,
            checkpoint_at_kill=checkpoint_at_kill,
            processes_at_kill=processes_at_kill,
            survivors=survivors,
            checkpoint_after_kill=checkpoint_after_kill,
            fsdp_after_training_kill=fsdp_after_training_kill,
            report_at_kill=report_at_kill,
        )
        return interrupted, whole_graph.reference()


@pytest.fixture(scope="module")
def interrupted(runs) -> Interrupted:
    return runs[0]


@pytest.fixture(scope="module")
def reference(runs) -> EndToEndRun:
    return runs[1]


def frames(space: Workspace) -> dict[str, pl.DataFrame]:
    return {
        str(path.relative_to(space.data)): pl.read_parquet(path)
        for stage in TABLES
        for path in sorted((space.data / stage).glob("*.parquet"))
    }


def test_ingestion_killed_in_a_source_resumes_without_repeating_the_finished_sources(interrupted, reference):
    run = interrupted
    assert run.site_at_kill[HELD_PAGE] == 1 and run.site_at_kill["/sitemap.xml"] == 1  # killed inside `documents`
    # the source before `site` was done, nothing of `site` or of the source after it was written
    assert run.tables_at_ingestion_kill == sorted(f"{stage}/llama_docs.parquet" for stage in TABLES)
    done_before = run.generator_at_kill[0]
    assert sum(done_before.values()) > 0
    assert all(run.generator[fingerprint] == 1 for fingerprint in done_before)  # none asked again

    assert not leftovers(run.space)
    reference_frames, resumed_frames = frames(reference.space), frames(run.space)
    assert sorted(resumed_frames) == sorted(reference_frames)
    assert {name.split("/")[1] for name in resumed_frames} == {
        "llama_docs.parquet",
        "site.parquet",
        "pytorch_docs.parquet",
    }
    for name, frame in reference_frames.items():
        assert resumed_frames[name].equals(frame), name
    site_documents = resumed_frames["documents/site.parquet"]
    assert site_documents["error"].is_null().all() and site_documents.height == len(PAGES)


def test_training_killed_at_a_checkpoint_resumes_there_and_trains_each_step_once(interrupted, reference):
    run = interrupted
    # torchrun and its two workers were running; killing the CLI's process group took all three with it
    commands = run.processes_at_kill.values()
    launchers = [command for command in commands if "-m torch.distributed.run" in command]
    workers = [
        command for command in commands if "-m raft_assets.training.train" in command and command not in launchers
    ]
    assert len(launchers) == 1 and len(workers) == 2, run.processes_at_kill
    assert run.survivors == [], "processes of the killed run still run (orphaned torchrun workers)"
    assert run.checkpoint_after_kill == run.checkpoint_at_kill  # no orphan trained on
    assert run.fsdp_after_training_kill == []  # the killed run materialized nothing
    saved = int(run.checkpoint_at_kill.removeprefix("step_"))

    # the next run resumed from the checkpoint and trained only the steps after it; the last run launched no training
    resumed, again = run.space.fsdp_materializations()
    assert resumed["resumed"] is True and resumed["launched"] is True and resumed["steps"] == STEPS
    assert f"resumed from {run.checkpoint_at_kill}: step {saved}" in run.logs[2].read_text()
    assert step_lines(run.logs[2]) == list(range(saved + 1, STEPS + 1))
    assert again["launched"] is False and again["steps"] == STEPS and step_lines(run.logs[3]) == []
    assert [point["step"] for point in resumed["loss_curve"]] == list(range(1, STEPS + 1))
    assert set(step_lines(run.logs[1])) >= set(range(1, saved + 1))  # what the killed run had trained
    assert all(run.generator[fingerprint] == 1 for fingerprint in run.generator_at_kill[1])  # no request repeated

    # the same weights as the uninterrupted run (gloo on CPUs is deterministic)
    space = reference.space
    reference_weights, resumed_weights = hf_weights(space), hf_weights(run.space)
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    reference_losses = [point["loss"] for point in reference_fsdp(space)["loss_curve"]]
    assert [point["loss"] for point in resumed["loss_curve"]] == pytest.approx(reference_losses, rel=1e-5)


def hf_weights(space: Workspace) -> dict[str, torch.Tensor]:
    run = (space.checkpoints / "hf" / "latest_run").read_text().strip()
    return load_file(space.checkpoints / "hf" / run / "model.safetensors")


def reference_fsdp(space: Workspace) -> dict:
    (materialization,) = space.fsdp_materializations()
    assert materialization["resumed"] is False
    return materialization


def test_evaluation_killed_while_judging_asks_nothing_twice_and_writes_the_same_report(interrupted, reference):
    run = interrupted
    space, reference_generator, reference_judge = reference.space, reference.generator, reference.judge
    assert sum(run.judge_at_kill.values()) >= JUDGE_HOLD_AFTER  # killed while judging, before the report
    assert sum(reference_judge.values()) > sum(run.judge_at_kill.values()) and not run.report_at_kill
    # Every generator request (questions, CoT answers, ratings, the reference system's answers) was answered before
    # the kill, and none again after it; no judge request answered before the kill was asked again.
    assert run.generator_at_kill[2] == run.generator == reference_generator
    assert all(run.judge[fingerprint] == 1 for fingerprint in run.judge_at_kill)
    # Over the four runs, generator and judge answered exactly the requests of the uninterrupted run, each once.
    assert run.judge == reference_judge
    assert set(run.generator.values()) == {1} and set(run.judge.values()) == {1}

    report = json.loads((run.space.data / "reports" / "eval_report.json").read_text())
    expected = json.loads((space.data / "reports" / "eval_report.json").read_text())
    assert without_timings(report) == without_timings(expected)
    for name in ("raft/raft.jsonl", "raft/raft_train.jsonl", "raft/raft_test.jsonl", "eval/eval_set.json"):
        assert (run.space.data / name).read_bytes() == (space.data / name).read_bytes(), name
