import pytest

from raft_assets.contracts.raft_format import final_answer, quoted_spans, quotes_verified
from raft_assets.generation.parsing import parse_questions


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("What is FSDP?\nHow does torchrun set RANK?", ["What is FSDP?", "How does torchrun set RANK?"]),
        (
            "1. What is FSDP?\n2) How does torchrun set RANK?\n(3) Why bf16?",
            ["What is FSDP?", "How does torchrun set RANK?", "Why bf16?"],
        ),
        ("- What is FSDP?\n* Why bf16?\n• What is DCP?", ["What is FSDP?", "Why bf16?", "What is DCP?"]),
        ("Here are 3 questions:\n\n1. What is FSDP?\n\n2. Why bf16?\n", ["What is FSDP?", "Why bf16?"]),
        ("Sure! Here you go\nWhat is FSDP?\nWhy bf16?\nI hope these help!", ["What is FSDP?", "Why bf16?"]),
        ('Q1: "What is FSDP?"\nQuestion 2: **Why bf16?**', ["What is FSDP?", "Why bf16?"]),
        ("What is FSDP?\nWhat is FSDP?\nWhy bf16?", ["What is FSDP?", "Why bf16?"]),
        ("llama 3 context length\nfsdp2 fully_shard usage", ["llama 3 context length", "fsdp2 fully_shard usage"]),
        ("1.\n---\n???\n", []),
    ],
)
def test_parse_questions(reply, expected):
    assert parse_questions(reply, 5) == expected


def test_parse_questions_keeps_the_first_n_of_too_many():
    reply = "\n".join(f"{i}. Question number {i}?" for i in range(1, 9))
    assert parse_questions(reply, 3) == ["Question number 1?", "Question number 2?", "Question number 3?"]


def test_final_answer():
    assert final_answer("Reasoning...\n<ANSWER>: 8K tokens") == "8K tokens"
    assert final_answer("<ANSWER>: draft\nmore\n<ANSWER> :  final </ANSWER>") == "final"
    assert final_answer("no tag here") is None
    assert final_answer("<ANSWER>:   ") is None


def test_quotes_are_checked_against_the_source_ignoring_case_and_whitespace():
    source = "Llama 3 supports a context\nlength of 8K tokens. It was trained on 15T tokens."
    good = "##begin_quote## llama 3 supports a context length of 8K tokens. ##end_quote## so 8K"
    assert quoted_spans(good) == ["llama 3 supports a context length of 8K tokens."]
    assert quotes_verified(good, source)
    two = good + " ##begin_quote##It was trained on 15T tokens.##end_quote##"
    assert quotes_verified(two, source)
    assert not quotes_verified(good + " ##begin_quote##It was trained on 2T tokens.##end_quote##", source)
    assert not quotes_verified("No quotes at all. <ANSWER>: 8K", source)
    assert not quotes_verified("##begin_quote## ##end_quote##", source)
