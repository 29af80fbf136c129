"""`raft-assets run` as a user runs it: a subprocess with its own DAGSTER_HOME and data folder."""

import os

import dagster as dg
import pytest

from raft_assets.cli import main
from raft_assets_tests.conftest import REPO, cli_env, run_cli, write_sources


def test_the_demo_run_materializes_the_whole_graph_into_the_dagster_home(tmp_path):
    """What `make demo` does: every asset, on the sample corpus, offline, on the CPU."""
    result = run_cli(tmp_path, "--config", str(REPO / "data" / "demo_run_config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    for source in ("llama_docs", "pytorch_docs"):
        for asset in ("documents", "chunks", "questions", "cot_answers"):
            assert (tmp_path / "generated" / asset / f"{source}.parquet").is_file()
            assert f"{asset}[{source}]" in result.stdout
    assert "failed" not in result.stdout and "skipped" not in result.stdout
    assert (tmp_path / "generated" / "raft" / "raft_train.jsonl").is_file()
    assert any((tmp_path / "checkpoints" / "hf").glob("*/model.safetensors"))
    report = (tmp_path / "generated" / "reports" / "eval_report.md").read_text()
    assert "| finetuned RAG k=5 |" in report and "| base no context |" in report

    os.environ["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    try:
        with dg.DagsterInstance.get() as instance:
            assert sorted(instance.get_dynamic_partitions("doc_sources")) == ["llama_docs", "pytorch_docs"]
            assert len(instance.get_runs()) == 3  # one per source, then one for the assets over all sources
            record = instance.get_latest_materialization_event(dg.AssetKey("chunks"))
            assert record is not None and record.asset_materialization.partition in ("llama_docs", "pytorch_docs")
    finally:
        del os.environ["DAGSTER_HOME"]


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
            "Known assets: base_model, chunks, cot_answers, documents, eval_report, eval_set, fsdp_checkpoint, hf_checkpoint",
        ),
        (["--source", "nope"], "unknown source nope; sources in"),
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
