import pytest

from raft_assets.contracts.raft_format import REFUSAL_ANSWER
from raft_assets.evaluation.metrics import (
    JUDGE_PROMPT,
    QuestionScore,
    aggregate,
    citation_accuracy,
    exact_match,
    extract_answer,
    is_refusal,
    normalize_answer,
    parse_judgement,
    rouge,
    score_question,
    token_f1,
)

REPLY = (
    "The document says ##begin_quote##Llama 3 was trained on 15T tokens.##end_quote## so the answer is the count.\n"
    "<ANSWER>: 15 trillion tokens</ANSWER>"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (REPLY, "15 trillion tokens"),
        ("<ANSWER>: first\nthen <ANSWER>: second", "second"),
        ("  just an answer  ", "just an answer"),
        ("reasoning without a final answer <ANSWER>:", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The Llama-3 model, an  LLM!\n") == "llama3 model llm"


def test_exact_match_strips_the_answer_tag_that_broke_the_reference():
    prediction, reference = "Because of X.\n<ANSWER>: The 8B model.", "8B model"
    # the reference compared the normalised raw reply, tag and reasoning included: never equal
    assert normalize_answer(prediction) != normalize_answer(reference)
    assert exact_match(prediction, reference) == 1.0
    assert exact_match("<ANSWER>: 8B model", reference) == 1.0
    assert exact_match("8B model", reference) == 1.0
    assert exact_match("<ANSWER>: the 70B model", reference) == 0.0


def test_token_f1_partial_overlap():
    # prediction tokens: llama 3 has 8 billion parameters (6); reference: 8 billion (2); common: 2
    assert token_f1("<ANSWER>: Llama 3 has 8 billion parameters", "8 billion") == pytest.approx(
        2 * (2 / 6) / (2 / 6 + 1)
    )
    assert token_f1("8 billion", "8 billion") == 1.0
    assert token_f1("70 million", "8 billion") == 0.0
    assert token_f1("", "8 billion") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation


def test_rouge_on_a_pair_computed_by_hand():
    # stemmed tokens: the cat sat on the mat / the cat is sit on the mat
    scores = rouge("<ANSWER>: The cat is sitting on the mat.", "The cat sat on the mat")
    assert scores["rouge1"] == pytest.approx(10 / 13)  # 5 common unigrams: P 5/7, R 5/6
    assert scores["rouge2"] == pytest.approx(6 / 11)  # 3 common bigrams: P 3/6, R 3/5
    assert scores["rouge_l"] == pytest.approx(10 / 13)  # LCS "the cat on the mat"
    assert rouge("cats are sitting", "cat sits")["rouge1"] > rouge("cats are sitting", "dog sleeps")["rouge1"] == 0.0
    assert rouge("x <ANSWER>: the cat sat", "The cat sat") == {"rouge1": 1.0, "rouge2": 1.0, "rouge_l": 1.0}


@pytest.mark.parametrize(
    "text",
    [
        REFUSAL_ANSWER,
        f"None of the documents mention it.\n<ANSWER>: {REFUSAL_ANSWER}",
        "<ANSWER>: sorry, i DON'T know the answer to this question because related documents are not found",
        "I don't know.",
        "I cannot answer this question from the given context.",
        "The answer is not found in the documents.",
        "There are no relevant documents for this question.",
    ],
)
def test_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "<ANSWER>: Llama 3 was trained on 15T tokens.",
        "I don't know at first, but the documents say it.\n<ANSWER>: 8 billion",  # only the final answer counts
        "The significant answer is 42.",  # "cant answer" only as whole words
        "",
    ],
)
def test_not_refusals(text):
    assert not is_refusal(text)


def test_refusal_with_a_configured_text():
    assert is_refusal("<ANSWER>: Out of scope, ask support.", refusal_answer="Out of scope, ask support")
    assert not is_refusal("<ANSWER>: 8 billion", refusal_answer="")


def test_citation_accuracy():
    documents = ["Llama 3 was trained\n on 15T TOKENS.", "FSDP shards parameters."]
    assert citation_accuracy(REPLY, documents) == 1.0
    two_quotes = REPLY + " ##begin_quote##FSDP shards parameters##end_quote## ##begin_quote##made up##end_quote##"
    assert citation_accuracy(two_quotes, documents) == pytest.approx(2 / 3)
    assert citation_accuracy(REPLY, []) == 0.0
    assert citation_accuracy("<ANSWER>: 15T tokens", documents) is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("YES", True),
        ("yes.", True),
        ("NO", False),
        ("Answer: YES", True),
        ("**No**", False),
        (" no!\n", False),
        ("The student answer is wrong", None),
        ("YES and NO", None),
        ("YES: NO", None),
        ("Yes, because the numbers match.", None),
        ("", None),
    ],
)
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) is expected


def test_the_judge_prompt_from_prompts_yaml_carries_the_criteria_and_the_answers():
    system, user = JUDGE_PROMPT.messages(
        question="How many tokens?", reference_answer="15T {tokens}", student_answer="15 trillion"
    )
    assert system["role"] == "system" and user["role"] == "user"
    assert "YES or NO" in system["content"] and "numerical values" in system["content"]
    assert (
        user["content"] == "Question: How many tokens?\nTeacher's answer: 15T {tokens}\nStudent's answer: 15 trillion"
    )
    assert JUDGE_PROMPT.params["temperature"] == 0.0


def test_score_question():
    score = score_question(REPLY, "15 trillion tokens", ["Llama 3 was trained on 15T tokens."], judgement=True)
    assert score == QuestionScore(
        exact_match=1.0,
        f1=1.0,
        rouge1=1.0,
        rouge2=1.0,
        rouge_l=1.0,
        refused=False,
        citation_accuracy=1.0,
        judgement=True,
    )
    assert score_question(REFUSAL_ANSWER, "15 trillion tokens").refused


def _score(em: float, refused: bool = False, citation: float | None = None, **judge) -> QuestionScore:
    return QuestionScore(em, em, em, em, em, refused, citation, **judge)


def test_aggregate_with_refusals_and_judge_failures():
    summary = aggregate(
        [
            _score(1.0, citation=1.0, judgement=True),
            _score(0.0, citation=0.5, judgement=False),
            _score(0.0, refused=True, judgement=False),
            _score(1.0, judgement=True),
            _score(0.0, judge_failed=True),
        ]
    )
    assert summary == {
        "questions": 5,
        "exact_match": 0.4,
        "f1": 0.4,
        "rouge1": 0.4,
        "rouge2": 0.4,
        "rouge_l": 0.4,
        "refusals": 1,
        "refusal_rate": 0.2,
        "judged": 4,
        "judge_accuracy": 0.5,
        "precision_answered": pytest.approx(2 / 3),
        "judge_failures": 1,
        "quoting_answers": 2,
        "citation_accuracy": 0.75,
    }


def test_aggregate_of_nothing_and_without_a_judge():
    empty = aggregate([])
    assert empty["questions"] == 0 and empty["exact_match"] is None and empty["refusal_rate"] is None
    unjudged = aggregate([_score(1.0)])
    assert unjudged["judge_accuracy"] is None and unjudged["precision_answered"] is None
    assert unjudged["citation_accuracy"] is None and unjudged["judged"] == 0
