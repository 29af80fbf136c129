"""The metrics of the evaluation report: pure functions on the model's replies and the reference answers.

Every text metric compares the *final answers*: the text after the last `<ANSWER>:` tag of a reply (the
reference recipe compared the whole reply, tag included, so its exact match was about 0).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from raft_assets.contracts.prompts import load_prompts
from raft_assets.contracts.raft_format import ANSWER_TAG_PATTERN, REFUSAL_ANSWER, final_answer, normalized, quoted_spans

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

ROUGE_TYPES = {"rouge1": "rouge1", "rouge2": "rouge2", "rouge_l": "rougeL"}  # our key: rouge_score's name

# How models say they do not know, besides the configured refusal text (compared after normalize_answer,
# as whole words): the refusal the RAFT data teaches, and the usual phrasings of an instruction-tuned model.
REFUSAL_PHRASES = (
    "I don't know",
    "I do not know",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "not found in the documents",
    "no relevant documents",
)

JUDGE_PROMPT = load_prompts()["judge"]
JUDGE_REORDERED_PROMPT = load_prompts()["judge_reordered"]  # the answers in the other order: self-consistency

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# YES or NO alone, maybe after a short label ("Answer:"), in quotes or bold, with trailing punctuation.
_JUDGEMENT = re.compile(r"^(?:(?!yes\b|no\b)[a-z][a-z' ]{0,19}:)?\s*[*\"'`]*(yes|no)[*\"'`.!]*$", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The text after the last `<ANSWER>:` tag (without a closing `</ANSWER>`), or the whole text without a tag."""
    answer = final_answer(text)
    if answer is not None:
        return answer
    return "" if ANSWER_TAG_PATTERN.search(text) else text.strip()


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles (a, an, the), single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the final answers are equal after normalisation, else 0.0."""
    return float(normalize_answer(extract_answer(prediction)) == normalize_answer(extract_answer(reference)))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 between the normalised final answers."""
    predicted = normalize_answer(extract_answer(prediction)).split()
    expected = normalize_answer(extract_answer(reference)).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer() -> RougeScorer:
    from rouge_score.rouge_scorer import RougeScorer  # with nltk: seconds to import, for the code location's every step

    return RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (stemmed, as the reference) between the final answers."""
    scores = _rouge_scorer().score(extract_answer(reference), extract_answer(prediction))
    return {key: scores[name].fmeasure for key, name in ROUGE_TYPES.items()}


def is_refusal(text: str, refusal_answer: str = REFUSAL_ANSWER) -> bool:
    """True when the final answer says the model does not know: the refusal text or a common phrasing of it."""
    answer = f" {normalize_answer(extract_answer(text))} "
    phrases = (normalize_answer(phrase) for phrase in (refusal_answer, *REFUSAL_PHRASES))
    return any(phrase and f" {phrase} " in answer for phrase in phrases)


def citation_accuracy(answer_text: str, documents: Sequence[str]) -> float | None:
    """The share of `##begin_quote##` spans that occur in one of the documents; None when nothing is quoted.

    Comparison ignores case and runs of whitespace, as the check of the generated answers does.
    """
    spans = quoted_spans(answer_text)
    if not spans:
        return None
    haystacks = [normalized(document) for document in documents]
    found = sum(1 for span in spans if span and any(normalized(span) in haystack for haystack in haystacks))
    return found / len(spans)


def parse_judgement(reply: str) -> bool | None:
    """True for YES, False for NO, None for anything else (a judge failure, to retry: never a NO)."""
    match = _JUDGEMENT.match(reply.strip())
    return None if match is None else match.group(1).upper() == "YES"


@dataclass(frozen=True)
class QuestionScore:
    """The scores of one answer to one eval question."""

    exact_match: float
    f1: float
    rouge1: float
    rouge2: float
    rouge_l: float
    refused: bool
    citation_accuracy: float | None = None  # None: the answer quotes nothing
    judgement: bool | None = None  # the judge's YES/NO; None: not judged
    judge_failed: bool = False  # the judge never gave a valid YES/NO


def score_question(
    prediction: str,
    reference: str,
    documents: Sequence[str] = (),
    *,
    judgement: bool | None = None,
    judge_failed: bool = False,
    refusal_answer: str = REFUSAL_ANSWER,
) -> QuestionScore:
    """Every metric of one reply against its reference answer, with the documents the model was given."""
    return QuestionScore(
        exact_match=exact_match(prediction, reference),
        f1=token_f1(prediction, reference),
        **rouge(prediction, reference),
        refused=is_refusal(prediction, refusal_answer),
        citation_accuracy=citation_accuracy(prediction, documents),
        judgement=judgement,
        judge_failed=judge_failed,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scores: Sequence[QuestionScore]) -> dict[str, Any]:
    """The summary of one system: means of the text metrics, refusals, citations and the judge's verdicts.

    `precision_answered` is the share judged correct among the judged answers that are not refusals;
    `judge_accuracy` the share judged correct among all judged answers (judge failures left out).
    A mean over nothing is None.
    """
    judged = [score for score in scores if score.judgement is not None]
    answered = [score for score in judged if not score.refused]
    citations = [score.citation_accuracy for score in scores if score.citation_accuracy is not None]
    refusals = sum(score.refused for score in scores)
    return {
        "questions": len(scores),
        "exact_match": _mean([score.exact_match for score in scores]),
        "f1": _mean([score.f1 for score in scores]),
        "rouge1": _mean([score.rouge1 for score in scores]),
        "rouge2": _mean([score.rouge2 for score in scores]),
        "rouge_l": _mean([score.rouge_l for score in scores]),
        "refusals": refusals,
        "refusal_rate": refusals / len(scores) if scores else None,
        "judged": len(judged),
        "judge_accuracy": _mean([float(bool(score.judgement)) for score in judged]),
        "precision_answered": _mean([float(bool(score.judgement)) for score in answered]),
        "judge_failures": sum(score.judge_failed for score in scores),
        "quoting_answers": len(citations),
        "citation_accuracy": _mean(citations),
    }
