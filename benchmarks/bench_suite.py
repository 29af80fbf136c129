"""The test suite: its wall time against issue 13's target, and where its CPU goes, process by process.

The suite runs as `make test` runs it (`pytest -n auto`, or the pytest arguments given), while every process that
starts meanwhile is sampled from /proc every `--interval` seconds: its command line and its CPU time (user + system)
as last seen. The processes are grouped by kind (the xdist workers, torchrun's launchers and training workers,
`raft-assets` commands, `dagster dev` and the processes it starts, Chromium), and the processes the tests start are
also grouped by the test module that started them (their inherited PYTEST_CURRENT_TEST). wait4 gives the CPU of
every process that was waited for, which the samples should roughly match (a process shorter than the interval can
be missed; one that nobody waited for is only in the samples). /proc/stat gives how busy the cores were.

Why: on this 2-core machine the suite is CPU-bound (the cores are busy from collection to teardown), so its wall
time is its CPU time over the cores; what can be cut is in the table by kind, most of it the fixed cost of
processes each test needs (imports of torch, transformers and Dagster in each training worker and each
`raft-assets run`).

Before the suite, the fixed cost of the processes it starts most is measured alone, the machine otherwise idle:
importing the training script, a one-step fine-tune of the tiny model under torchrun with one and with two
processes, and a `raft-assets run` of one asset (`documents` of one sample source). Each is the cost of one such
process before it does a test's work; with both cores busy (as in the suite) each costs more.

Target: `make test` under 6 minutes (360 s) on this machine, with nothing else running.

Run from the repository root, on a quiet machine:
`.venv/bin/python benchmarks/bench_suite.py [--record] [--processes FILE] [-- ARGS]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import machine_description, publish, run_logged  # noqa: E402  (benchmarks/ is on sys.path)

TARGET_S = 360.0
WHOLE_SUITE = ["-n", "auto"]  # as `make test` runs it
CPU_BOUND = 0.9  # busy share of the cores from which the wall time is the CPU time over the cores
TICKS = os.sysconf("SC_CLK_TCK")
# (kind, parts of the command line): the first kind with a part in a process's command line is its kind
KINDS = [
    ("torchrun launcher", ("torch.distributed.run",)),
    ("training worker", ("raft_assets.training.train",)),
    ("xdist worker (or a process forked from one)", ("exec(eval(sys.stdin",)),
    ("raft-assets run", ("raft-assets run",)),
    ("raft-assets chat / serve / review", ("bin/raft-assets",)),
    ("dagster definitions validate", ("definitions validate",)),
    ("dagster dev", ("bin/dagster dev",)),
    ("dagster webserver", ("dagster_webserver",)),
    ("dagster daemon", ("dagster._daemon",)),
    ("dagster code server", ("code-server",)),
    ("dagster run worker (api execute_run)", ("-m dagster api",)),
    ("dagster step processes and forkserver", ("multiprocessing",)),
    ("Chromium and Playwright", ("chrom", "playwright")),
    ("pytest (controller)", ("-m pytest",)),
]


@dataclass
class Process:
    command: str
    test: str  # the test that started it (PYTEST_CURRENT_TEST), "" for the workers and the controller
    cpu_s: float = 0.0

    @property
    def kind(self) -> str:
        return next((kind for kind, parts in KINDS if any(part in self.command for part in parts)), "other")

    @property
    def module(self) -> str:
        return self.test.split("::")[0].removeprefix("raft_assets_tests/") or "-"


@dataclass
class Sampler:
    """Every process started after it was created, with the CPU time it had when last seen."""

    before: set[int]
    processes: dict[int, Process] = field(default_factory=dict)
    busy_ticks: int = 0
    all_ticks: int = 0

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self.before or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu_s = (int(fields[11]) + int(fields[12])) / TICKS
                if pid not in self.processes:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if not command or fields[1] == "2":  # a zombie already, or a kernel thread
                        continue
                    self.processes[pid] = Process(command, started_by(pid))
                self.processes[pid].cpu_s = cpu_s
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile

    def run(self, stop: threading.Event, interval: float) -> None:
        previous = cpu_ticks()
        while not stop.is_set():
            self.sample()
            now = cpu_ticks()
            self.busy_ticks += now[0] - previous[0]
            self.all_ticks += now[1] - previous[1]
            previous = now
            stop.wait(interval)
        self.sample()


def started_by(pid: int) -> str:
    """The test that started `pid`: the PYTEST_CURRENT_TEST it inherited, without its phase."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    prefix = b"PYTEST_CURRENT_TEST="
    found = next((item[len(prefix) :].decode(errors="replace") for item in environ if item.startswith(prefix)), "")
    return found.rsplit(" (", 1)[0]


