"""`raft-assets review`: rate a sample of the eval report's answers by hand, so that the experiment report can say
how far the judge agrees with people. Each verdict is appended to the verdicts file as it is given."""

from __future__ import annotations

import argparse
import getpass
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from raft_assets.contracts.layout import Layout
from raft_assets.evaluation.answers import PairKey, judge_verdicts, pair_key
from raft_assets.evaluation.calibration import (
    CORRECT,
    INCORRECT,
    HumanVerdict,
    append_verdict,
    load_verdicts,
    verdicts_file,
)
from raft_assets.evaluation.metrics import extract_answer
from raft_assets.evaluation.report import REPORT_JSON
from raft_assets.settings import load_settings

PROMPT = "Is the answer correct? [y]es / [n]o / [s]kip / [q]uit: "
CHOICES = {"y": CORRECT, "n": INCORRECT, "s": "skipped", "q": "quit"}


@dataclass(frozen=True)
class Candidate:
    """A (question, final answer) to rate, with the reference and what the judge said (None: not judged)."""

    question: str
    reference: str
    answer: str
    judge: bool | None
    system: str

    @property
    def key(self) -> PairKey:
        return pair_key(self.question, self.answer)


def candidates(report: dict[str, Any], reviewed: set[PairKey], system: str | None = None) -> list[Candidate]:
    """The report's distinct (question, final answer) pairs not yet reviewed, of one variant or of all."""
    found: dict[PairKey, Candidate] = {}
    for variant, rows in report["answers"].items():
        if system is not None and variant != system:
            continue
        for row, judged in zip(rows, judge_verdicts(report, variant), strict=True):
            candidate = Candidate(row["question"], row["reference"], extract_answer(row["answer"]), judged, variant)
            if candidate.key not in reviewed:
                found.setdefault(candidate.key, candidate)
    return list(found.values())


def sample(pool: list[Candidate], size: int, seed: int) -> list[Candidate]:
    """A seeded sample of `size` (all when fewer), the judged ones first: only they can measure the judge."""
    chosen = random.Random(seed).sample(pool, max(0, min(size, len(pool))))
    return sorted(chosen, key=lambda candidate: candidate.judge is None)


def ask(stdin: TextIO, stdout: TextIO) -> str:
    """The reviewer's choice (a value of CHOICES); end of input is "quit"."""
    while True:
        stdout.write(PROMPT)
        stdout.flush()
        line = stdin.readline()
        if not line:
            return "quit"
        choice = CHOICES.get(line.strip().lower()[:1])
        if choice is not None:
            return choice
        stdout.write("Please answer y, n, s or q.\n")


def show(candidate: Candidate, number: int, total: int, stdout: TextIO) -> None:
    judge = "not judged" if candidate.judge is None else "correct" if candidate.judge else "incorrect"
    stdout.write(
        f"\n[{number}/{total}] {candidate.system}\n"
        f"Question:  {candidate.question}\n"
        f"Reference: {candidate.reference}\n"
        f"Answer:    {candidate.answer}\n"
        f"Judge:     {judge}\n"
    )


def review(chosen: list[Candidate], path: Path, reviewer: str, stdin: TextIO, stdout: TextIO) -> Counter[str]:
    """Show each candidate and append the reviewer's verdict at once; returns how many of each choice."""
    tally: Counter[str] = Counter()
    for number, candidate in enumerate(chosen, 1):
        show(candidate, number, len(chosen), stdout)
        choice = ask(stdin, stdout)
        if choice == "quit":
            break
        tally[choice] += 1
        if choice in (CORRECT, INCORRECT):
            at = datetime.now(UTC).isoformat(timespec="seconds")
            verdict = HumanVerdict(
                candidate.question, candidate.reference, candidate.answer, choice, reviewer, at, candidate.system
            )
            append_verdict(path, verdict)
    return tally


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report",
        type=Path,
        help="an eval_report.json (default: the default recipe's, under RAFT_DATA_DIR; a recipe's is under "
        "recipes/<recipe>/reports/)",
    )
    parser.add_argument(
        "--verdicts",
        type=Path,
        help="where verdicts are appended (default: beside the eval set's curation file, RAFT_EVAL_CURATION)",
    )
    parser.add_argument("--sample", type=int, default=10, help="answers to show (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="which sample (default 0)")
    parser.add_argument("--system", help="only this variant of the report, e.g. 'finetuned RAG k=3'")
    parser.add_argument("--reviewer", help="your name in the file (default: the login name)")


def login() -> str:
    """The login name, or "unknown" where there is none (a container's numeric user)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def read_report(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or not {"systems", "answers"} <= report.keys():
        raise ValueError(f"{path} is not an eval_report.json (it has no `systems` and `answers`)")
    return report


def review_command(args: argparse.Namespace, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    settings = load_settings()
    path = args.verdicts or verdicts_file(Path(settings.eval_curation))
    report_file = args.report or Layout.of(settings.data_dir, settings.checkpoint_dir).reports_folder / REPORT_JSON
    try:
        report = read_report(report_file)
        reviewed = set(load_verdicts(path))
    except (OSError, ValueError) as error:  # json.JSONDecodeError and VerdictsError are ValueErrors
        stdout.write(f"raft-assets review: {error}\n")
        return 2
    if args.system is not None and args.system not in report["answers"]:
        stdout.write(f"raft-assets review: no variant {args.system!r}; the report has {', '.join(report['answers'])}\n")
        return 2
    pool = candidates(report, reviewed, args.system)
    chosen = sample(pool, args.sample, args.seed)
    stdout.write(f"{len(pool)} answers not yet reviewed ({len(reviewed)} are); showing {len(chosen)}.\n")
    tally = review(chosen, path, args.reviewer or login(), stdin, stdout)
    given = tally[CORRECT] + tally[INCORRECT]
    stdout.write(f"\n{given} verdicts appended to {path}; {tally['skipped']} skipped.\n")
    return 0
