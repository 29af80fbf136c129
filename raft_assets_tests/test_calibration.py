"""The judge against planted human verdicts and against itself, the verdicts file, and `raft-assets review` fed
through its input stream."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from raft_assets.cli.review import add_review_arguments, candidates, review_command
from raft_assets.evaluation.answers import pair_key
from raft_assets.evaluation.calibration import (
    CORRECT,
    INCORRECT,
    HumanVerdict,
    VerdictsError,
    append_verdict,
    calibrate,
    judged_answers,
    load_verdicts,
    self_consistency,
    verdicts_file,
)

QUESTIONS = [f"Which port does service {i} use?" for i in range(10)]


def report(judge: list[bool | None], judged: bool = True) -> dict:
    """An eval_report.json with one variant: answer i is "<ANSWER>: port <i>"; `judge` the judge's verdicts."""
    rows = [
        {
            "question": question,
            "reference": f"<ANSWER>: port {i}",
            "answer": f"Reasoning...\n<ANSWER>: port {i}",
            "correct": bool(verdict),
            "judgement": verdict,
        }
        for i, (question, verdict) in enumerate(zip(QUESTIONS, judge, strict=True))
    ]
    return {
        "systems": {"finetuned RAG k=3": {"questions": len(rows), "judged": len(rows) if judged else 0}},
        "answers": {"finetuned RAG k=3": rows},
    }


def human(i: int, correct: bool, reviewer: str = "ana") -> HumanVerdict:
    verdict = CORRECT if correct else INCORRECT
    return HumanVerdict(QUESTIONS[i], f"port {i}", f"port {i}", verdict, reviewer, "2025-01-01T00:00:00+00:00", "x")


def test_the_verdicts_file_is_beside_the_curation_file():
    assert verdicts_file(Path("data/eval_curation.yaml")) == Path("data/eval_curation.verdicts.jsonl")


def test_verdicts_are_appended_and_the_latest_on_a_pair_wins(tmp_path):
    path = tmp_path / "sub" / "eval_curation.verdicts.jsonl"
    assert load_verdicts(path) == {}
    append_verdict(path, human(0, True))
    append_verdict(path, human(1, False))
    append_verdict(path, human(0, False, reviewer="bo"))  # a second look at the same answer
    assert len(path.read_text().splitlines()) == 3
    loaded = load_verdicts(path)
    assert len(loaded) == 2
    assert loaded[pair_key(QUESTIONS[0], "<ANSWER>: port 0")] == human(0, False, reviewer="bo")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not a verdict"),
        ('{"question": "q"}', "not a verdict"),
        (None, "verdict must be 'correct' or 'incorrect', got 'maybe'"),
    ],
)
def test_a_bad_line_is_named_with_its_number(tmp_path, line, message):
    path = tmp_path / "verdicts.jsonl"
    append_verdict(path, human(0, True))
    if line is None:
        line = json.dumps({**json.loads(path.read_text()), "verdict": "maybe"})
    path.write_text(path.read_text() + "\n" + line + "\n")
    with pytest.raises(VerdictsError, match=rf"verdicts.jsonl:3: {message}"):
        load_verdicts(path)


def test_agreement_with_planted_human_verdicts_by_hand(tmp_path):
    # Judge:  Y Y Y Y Y Y N N N N  (and a failure on question 9, left out)
    # People: Y Y Y Y Y N N N Y -  on questions 0-8: agree on 7 of 9.
    # Chance: judge yes 6/9, people yes 6/9 -> 6/9*6/9 + 3/9*3/9 = 5/9; kappa = (7/9 - 5/9) / (4/9) = 0.5.
    judge = [True] * 6 + [False] * 3 + [None]
    people = [True] * 5 + [False] * 3 + [True]
    path = tmp_path / "verdicts.jsonl"
    for i, correct in enumerate(people):
        append_verdict(path, human(i, correct))
    calibration = calibrate(load_verdicts(path), judged_answers([report(judge)]))
    agreement = calibration.with_humans
    assert (agreement.n, agreement.agreed, agreement.kappa) == (9, 7, pytest.approx(0.5))
    assert agreement.counts[(False, True)] == 1 and agreement.counts[(True, False)] == 1
    lines = "\n".join(calibration.lines(path))
    assert "Judge vs people: agreement 0.78 (7 of 9), Cohen's kappa 0.50" in lines
    assert "**Warning:** the judge's kappa with people is 0.50, below 0.6" in lines
    assert calibration.as_json()["with_humans"]["kappa"] == pytest.approx(0.5)
    assert calibrate(load_verdicts(path), judged_answers([report(judge)]), min_kappa=0.4).warnings() == []


