"""`raft-assets run` as a user runs it: a subprocess with its own DAGSTER_HOME and data folder."""

import json

import dagster as dg
import polars as pl
import pytest

from raft_assets.cli import main
from raft_assets.contracts.recipes import load_recipes
from raft_assets.defs.instance import PID_TAG
from raft_assets_tests.conftest import REPO, SOURCES, DemoRun, cli_env, run_cli, write_sources


@pytest.mark.end_to_end
@pytest.mark.torchrun
def test_the_demo_run_materializes_the_whole_graph_into_the_dagster_home(demo_run: DemoRun):
    """What `make demo` does (conftest's `demo_run`): every asset, on the sample corpus, offline, on the CPU, with the
    demo's run config (smaller numbers) and the shipped recipes, compared in the experiment report; under umask 022
    every file it writes is readable by other users (a vLLM server or a pod of another user on a shared volume)."""
    tmp_path, result = demo_run.root, demo_run.result
    recipes = [recipe.name for recipe in load_recipes(REPO / "data" / "experiments.yaml")]
    written = [path for folder in ("generated", "checkpoints") for path in (tmp_path / folder).rglob("*")]
    assert len(written) > 50 and [p for p in written if not p.is_symlink() and not p.stat().st_mode & 0o004] == []
    for source in ("llama_docs", "pytorch_docs"):
        for asset in ("documents", "chunks", "questions", "cot_answers", "curated_answers"):
            assert (tmp_path / "generated" / asset / f"{source}.parquet").is_file()
            assert f"{asset}[{source}]" in result.stdout
    assert "failed" not in result.stdout and "skipped" not in result.stdout
    assert (tmp_path / "generated" / "raft" / "raft_train.jsonl").is_file()
    assert any((tmp_path / "checkpoints" / "hf").glob("*/model.safetensors"))
    report = (tmp_path / "generated" / "reports" / "eval_report.md").read_text()
    assert "| finetuned RAG k=5 |" in report and "| base no context |" in report
    for recipe in recipes[1:]:
        assert f"eval_report[{recipe}]" in result.stdout
        assert (tmp_path / "generated" / "recipes" / recipe / "reports" / "eval_report.md").is_file()
    experiment = json.loads((tmp_path / "generated" / "reports" / "experiment_report.json").read_text())
    assert sorted({row["recipe"] for row in experiment["rows"]}) == sorted(recipes) and not experiment["excluded"]
    compared = [row for row in experiment["rows"] if row["recipe"] != "default" and row["variant"].startswith("fine")]
    assert compared and all(row["vs_default"]["paired_questions"] == row["questions"] for row in compared)
    assert all(row["vs_default"]["words"] for row in compared)  # "within noise: ..." or a difference, in words

    with dg.DagsterInstance.from_config(demo_run.env["DAGSTER_HOME"]) as instance:
        assert sorted(instance.get_dynamic_partitions("doc_sources")) == SOURCES
        assert instance.get_dynamic_partitions("recipes") == recipes
        # one per source, one per recipe (the first with the index and the eval set), the experiment report
        cli_runs = [run for run in instance.get_runs() if PID_TAG in run.tags]
        assert len(cli_runs) == len(SOURCES) + len(recipes) + 1
        record = instance.get_latest_materialization_event(dg.AssetKey("chunks"))
        assert record is not None and record.asset_materialization.partition in ("llama_docs", "pytorch_docs")