def cpu_ticks() -> tuple[int, int]:
    """(busy, all) jiffies of every core since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class FixedCost:
    what: str
    cpu_s: float  # the process and every process it waited for (wait4)
    wall_s: float


def measure(what: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> FixedCost:
    run = run_logged(command, REPO, log, env)
    if run.status != 0:
        sys.exit(f"{what} failed:\n{log.read_text(errors='replace')[-5000:]}")
    return FixedCost(what, run.cpu_s, run.wall_s)


def training_config(folder: Path, processes: int) -> Path:
    """A one-step fine-tune of the tiny model (built from the sample corpus) on 8 RAFT records, validated on one
    batch."""
    from raft_assets.training.base_model import TINY, build_tiny_model
    from raft_assets.training.params import TrainParams
    from raft_assets_tests.test_training_data import DATA, records

    model = folder / TINY
    if not model.is_dir():
        texts = [path.read_text(encoding="utf-8") for path in sorted([*DATA.rglob("*.md"), *DATA.rglob("*.txt")])]
        build_tiny_model(model, texts)
        for name, count in (("train", 8), ("test", 2)):
            lines = (json.dumps(record) + "\n" for record in records(count, seed=len(name)))
            (folder / f"raft_{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    output = folder / f"run-{processes}"
    params = TrainParams(
        base_model=str(model),
        train_file=str(folder / "raft_train.jsonl"),
        test_file=str(folder / "raft_test.jsonl"),
        output_dir=str(output),
        context_length=1024,
        max_steps=1,
        save_every_steps=1,
        eval_max_batches=1,
    )
    return params.save(output / "train_params.yaml")


def fixed_costs(folder: Path) -> list[FixedCost]:
    """One process of each kind the suite starts most, alone, with one compute thread (as in the suite)."""
    bin_dir = Path(sys.executable).parent
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAFT_")} | {"OMP_NUM_THREADS": "1"}
    log = folder / "fixed.log"
    costs = [measure("import of the training script", [sys.executable, "-c", "import raft_assets.training.train"], log)]
    for processes in (1, 2):
        command = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", str(processes)]
        command += ["-m", "raft_assets.training.train", "--config", str(training_config(folder, processes))]
        what = f"one-step fine-tune, torchrun with {processes} process{'es' if processes > 1 else ''}"
        costs.append(measure(what, command, log, env))
    cli_env = env | {
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "RAFT_DATA_DIR": str(folder / "generated"),
        "RAFT_CHECKPOINT_DIR": str(folder / "checkpoints"),
        "RAFT_SOURCES": str(REPO / "data" / "sources.yaml"),
        "RAFT_EXPERIMENTS": str(folder / "experiments.yaml"),
    }
    command = [str(bin_dir / "raft-assets"), "run", "--select", "documents", "--source", "llama_docs"]
    costs.append(measure("`raft-assets run` of documents[llama_docs]", command, log, cli_env))
    return costs


@dataclass(frozen=True)
class SuiteRun:
    arguments: list[str]
    wall_s: float
    waited_cpu_s: float  # wait4 of pytest: every process that was waited for
    status: int
    summary: str  # pytest's last line
    sampler: Sampler


def run_suite(arguments: list[str], log: Path, interval: float) -> SuiteRun:
    """The suite in a child process, /proc sampled meanwhile."""
    sampler = Sampler(before={int(name) for name in os.listdir("/proc") if name.isdigit()})
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop, interval), daemon=True)
    thread.start()
    run = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments], REPO, log)
    stop.set()
    thread.join()
    lines = log.read_text(errors="replace").strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    return SuiteRun(arguments, run.wall_s, run.cpu_s, run.status, summary, sampler)


def by(processes: list[Process], key: str) -> list[tuple[str, list[float]]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for process in processes:
        groups[getattr(process, key)].append(process.cpu_s)
    return sorted(groups.items(), key=lambda item: -sum(item[1]))


def floor_cpu_s(costs: list[FixedCost], processes: list[Process]) -> tuple[float, str]:
    """What the training launches and `raft-assets run`s that the suite started cost at their cost alone: a launch
    (launcher and first worker) as the one-process fine-tune, each further worker as the two-process one less the
    one-process one; and how that adds up."""
    _, one, two, run = costs
    count = Counter(process.kind for process in processes)
    launches, workers, runs = count["torchrun launcher"], count["training worker"], count["raft-assets run"]
    more = two.cpu_s - one.cpu_s
    total = launches * one.cpu_s + (workers - launches) * more + runs * run.cpu_s
    terms = (
        f"{launches} training launches × {one.cpu_s:.1f} (launcher and first worker) + {workers - launches} more "
        f"workers × {more:.1f} + {runs} `raft-assets run`s × {run.cpu_s:.1f}"
    )
    return total, terms


def section(run: SuiteRun, costs: list[FixedCost], machine: dict[str, str]) -> str:
    processes = list(run.sampler.processes.values())
    sampled = sum(process.cpu_s for process in processes)
    cores = os.cpu_count() or 1
    busy = run.sampler.busy_ticks / max(run.sampler.all_ticks, 1)
    lines = [
        "## The test suite: wall time and where its CPU goes",
        "",
        f"Run on {machine['date']}: {machine['cpus']}, {machine['memory']}, load before {machine['load']}; "
        f"{machine['python']}; {machine['packages']}.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_suite.py -- {' '.join(run.arguments)}` (pytest's own summary: "
        f"`{run.summary}`, exit status {run.status}).",
        "",
        "One process of each kind alone, one compute thread, before the suite (CPU of the process and its children):",
        "",
        "| process | CPU-s | wall s |",
        "|---|---|---|",
        *(f"| {cost.what} | {cost.cpu_s:.1f} | {cost.wall_s:.1f} |" for cost in costs),
        "",
        f"The suite: {run.wall_s:.0f} s. CPU: {run.waited_cpu_s:.0f} CPU-s from wait4 (the processes waited for), "
        f"{sampled:.0f} CPU-s sampled from /proc ({len(processes)} processes); the {cores} cores were "
        f"{busy:.0%} busy" + (f": CPU-bound, wall ≈ CPU / {cores}." if busy >= CPU_BOUND else "."),
        "",
        "| kind of process | processes | CPU-s | share | median CPU-s per process |",
        "|---|---|---|---|---|",
    ]
    for kind, cpu in by(processes, "kind"):
        share = sum(cpu) / max(sampled, 1e-9)
        lines.append(f"| {kind} | {len(cpu)} | {sum(cpu):.1f} | {share:.1%} | {statistics.median(cpu):.1f} |")
    lines += ["", "The processes the tests started, by the test module that started them (the top ten):", ""]
    lines += ["| test module | processes | CPU-s |", "|---|---|---|"]
    started = [process for process in processes if process.test]
    lines += [f"| {module} | {len(cpu)} | {sum(cpu):.1f} |" for module, cpu in by(started, "module")[:10]]
    floor, terms = floor_cpu_s(costs, processes)
    lines += [
        "",
        f"At their cost alone, the suite's {terms} = "
        f"{floor:.0f} CPU-s: {floor / cores:.0f} s on {cores} cores before any test's own work, collection, "
        "`dagster dev`, the browser or the other commands.",
    ]
    if run.arguments == WHOLE_SUITE:
        verdict = "PASS" if run.wall_s < TARGET_S and run.status == 0 else "FAIL"
        lines += [
            "",
            f"Target: the suite under {TARGET_S:.0f} s on this machine (issue 13): {verdict} ({run.wall_s:.0f} s).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the section into RESULTS.md")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples of /proc")
    parser.add_argument("--processes", type=Path, help="write every sampled process here, a JSON object a line")
    parser.add_argument("pytest_args", nargs="*", help="pytest's arguments after --; default: -n auto (make test)")
    options = parser.parse_args()
    arguments = options.pytest_args or WHOLE_SUITE
    machine = machine_description(["pytest", "pytest-xdist", "torch", "transformers", "dagster"])
    with tempfile.TemporaryDirectory() as folder:
        costs = fixed_costs(Path(folder))
        log = Path(folder) / "pytest.log"
        run = run_suite(arguments, log, options.interval)
        if run.status != 0:
            print(log.read_text(errors="replace")[-5000:])
    if options.processes:
        rows = (json.dumps(vars(process) | {"kind": process.kind}) + "\n" for process in run.sampler.processes.values())
        options.processes.write_text("".join(rows), encoding="utf-8")
    whole = arguments == WHOLE_SUITE and run.status == 0
    not_recordable = None if whole else "not the whole suite as make test runs it, or it failed"
    publish(section(run, costs, machine), options.record, not_recordable)


if __name__ == "__main__":
    main()