def test_no_human_verdicts_is_said(tmp_path):
    calibration = calibrate({}, judged_answers([report([True] * 10)]))
    lines = calibration.lines(tmp_path / "v.jsonl")
    assert lines[0].startswith("- No human verdicts yet") and calibration.warnings() == []
    unjudged = calibrate({pair_key(QUESTIONS[0], "port 0"): human(0, True)}, judged_answers([report([None] * 10)]))
    assert "1 human verdicts, none on an answer that the judge rated" in unjudged.lines(tmp_path / "v.jsonl")[0]


def test_self_consistency_leaves_out_failed_asks():
    first = [True, True, False, False, None, True]
    second = [True, False, False, False, True, True]
    agreement = self_consistency(first, second)
    # Five pairs, four agree; chance 3/5*2/5 + 2/5*3/5 = 12/25 -> kappa (4/5 - 12/25) / (13/25) = 8/13.
    assert (agreement.n, agreement.agreed, agreement.kappa) == (5, 4, pytest.approx(8 / 13))
    assert self_consistency([None], [True]) is None
    calibration = calibrate({}, {}, agreement)
    assert (
        "Judge self-consistency (the same answers asked again, the two answers in the other order): agreement 0.80"
        in (calibration.lines(Path("v.jsonl"))[1])
    )


def run_review(tmp_path: Path, typed: str, *extra: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_review_arguments(parser)
    report_path = tmp_path / "eval_report.json"
    if not report_path.exists():
        report_path.write_text(json.dumps(report([True] * 5 + [False] * 5)))
    args = parser.parse_args(
        ["--report", str(report_path), "--verdicts", str(tmp_path / "v.jsonl"), "--reviewer", "ana", *extra]
    )
    out = io.StringIO()
    return review_command(args, io.StringIO(typed), out), out.getvalue()


def test_review_appends_each_verdict_and_skips_what_was_reviewed(tmp_path):
    code, shown = run_review(tmp_path, "y\nmaybe\nn\ns\nq\n", "--sample", "5")
    assert code == 0
    assert "Please answer y, n, s or q." in shown and "Judge:     not judged" not in shown
    assert shown.count("Question:  ") == 4  # y, n, s, then q on the fourth
    assert "2 verdicts appended" in shown and "1 skipped" in shown
    verdicts = load_verdicts(tmp_path / "v.jsonl")
    assert sorted(v.verdict for v in verdicts.values()) == [CORRECT, INCORRECT]
    assert {v.reviewer for v in verdicts.values()} == {"ana"}
    assert all(v.answer.startswith("port ") for v in verdicts.values())  # the final answer, as the judge saw it
    # A second session is not shown the reviewed answers again; end of input stops it, keeping what was given.
    code, shown = run_review(tmp_path, "y\n", "--sample", "20")
    assert "8 answers not yet reviewed (2 are); showing 8." in shown
    assert len(load_verdicts(tmp_path / "v.jsonl")) == 3


def test_review_refuses_what_is_not_an_eval_report(tmp_path):
    (tmp_path / "eval_report.json").write_text('{"rows": []}')
    code, shown = run_review(tmp_path, "")
    assert code == 2 and "is not an eval_report.json" in shown
    (tmp_path / "eval_report.json").write_text(json.dumps(report([True] * 10)))
    code, shown = run_review(tmp_path, "", "--system", "nope")
    assert code == 2 and "no variant 'nope'" in shown


def test_review_candidates_are_distinct_pairs_with_the_judges_verdict():
    twice = report([True] * 10)
    twice["answers"]["base RAG k=3"] = twice["answers"]["finetuned RAG k=3"]  # the same answers from two systems
    twice["systems"]["base RAG k=3"] = twice["systems"]["finetuned RAG k=3"]
    found = candidates(twice, {pair_key(QUESTIONS[0], "port 0")})
    assert len(found) == 9 and all(candidate.judge is True for candidate in found)
    assert candidates(report([True] * 10, judged=False), set())[0].judge is None