@pytest.mark.slow  # `raft-assets run` in a subprocess
def test_a_failing_check_exits_non_zero_with_the_reason(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.md").write_bytes(b"")
    sources = write_sources(tmp_path / "sources.yaml", [{"name": "bad", "kind": "local", "path": str(folder)}])

    result = run_cli(tmp_path, sources=sources)
    assert result.returncode == 1
    reason = (
        "check documents.has_documents [bad] failed: No document of source 'bad' could be loaded: empty.md: empty file."
    )
    assert reason in result.stdout
    assert "chunks[bad]" in result.stdout and "skipped" in result.stdout


@pytest.mark.slow  # `raft-assets run` in a subprocess
def test_a_step_that_raises_prints_the_exception_and_its_cause_without_verbose(tmp_path):
    """raft_dataset before base_model: the cause is the asset's own exception, not Dagster's wrapper around it."""
    result = run_cli(
        tmp_path,
        "--select",
        "documents,chunks,questions,cot_answers,curated_answers,raft_dataset",
        "--source",
        "llama_docs",
    )
    assert result.returncode == 1
    output = " ".join(result.stdout.split())  # rich wraps long lines
    assert "✗ step raft_dataset [default] failed: BaseModelMissing: No base model pointer at " in output
    assert "materialize base_model first." in output
    assert "DagsterExecutionStepExecutionError" not in output and "Error occurred while executing" not in output


TOPICS = ["sharding", "checkpoints", "launchers", "precision", "attention", "batching", "caching", "quantization"]


def manual_page(topic: str) -> str:
    """A page of a Sphinx-built manual: the prose in the body, and the chrome around it."""
    prose = "\n".join(
        f"<p>The {topic} guide explains step {i} of the {topic} setup in plain words for new users. "
        f"Each {topic} option in step {i} is described with its default value and its effect on memory.</p>"
        for i in range(6)
    )
    return (
        f"<html><head><title>{topic.title()} guide</title></head><body>"
        f'<div class="body" role="main"><h1>{topic.title()}</h1>{prose}</div>'
        '<div class="sphinxsidebar" role="navigation"><h3>Navigation</h3><ul><li>Home</li></ul></div>'
        "</body></html>"
    )


def source_code_page(name: str) -> str:
    """A page of the manual's source-code view (Sphinx's `_modules/`): code, no prose sentence."""
    code = "\n".join(
        f"def {name}_{i}(tensor, rank={i}):\n    return tensor.chunk(world_size)[rank] * {i}" for i in range(20)
    )
    return f"<html><head><title>{name}.py</title></head><body><pre>{code}</pre></body></html>"


@pytest.mark.slow  # `raft-assets run` in a subprocess
def test_offline_on_html_manual_pages_with_source_code_pages_succeeds_and_names_the_stand_in(tmp_path):
    folder = tmp_path / "manual"
    (folder / "_modules").mkdir(parents=True)
    for topic in TOPICS:
        (folder / f"{topic}.html").write_text(manual_page(topic), encoding="utf-8")
    for name in ("shard", "launch", "cache"):
        (folder / "_modules" / f"{name}.html").write_text(source_code_page(name), encoding="utf-8")
    sources = write_sources(tmp_path / "sources.yaml", [{"name": "manual", "kind": "local", "path": str(folder)}])

    selection = (
        "documents,chunks,questions,cot_answers,curated_answers,retrieval_index,base_model,raft_dataset,eval_set"
    )
    result = run_cli(tmp_path, "--select", selection, sources=sources)
    output = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the extractive stand-in writes the questions and answers" in output
    [row] = [line for line in result.stdout.splitlines() if "questions[manual]" in line]
    assert "materialized" in row and "by a stand-in" in row
    asked = pl.read_parquet(tmp_path / "generated" / "questions" / "manual.parquet")
    skipped = asked.filter(pl.col("status") == "skipped")
    assert skipped.height >= 3 and skipped["error"].str.contains("no prose sentence").all()
    assert set(asked["status"]) == {"ok", "skipped"}


@pytest.mark.slow  # `raft-assets run` in a subprocess
def test_select_and_source_narrow_the_run(tmp_path):
    result = run_cli(tmp_path, "--select", "documents", "--source", "llama_docs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "generated" / "documents" / "llama_docs.parquet").is_file()
    assert not (tmp_path / "generated" / "documents" / "pytorch_docs.parquet").exists()
    assert not (tmp_path / "generated" / "chunks").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--select", "nope"],
            "Known assets: base_model, chunks, cot_answers, curated_answers, documents, eval_report, eval_set, "
            "experiment_report, fsdp_checkpoint, hf_checkpoint",
        ),
        (["--source", "nope"], "unknown source nope; sources in"),
        (["--recipe", "nope"], "unknown recipe nope; recipes in"),
        (["--select", "documents++("], "cannot parse --select"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, monkeypatch, capsys, args, message):
    """In this process (the command's own `main`): a usage error is found before anything runs."""
    env = cli_env(tmp_path)
    for key in ("DAGSTER_HOME", "RAFT_DATA_DIR", "RAFT_CHECKPOINT_DIR", "RAFT_SOURCES"):
        monkeypatch.setenv(key, env[key])
    assert main(["run", *args]) == 2
    assert message in " ".join(capsys.readouterr().out.split())
