from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from raft_assets.defs.partitions import recipes
from raft_assets.defs.resources import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
RAFT_ASSETS = str(Path(sys.executable).parent / "raft-assets")

# The slow tiers (markers registered in pyproject.toml). A test of any tier is `slow` as well, which is what
# `make test-fast` leaves out; a test over about 10 s on 2 cores that is in no tier is marked `slow` alone.
TIERS = ("torchrun", "dagster_dev", "browser", "end_to_end", "resume")
# The tiers of the modules that the training and evaluation code's author keeps as they are.
MODULE_TIERS = {"test_train_script.py": ["torchrun"], "test_training_assets.py": ["torchrun"]}

# Units of work for xdist (-n, `--dist loadgroup`): the tests of a module run on one worker, so that its
# module-scoped fixtures are set up once. These modules and tests are a unit with others (a session-scoped fixture
# they share) or alone (a long test, so that the rest of its module need not wait for it).
UNITS = {
    "test_dataset_assets.py": "sample_pipeline",  # the fixture sample_pipeline
    "test_eval_report.py": "sample_pipeline",
    "test_training_assets.py": "sample_pipeline",
    "test_gpu_pool.py": "sample_pipeline",
    "test_recipes.py": "sample_pipeline",
    # the fixture demo_run, which test_ui.py's `dagster dev` serves
    "test_cli.py::test_the_demo_run_materializes_the_whole_graph_into_the_dagster_home": "demo",
    "test_ui.py": "demo",
    # the fixture whole_graph: the uninterrupted run, and the run killed and resumed, compared with it
    "test_end_to_end.py": "end_to_end",
    "test_resume_everywhere.py": "end_to_end",
}
# Modules that go first in their unit: the killed and resumed run starts at once, while whole_graph's uninterrupted run
# and new recipes, started in the background by the first test that asks, go on meanwhile.
FIRST_IN_UNIT = ("test_resume_everywhere.py",)
# The longest units, longest first, with about how long each takes on 2 busy cores. xdist hands them out before
# the others, so that no two of them end up one after the other at the end while the other workers are idle.
LONGEST_FIRST = (
    "end_to_end",  # 310 s: a run killed three times and resumed, meanwhile the whole graph and two recipes on it
    "sample_pipeline",  # 200 s: the sample pipeline; training, export, eval report and the GPU pool on it
    "test_adaptive_concurrency.py",  # 100 s: 1,024 slots kept busy for about a minute
    "test_train_script.py",  # 60 s
    "demo",  # 100 s: the demo run, then `dagster dev` on it and the browser
    "test_resume_and_secrets.py",  # 50 s
    "test_cli.py",  # 45 s
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores. Part of the suite waits (on its servers, subprocesses, `dagster
    dev`), and the extra worker keeps the cores busy meanwhile: on 2 cores, measured back to back, 495 s with 3
    workers (97% of the CPU busy) against 539 s with 2 (91%)."""
    return len(os.sched_getaffinity(0)) + 1


# One embedding cache for the whole suite, its workers and the processes they start: the sample corpus, the eval
# questions and the curated questions are embedded once, by whichever test asks first, instead of in every run of
# the graph (about 100 CPU-s on 2 cores). Every project of the suite uses it (`cli_env`, `sample_pipeline`,
# `project`), except test_retrieval's, which count what is embedded and keep their own in their data folder.
EMBEDDING_CACHE_VARIABLE = "RAFT_EMBEDDING_CACHE"
EMBEDDING_CACHE_FOLDER = pytest.StashKey[str]()


# One compute thread in each of the suite's processes (workers, the runs and servers they start), as the trainer
# already gives each training process: `-n auto` keeps every core busy with more processes than cores, and torch's
# OpenMP threads of one process would spin at their barriers waiting for cores the others hold.
ONE_THREAD = "1"


def pytest_configure(config: pytest.Config) -> None:
    """In the first process (the xdist workers inherit its environment): one thread per process and the suite's
    embedding cache. In every process: Python's SIGINT handler, also when the suite was started in the background of
    a script (SIGINT ignored). Dagster's in-process tools give SIGTERM the handler of SIGINT and leave it there, so
    the processes that later tests start would inherit SIGTERM ignored: a stand-in vLLM server stopped with SIGTERM
    waits out its 30 s grace period, `serve` ends with 0 instead of the signal. (The `raft-assets` command is not
    affected: its runs handle both signals while they execute.)"""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_NUM_THREADS", ONE_THREAD)
        folder = tempfile.mkdtemp(prefix="raft-embedding-cache-")
        config.stash[EMBEDDING_CACHE_FOLDER] = folder
        os.environ[EMBEDDING_CACHE_VARIABLE] = str(Path(folder) / "embeddings.sqlite")


def pytest_unconfigure(config: pytest.Config) -> None:
    if EMBEDDING_CACHE_FOLDER in config.stash:
        shutil.rmtree(config.stash[EMBEDDING_CACHE_FOLDER], ignore_errors=True)


def suite_embedding_cache() -> str:
    return os.environ[EMBEDDING_CACHE_VARIABLE]


def work_unit(nodeid: str) -> str:
    path, _, test = nodeid.partition("::")
    module = path.rsplit("/", 1)[-1]
    return UNITS.get(f"{module}::{test.split('[')[0]}") or UNITS.get(module) or module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test of a tier is also `slow`; the longest units of work first (the rest in their order), and in a unit
    the modules of FIRST_IN_UNIT first."""
    for item in items:
        for tier in MODULE_TIERS.get(item.path.name, []):
            item.add_marker(tier)
        if any(item.get_closest_marker(tier) for tier in TIERS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    rank = {unit: position for position, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(work_unit(item.nodeid), len(rank)), item.path.name not in FIRST_IN_UNIT))


@pytest.hookimpl(tryfirst=True)  # before xdist's own
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` by UNITS: xdist reads xdist_group marks from node ids that pytest 9 no longer lets it
    change (pytest-xdist#1386), so its own loadgroup runs every test as a unit of its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return UnitScheduling(config, log)


def cli_env(tmp_path: Path, sources: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `raft-assets` run with its own DAGSTER_HOME and data folder under tmp_path, and its own
    experiments file there (only the `default` recipe until a test writes it), and the suite's embedding cache."""
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("RAFT_")},
        EMBEDDING_CACHE_VARIABLE: suite_embedding_cache(),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "RAFT_DATA_DIR": str(tmp_path / "generated"),
        "RAFT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "RAFT_SOURCES": str(sources or REPO / "data" / "sources.yaml"),
        "RAFT_EXPERIMENTS": str(tmp_path / "experiments.yaml"),
        "COLUMNS": "200",
        **extra,
    }


def run_cli(tmp_path: Path, *args: str, sources: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    """`raft-assets run ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [RAFT_ASSETS, "run", *args],
        cwd=REPO,
        env=cli_env(tmp_path, sources, **extra_env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def write_sources(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources}), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> ProjectPaths:
    """Paths under tmp_path; the sources file is empty until a test writes it with `write_sources`, and the
    experiments file absent (only the `default` recipe) until a test writes it; the suite's embedding cache."""
    sources_file = write_sources(tmp_path / "sources.yaml", [])
    return ProjectPaths(
        sources_file=str(sources_file),
        experiments_file=str(tmp_path / "experiments.yaml"),
        data_dir=str(tmp_path / "generated"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        embedding_cache=suite_embedding_cache(),
    )


# The tests' Dagster instances keep runs and events in memory, as `dg.materialize` does without one. The sqlite
# storage of `dg.instance_for_test` cost 0.72 CPU-s per run of documents and chunks against 0.31, and test_generation,
# test_curation, test_retrieval and test_ingestion_assets 109-114 CPU-s against 67-79 (measured here, alternately,
# twice). The tests that read an instance's files (test_security) or need a reference to it (a schedule's context)
# take `dg.instance_for_test`; `raft-assets run` and `dagster dev` use sqlite in their DAGSTER_HOME as users do.
@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


SOURCES = ["llama_docs", "pytorch_docs"]
# fsdp_checkpoint's validation at the end of a test's training: one micro-batch per process. The whole test file
# through the tiny model (2k-4k tokens, the packing mask through sdpa on the CPU) takes longer than the steps do.
QUICK_VALIDATION = {"eval_max_batches": 1}


def run_assets(
    project: ProjectPaths,
    instance: dg.DagsterInstance,
    selection: list,
    partition: str | None = None,
    config: dict | None = None,
    **resources: object,
) -> dg.ExecuteInProcessResult:
    """Materialize `selection` out of the whole graph (with the extractive generator unless told otherwise); the
    per-recipe assets for the `default` recipe unless `partition` names another."""
    from raft_assets.contracts.recipes import DEFAULT_RECIPE
    from raft_assets.definitions import defs

    if partition is None and any(per_recipe(asset) for asset in selection):
        partition = DEFAULT_RECIPE
    if partition is not None and any(per_recipe(asset) for asset in selection):
        instance.add_dynamic_partitions(recipes.name, [partition])
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources={**graph_resources(project), **resources},
        run_config={"ops": config or {}},
    )
    assert result.success
    return result


def graph_resources(project: ProjectPaths) -> dict[str, object]:
    """Every resource of the graph: the project's paths, no endpoints (the stand-ins), the CPU trainer."""
    from raft_assets.defs.evaluation.vllm import VLLMResource
    from raft_assets.defs.resources import LLMResource
    from raft_assets.defs.training.trainer import TrainerResource

    return {
        "paths": project,
        "llm": LLMResource(),
        "judge": LLMResource(),
        "curator": LLMResource(),
        "trainer": TrainerResource(),
        "vllm": VLLMResource(),
    }


def per_recipe(asset: object) -> bool:
    return isinstance(asset, dg.AssetsDefinition) and asset.partitions_def == recipes


@pytest.fixture(scope="session")
def sample_pipeline(tmp_path_factory):
    """The shipped sample corpus through `eval_set`, with the extractive generator and the tiny model."""
    from raft_assets.defs.curation.assets import curated_answers
    from raft_assets.defs.dataset.assets import eval_set, raft_dataset
    from raft_assets.defs.generation.assets import cot_answers, questions
    from raft_assets.defs.ingestion.assets import chunks, documents
    from raft_assets.defs.partitions import doc_sources
    from raft_assets.defs.retrieval.assets import retrieval_index
    from raft_assets.defs.training.base_model import base_model

    root = tmp_path_factory.mktemp("pipeline")
    project = ProjectPaths(
        sources_file=str(REPO / "data" / "sources.yaml"),
        data_dir=str(root / "generated"),
        checkpoint_dir=str(root / "checkpoints"),
        embedding_cache=suite_embedding_cache(),
    )
    curation = root / "curation.yaml"
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(doc_sources.name, SOURCES)
        for source in SOURCES:
            run_assets(project, instance, [documents, chunks, questions, cot_answers, curated_answers], source)
        eval_config = {"eval_set": {"config": {"curation_file": str(curation), "size": 10}}}
        run_assets(project, instance, [retrieval_index, base_model, raft_dataset, eval_set], config=eval_config)
        yield project, instance, curation


DEMO_CONFIG = REPO / "data" / "demo_run_config.yaml"
# The demo's numbers that only make its run longer (12 steps, 30 questions, answers of up to 48 tokens: nearly three
# minutes on 2 cores), made smaller for the tests; every other setting of the file is used as it is.
SMALLER_DEMO = {
    "fsdp_checkpoint": {"max_steps": 2, "save_every_steps": 1, **QUICK_VALIDATION},
    "eval_set": {"size": 10},
    "eval_report": {"max_new_tokens": 8},
}
# One training process where two would only cost time: each imports torch and transformers (about 6 CPU-s). The
# end-to-end and resume runs, test_training_assets and test_train_script train with two.
ONE_TRAINING_PROCESS = {"trainer": {"config": {"nproc_per_node": 1}}}
# eval_report's local models answer one prompt at a time in the whole-graph runs. With one thread per process (above),
# a left-padded batch of 8 prompts of 1,000-2,000 tokens costs about twice the CPU of the same prompts one by one at 8
# new tokens: its padding mask takes the masked attention kernel instead of the causal one, and is converted in every
# layer. The demo's run took 96 CPU-s instead of 110 (2026-12-03). Batches are tested in test_answering.py.
ONE_PROMPT_PER_BATCH = {"batch_size": 1}


@dataclass(frozen=True)
class DemoRun:
    """`make demo`'s run: its workspace (DAGSTER_HOME, data and checkpoints under `root`), environment and output."""

    root: Path
    env: dict[str, str]
    result: subprocess.CompletedProcess


def smaller_demo_config(folder: Path) -> Path:
    """The demo's run config, which must validate against the asset job as it is, with the SMALLER_DEMO numbers, one
    training process and one prompt per batch."""
    from raft_assets.definitions import defs

    config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), config)
    for asset, numbers in SMALLER_DEMO.items():
        settings = config["ops"][asset]["config"]
        assert numbers.keys() <= settings.keys(), f"the demo config no longer sets {asset}'s {list(numbers)}"
        settings.update(numbers)
    config["ops"]["eval_report"]["config"].update(ONE_PROMPT_PER_BATCH)
    config["resources"] = {**config.get("resources", {}), **ONE_TRAINING_PROCESS}
    path = folder / "demo_run_config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """What `make demo` does: every asset, the sample sources, the shipped recipes, offline, on the CPU, with the
    demo's run config (smaller numbers), under umask 022, into a DAGSTER_HOME set up as `make dev` sets it up. The
    demo test reads its files; test_ui.py's `dagster dev` serves it (one unit of work for xdist)."""
    from raft_assets_tests.dagster_dev import dev_env

    root = tmp_path_factory.mktemp("demo")
    env = dev_env(root, RAFT_EXPERIMENTS=str(REPO / "data" / "experiments.yaml"))
    config = smaller_demo_config(root)
    umask = os.umask(0o022)
    try:
        result = subprocess.run(
            [RAFT_ASSETS, "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stdout + result.stderr
    return DemoRun(root, env, result)


@pytest.fixture(scope="session")
def site():
    """The sitemap source's web site on loopback (`whole_graph.SiteServer`), for the whole-graph runs."""
    from raft_assets_tests.whole_graph import SiteServer

    with SiteServer() as server:
        yield server


@pytest.fixture(scope="session")
def whole_graph(site, tmp_path_factory, request):
    """The suite's one uninterrupted whole-graph run with endpoints (`whole_graph.WholeGraph`), started in the
    background, then the new recipes on it when a collected test asks for them: what test_end_to_end checks and what
    test_resume_everywhere compares its killed and resumed run with (one unit of work for xdist)."""
    from raft_assets_tests.whole_graph import WholeGraph

    new_recipes = any("more_recipes" in item.fixturenames for item in request.session.items)
    with WholeGraph(tmp_path_factory.mktemp("end_to_end"), site, new_recipes=new_recipes) as runs:
        yield runs


@pytest.fixture(scope="session")
def end_to_end_run(whole_graph):
    return whole_graph.reference()
