"""Can the judge be trusted? Its verdicts against people's, and against its own when asked again.

People's verdicts live beside the eval set's curation file (`eval_curation.yaml` -> `eval_curation.verdicts.jsonl`):
one JSON object a line, `{"question", "reference", "answer", "verdict": "correct"|"incorrect", "reviewer", "at",
"system"}`, where `answer` is the final answer the judge rated. JSON lines, not YAML, so that `raft-assets review`
appends each verdict as it is given, never rewriting the hand-edited curation file or losing earlier verdicts; a
later verdict on the same (question, answer) replaces an earlier one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raft_assets.evaluation.answers import PairKey, judge_verdicts, pair_key
from raft_assets.evaluation.statistics import Agreement, cohen_kappa

VERDICTS_SUFFIX = ".verdicts.jsonl"
CORRECT, INCORRECT = "correct", "incorrect"
MIN_KAPPA = 0.6  # "substantial" agreement (Landis and Koch); below it the judge's ranking of recipes is suspect


class VerdictsError(ValueError):
    """The human verdicts file has a line that is not a verdict."""


@dataclass(frozen=True)
class HumanVerdict:
    """A person's verdict on one final answer to one eval question."""

    question: str
    reference: str
    answer: str
    verdict: str  # CORRECT or INCORRECT
    reviewer: str
    at: str  # ISO 8601
    system: str  # the eval_report variant that gave the answer

    @property
    def correct(self) -> bool:
        return self.verdict == CORRECT

    @property
    def key(self) -> PairKey:
        return pair_key(self.question, self.answer)


def verdicts_file(curation_file: Path) -> Path:
    """Where the human verdicts are: beside the curation file, named after it."""
    return curation_file.with_suffix(VERDICTS_SUFFIX)


