"""`eval_report` on the sample pipeline: systems answered, scored, judged by a scripted judge, reported."""

import json
from pathlib import Path

import pytest

from raft_assets.defs.evaluation.assets import eval_report
from raft_assets.defs.evaluation.vllm import VLLMResource
from raft_assets.defs.resources import LLMResource
from raft_assets.evaluation.run import stand_in_note
from raft_assets.training.base_model import read_pointer
from raft_assets_tests.conftest import run_assets
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message


def verdict(question: str) -> str:
    """The scripted judge's reply, by the question's length: YES, NO, or a reply that is neither."""
    return ("I think it might be right, hard to say.", "YES", "NO")[len(question) % 3]


def scripted_judge(body: dict) -> str:
    question = last_user_message(body).removeprefix("Question: ").split("\nTeacher's answer:")[0]
    return verdict(question)


def test_the_report_compares_systems_and_counts_judge_failures(sample_pipeline):
    project, instance, _ = sample_pipeline
    config = {
        "eval_report": {"config": {"models": ["base"], "top_k": [3, 5], "max_new_tokens": 16, "judge_attempts": 2}}
    }
    with OpenAITestServer(scripted_judge, models=["judge-model"]) as judge_server:
        judge = LLMResource(base_url=judge_server.base_url, model="judge-model")
        result = run_assets(project, instance, [eval_report], config=config, judge=judge)
        judged_requests = judge_server.stats.completed

    folder = Path(project.data_dir) / "reports"
    report = json.loads((folder / "eval_report.json").read_text())
    assert list(report["systems"]) == ["base no context", "base RAG k=3", "base RAG k=5"]
    questions = len(json.loads((Path(project.data_dir) / "eval" / "eval_set.json").read_text()))
    for summary in report["systems"].values():
        assert summary["questions"] == questions
        assert summary["judged"] + summary["judge_failures"] == questions
        assert 0 <= summary["f1"] <= 1 and 0 <= summary["refusal_rate"] <= 1
    assert judged_requests > 0
    for system, rows in report["answers"].items():  # the garbage verdicts are failures, never a NO
        garbage = sum(verdict(row["question"]) not in ("YES", "NO") for row in rows)
        assert report["systems"][system]["judge_failures"] == garbage
    assert sum(summary["judge_failures"] for summary in report["systems"].values()) > 0
    assert sum(summary["judged"] for summary in report["systems"].values()) > 0
    markdown = (folder / "eval_report.md").read_text()
    assert "| base RAG k=5 |" in markdown and "Judge: `judge-model`" in markdown
    assert (folder / "scores.png").read_bytes()[:4] == b"\x89PNG" and (folder / "refusals.png").is_file()
    metadata = result.asset_materializations_for_node("eval_report")[0].metadata
    assert metadata["judge"].value == "judge-model"
    assert "base_RAG_k5/f1" in metadata


def test_without_a_judge_the_report_says_it_was_skipped(sample_pipeline):
    project, instance, _ = sample_pipeline
    config = {
        "eval_report": {"config": {"models": ["base"], "top_k": [3], "without_context": False, "max_new_tokens": 8}}
    }
    run_assets(project, instance, [eval_report], config=config)
    report = json.loads((Path(project.data_dir) / "reports" / "eval_report.json").read_text())
    assert "Judge skipped" in " ".join(report["notes"])
    assert all(summary["judged"] == 0 and summary["judge_failures"] == 0 for summary in report["systems"].values())


def test_local_models_can_be_served_through_the_vllm_resource_by_a_stand_in_server(sample_pipeline):
    """`serve_with_vllm` through the vllm resource, attached to an OpenAI-compatible test server standing in for vLLM."""
    project, instance, _ = sample_pipeline
    config = {"eval_report": {"config": {"models": ["base"], "top_k": [3], "serve_with_vllm": True}}}
    with OpenAITestServer(lambda body: "Served. <ANSWER>: 8K", models=["raft-base"]) as server:
        vllm = VLLMResource(attach_url=server.base_url, served_model_name="raft-base")
        run_assets(project, instance, [eval_report], config=config, vllm=vllm)
        served = server.stats.completed
        report = json.loads((Path(project.data_dir) / "reports" / "eval_report.json").read_text())
        assert list(report["systems"]) == ["base no context", "base RAG k=3"]
        assert all(row["answer"] == "Served. <ANSWER>: 8K" for rows in report["answers"].values() for row in rows)
        assert served == 2 * report["systems"]["base RAG k=3"]["questions"]

        run_assets(project, instance, [eval_report], config=config, vllm=vllm)
        assert server.stats.completed == served  # the same weights: every answer from the reply cache

        # New weights under the same served name (here: the same bytes, written again): asked again.
        weights = read_pointer(project.layout).path / "model.safetensors"
        weights.write_bytes(weights.read_bytes())
        run_assets(project, instance, [eval_report], config=config, vllm=vllm)
        assert server.stats.completed == 2 * served


def materialized_report(project, instance, config: dict) -> tuple[dict, str, dict]:
    """eval_report materialized once: its JSON, its markdown and its metadata."""
    result = run_assets(project, instance, [eval_report], config=config)
    folder = Path(project.data_dir) / "reports"
    metadata = result.asset_materializations_for_node("eval_report")[0].metadata
    return json.loads((folder / "eval_report.json").read_text()), (folder / "eval_report.md").read_text(), metadata


def test_a_report_made_again_says_its_answers_are_cached_with_the_time_they_took_when_computed(sample_pipeline):
    project, instance, _ = sample_pipeline
    # max_new_tokens that no other test uses: the first report computes every answer.
    config = {"eval_report": {"config": {"models": ["base"], "top_k": [3], "max_new_tokens": 5, "max_questions": 4}}}
    first, _, first_metadata = materialized_report(project, instance, config)
    second, markdown, metadata = materialized_report(project, instance, config)

    answers = sum(len(rows) for rows in second["answers"].values())
    for system, computed in first["systems"].items():
        again = second["systems"][system]
        assert computed["cached"] == 0 and computed["seconds_per_answer"] > 0
        assert again["cached"] == again["questions"]
        assert again["seconds_per_answer"] == computed["seconds_per_answer"]  # the computing run's, not 0
        assert metadata[f"{system.replace(' ', '_').replace('=', '')}/seconds_per_answer"].value == pytest.approx(
            computed["seconds_per_answer"]
        )
    assert all(row["cached"] and row["seconds"] > 0 for rows in second["answers"].values() for row in rows)
    note = f"{answers} of {answers} answers from the cache; seconds per answer are those of the run that computed them."
    assert note in second["notes"] and note in markdown
    assert not any("from the cache" in line for line in first["notes"])
    assert "| from the cache |" in markdown and f"| {second['systems']['base RAG k=3']['questions']} |" in markdown
    assert (first_metadata["cached_answers"].value, metadata["cached_answers"].value) == (0, answers)
    # the scores plot shows on the asset's page itself: a PNG in the markdown, not a path to open elsewhere
    assert metadata["scores_plot"].value.startswith("![scores by system](data:image/png;base64,iVBOR")


def test_the_report_says_first_that_the_stand_in_wrote_the_questions(sample_pipeline):
    project, instance, _ = sample_pipeline
    config = {"eval_report": {"config": {"models": ["base"], "top_k": [3], "max_new_tokens": 4, "max_questions": 3}}}
    report, markdown, metadata = materialized_report(project, instance, config)

    note = (
        "**Stand-in data:** All 3 eval questions were written by the `extractive` stand-in (no generator endpoint), "
        "not by a model: these numbers test the machinery, not a model."
    )
    assert report["notes"][0] == note
    assert markdown.splitlines()[:3] == ["# Evaluation report", "", note]
    assert metadata["generator"].value == "extractive" and metadata["stand_in"].value == note
    assert note in metadata["comparison"].value


def test_questions_written_by_a_model_need_no_stand_in_note_and_a_mix_is_counted():
    assert stand_in_note(["meta-llama/Meta-Llama-3-70B-Instruct"] * 3) is None
    assert stand_in_note(["meta-llama/Meta-Llama-3-70B-Instruct", "extractive", None]).startswith(
        "**Stand-in data:** 1 of the 3 eval questions were written by the `extractive` stand-in"
    )