def _parse(line: str, where: str) -> HumanVerdict:
    try:
        raw = json.loads(line)
        verdict = HumanVerdict(**{name: str(raw[name]) for name in HumanVerdict.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise VerdictsError(
            f"{where}: not a verdict ({error!r}); fields: {', '.join(HumanVerdict.__dataclass_fields__)}"
        ) from None
    if verdict.verdict not in (CORRECT, INCORRECT):
        raise VerdictsError(f"{where}: verdict must be {CORRECT!r} or {INCORRECT!r}, got {verdict.verdict!r}")
    return verdict


def load_verdicts(path: Path) -> dict[PairKey, HumanVerdict]:
    """Every (question, answer) pair's latest verdict; a missing file holds none."""
    if not path.is_file():
        return {}
    verdicts = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            verdict = _parse(line, f"{path}:{number}")
            verdicts[verdict.key] = verdict
    return verdicts


def append_verdict(path: Path, verdict: HumanVerdict) -> None:
    """One more line, flushed to disk at once: a review stopped half way keeps every verdict given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(asdict(verdict), ensure_ascii=False) + "\n")


def judged_answers(reports: Iterable[Mapping[str, Any]]) -> dict[PairKey, bool]:
    """The judge's verdict on each distinct (question, final answer) of the reports' variants (the first met)."""
    return {key: verdict for key, (_, verdict) in judged_rows(reports).items()}


def judged_rows(reports: Iterable[Mapping[str, Any]]) -> dict[PairKey, tuple[Mapping[str, Any], bool]]:
    """Each distinct (question, final answer) that the judge rated, with its row and verdict (the first met)."""
    found: dict[PairKey, tuple[Mapping[str, Any], bool]] = {}
    for report in reports:
        for variant, rows in report["answers"].items():
            for row, verdict in zip(rows, judge_verdicts(report, variant), strict=True):
                if verdict is not None:
                    found.setdefault(pair_key(row["question"], row["answer"]), (row, verdict))
    return found


@dataclass(frozen=True)
class Calibration:
    """The judge against people (None: no answer both rated) and against itself asked again (None: not measured)."""

    human_verdicts: int
    with_humans: Agreement | None
    self_consistency: Agreement | None
    min_kappa: float = MIN_KAPPA

    def warnings(self) -> list[str]:
        found = []
        for name, agreement in (("people", self.with_humans), ("itself asked again", self.self_consistency)):
            if agreement is not None and agreement.kappa is not None and agreement.kappa < self.min_kappa:
                found.append(
                    f"**Warning:** the judge's kappa with {name} is {agreement.kappa:.2f}, below {self.min_kappa}: "
                    "its verdicts are not reliable enough to rank recipes by."
                )
        return found

    def lines(self, verdicts_path: Path) -> list[str]:
        """The report's section on the judge, in markdown lines."""
        if not self.human_verdicts:
            people = (
                f"No human verdicts yet: how far the judge agrees with people is unknown. `raft-assets review` shows "
                f"answers to rate and appends the verdicts to `{verdicts_path}`."
            )
        elif self.with_humans is None:
            people = f"{self.human_verdicts} human verdicts, none on an answer that the judge rated in these reports."
        else:
            people = "Judge vs people: " + describe(self.with_humans, ("people", "the judge"), (CORRECT, INCORRECT))
        itself = (
            "Judge self-consistency (the same answers asked again, the two answers in the other order): "
            + describe(self.self_consistency, ("the first ask", "the second"), ("YES", "NO"))
            if self.self_consistency is not None
            else "Judge self-consistency not measured."
        )
        return [f"- {people}", f"- {itself}", *(f"- {warning}" for warning in self.warnings())]

    def as_json(self) -> dict[str, Any]:
        return {
            "human_verdicts": self.human_verdicts,
            "with_humans": agreement_json(self.with_humans),
            "self_consistency": agreement_json(self.self_consistency),
            "min_kappa": self.min_kappa,
            "warnings": self.warnings(),
        }


def describe(agreement: Agreement, raters: tuple[str, str], labels: tuple[str, str]) -> str:
    """ "agreement 0.85 (17 of 20), Cohen's kappa 0.70; both correct 9, ...": two raters' True/False verdicts, which
    `labels` name (True first)."""
    kappa = (
        f"{agreement.kappa:.2f}"
        if agreement.kappa is not None
        else "undefined (one verdict throughout: rate answers of both kinds)"
    )
    yes, no = labels
    count = agreement.counts.get
    return (
        f"agreement {agreement.accuracy:.2f} ({agreement.agreed} of {agreement.n}), Cohen's kappa {kappa}; "
        f"both {yes} {count((True, True), 0)}, both {no} {count((False, False), 0)}, "
        f"{yes} for {raters[0]} only {count((True, False), 0)}, for {raters[1]} only {count((False, True), 0)}"
    )


def agreement_json(agreement: Agreement | None) -> dict[str, Any] | None:
    if agreement is None:
        return None
    counts = {
        f"{first}/{second}": agreement.counts.get((first, second), 0)
        for first in (True, False)
        for second in (True, False)
    }
    return {
        "n": agreement.n,
        "agreed": agreement.agreed,
        "accuracy": agreement.accuracy,
        "kappa": agreement.kappa,
        "counts": counts,
    }


def self_consistency(first: Sequence[bool | None], second: Sequence[bool | None]) -> Agreement | None:
    """The judge's verdicts on the same answers asked twice; pairs where either ask failed are left out."""
    both = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    return cohen_kappa([a for a, _ in both], [b for _, b in both]) if both else None


def calibrate(
    human: Mapping[PairKey, HumanVerdict],
    judged: Mapping[PairKey, bool],
    consistency: Agreement | None = None,
    min_kappa: float = MIN_KAPPA,
) -> Calibration:
    """The judge's agreement with the human verdicts on the answers both rated (people first, judge second)."""
    shared = sorted(human.keys() & judged.keys())
    with_humans = (
        cohen_kappa([human[key].correct for key in shared], [judged[key] for key in shared]) if shared else None
    )
    return Calibration(len(human), with_humans, consistency, min_kappa)
