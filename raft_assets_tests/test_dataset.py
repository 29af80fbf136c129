"""The RAFT dataset builder: determinism, oracle probability, splits, distractors, lengths, checks."""

import json
from pathlib import Path

import pytest

from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import (
    REFUSAL_ANSWER,
    Passage,
    Sample,
    chat_messages,
    split_instruction,
    without_document_tags,
)
from raft_assets.dataset.builder import DatasetOptions, assign_splits, plan_records, split_sizes, write_dataset
from raft_assets.dataset.checks import record_problems
from raft_assets.dataset.distractors import NotEnoughDocuments
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.training.base_model import build_tiny_model, load_tokenizer


def corpus(documents: int = 12, chunks_per_document: int = 3, questions_per_chunk: int = 2):
    passages, samples = [], []
    for d in range(documents):
        for c in range(chunks_per_document):
            chunk_id = f"c{d:02d}{c}"
            text = f"Document {d} chunk {c}: tensor parallel rank {c} holds shard {d * 10 + c} of the weights."
            passages.append(Passage(chunk_id, f"d{d:02d}", f"Title {d}", text))
            for q in range(questions_per_chunk):
                cot = f"##begin_quote##{text}##end_quote## so <ANSWER>: shard {d * 10 + c}"
                samples.append(
                    Sample(
                        f"q{d:02d}{c}{q}",
                        f"Question {q} about chunk {chunk_id}?",
                        cot,
                        f"shard {d * 10 + c}",
                        chunk_id,
                        f"d{d:02d}",
                        "src",
                    )
                )
    return samples, passages


def layout(folder: Path) -> Layout:
    """The RAFT files under `folder/raft/`."""
    return Layout.of(folder, folder)


def build(folder: Path, options: DatasetOptions, samples=None, passages=None) -> list[dict]:
    samples, passages = (samples, passages) if samples else corpus()
    splits = splits_of(samples, options)
    plans = plan_records(samples, passages, splits, options, None)
    write_dataset(layout(folder), plans, samples, passages, options, None)
    problems = record_problems(layout(folder).raft_file("all"), options.num_distractors)
    assert problems.records and not any(problems.failing.values())
    return [json.loads(line) for line in layout(folder).raft_file("all").read_text(encoding="utf-8").splitlines()]


def splits_of(samples: list[Sample], options: DatasetOptions) -> dict[str, str]:
    doc_ids = sorted({s.doc_id for s in samples})
    return assign_splits(doc_ids, options)


OPTIONS = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random")


def test_same_inputs_and_seed_give_byte_identical_files(tmp_path):
    build(tmp_path / "a", OPTIONS)
    build(tmp_path / "b", OPTIONS)
    for name in ("raft.jsonl", "raft_train.jsonl", "raft_test.jsonl", "raft_chat.jsonl"):
        assert (tmp_path / "a" / "raft" / name).read_bytes() == (tmp_path / "b" / "raft" / name).read_bytes()
    build(tmp_path / "c", DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", seed=7))
    assert layout(tmp_path / "a").raft_file("all").read_bytes() != layout(tmp_path / "c").raft_file("all").read_bytes()


def test_records_follow_the_seed_format_and_keep_documents_distinct(tmp_path):
    samples, passages = corpus()
    records = build(tmp_path, OPTIONS, samples, passages)
    titles = {p.text: p.title for p in passages}
    doc_of = {p.text: p.doc_id for p in passages}
    for record in records:
        assert list(record)[:7] == ["id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"]
        documents = record["context"]["sentences"][0]
        assert len(documents) == 5 and len({doc_of[text] for text in documents}) == 5
        assert record["context"]["title"][0] == [titles[text] for text in documents]
        assert record["instruction"] == "".join(f"<DOCUMENT>{t}</DOCUMENT>\n" for t in documents) + record["question"]
        assert (record["oracle_context"] in documents) == record["oracle_included"]
        assert split_instruction(record["instruction"])[1] == record["question"]
        if record["refusal"]:
            assert record["cot_answer"] == REFUSAL_ANSWER and not record["oracle_included"]


@pytest.mark.parametrize(("p", "expected"), [(1.0, True), (0.0, False)])
def test_oracle_probability(tmp_path, p, expected):
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", p=p, refusal_p=0.0)
    records = build(tmp_path, options)
    assert records and all(record["oracle_included"] is expected for record in records)


def test_oracle_share_and_refusals_follow_their_probabilities(tmp_path):
    samples, passages = corpus(documents=30, chunks_per_document=4, questions_per_chunk=5)
    records = build(
        tmp_path, DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", refusal_p=0.1), samples, passages
    )
    regular = [r for r in records if not r["refusal"]]
    share = sum(r["oracle_included"] for r in regular) / len(regular)
    assert 0.75 < share < 0.85
    assert 0.06 < (len(records) - len(regular)) / len(regular) < 0.14


def test_split_by_document_and_train_never_sees_other_splits_text(tmp_path):
    samples, passages = corpus()
    records = build(tmp_path, OPTIONS, samples, passages)
    splits = splits_of(samples, OPTIONS)
    assert sorted(splits.values()).count("eval") == 3 and sorted(splits.values()).count("test") == 3
    doc_of = {p.text: p.doc_id for p in passages}
    for record in records:
        assert record["split"] == splits[record["doc_id"]] != "eval"
        if record["split"] == "train":
            assert all(splits[doc_of[text]] == "train" for text in record["context"]["sentences"][0])
    train = layout(tmp_path).raft_file("train").read_text().count("\n")
    test = layout(tmp_path).raft_file("test").read_text().count("\n")
    assert train + test == len(records) and test > 0


@pytest.mark.parametrize(
    ("documents", "fractions", "expected"),  # fractions: (test, eval); expected: (eval, test) documents
    [
        (12, (0.1, 0.1), (3, 3)),  # 10% of 12 would be one document each: the minimum of 3 applies
        (100, (0.1, 0.2), (20, 10)),  # fractions above the minimum are kept
        (5, (0.1, 0.1), (2, 2)),  # too few documents for 3 + 3 + 1: both shrink, training keeps one
        (12, (0.1, 0.0), (0, 3)),  # an eval fraction of 0: no eval documents
    ],
)
def test_test_and_eval_get_at_least_three_documents_while_training_keeps_one(documents, fractions, expected):
    test_fraction, eval_fraction = fractions
    assert split_sizes(documents, test_fraction, eval_fraction, 3) == expected


def test_a_corpus_of_two_documents_cannot_be_split_into_three():
    with pytest.raises(NotEnoughDocuments, match="2 documents with usable questions cannot be split"):
        split_sizes(2, 0.1, 0.1, 3)


def test_a_corpus_too_small_for_the_distractors_is_a_clear_error(tmp_path):
    samples, passages = corpus(documents=4, chunks_per_document=1)
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", eval_fraction=0, test_fraction=0)
    splits = {s.doc_id: "train" for s in samples}
    with pytest.raises(
        NotEnoughDocuments,
        match="num_distractors=4 needs at least 5 chunks from 5 different documents.*has 4 chunks from 4 documents",
    ):
        plan_records(samples, passages, splits, options, None)


def test_distractors_never_contain_the_answer(tmp_path):
    samples, passages = corpus()
    # Every even document also states chunk 0's answer sentence: it must never be a distractor for it.
    answer = "the global batch size is 1024 sequences of 8192 tokens"
    samples[0] = Sample(
        samples[0].question_id, "What is the batch size?", f"<ANSWER>: {answer}", answer, "c000", "d00", "src"
    )
    passages = [
        Passage(p.chunk_id, p.doc_id, p.title, p.text + (f" Here {answer}." if int(p.doc_id[1:]) % 2 == 0 else ""))
        for p in passages
    ]
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", eval_fraction=0, test_fraction=0)
    splits = {s.doc_id: "train" for s in samples}
    plans = plan_records(samples, passages, splits, options, None)
    for plan in (plan for plan in plans if plan.sample == 0):
        distractors = [passages[i] for i in plan.passages if i != plan.oracle]
        assert all(answer not in p.text for p in distractors)


def test_short_answers_are_kept_out_of_distractors_as_whole_words(tmp_path):
    samples, passages = corpus()
    # "8K" is stated by every third document; "128K" (another number) by the others: only the first are excluded.
    samples[0] = Sample(samples[0].question_id, "What context?", "<ANSWER>: 8K", "8K", "c000", "d00", "src")
    passages = [
        Passage(
            p.chunk_id, p.doc_id, p.title, p.text + (" It reads 8K tokens." if int(p.doc_id[1:]) % 3 == 1 else " 128K.")
        )
        for p in passages
    ]
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", eval_fraction=0, test_fraction=0)
    plans = plan_records(samples, passages, {s.doc_id: "train" for s in samples}, options, None)
    distractors = [passages[i] for plan in plans if plan.sample == 0 for i in plan.passages if i != plan.oracle]
    assert distractors and all("128K" in p.text for p in distractors)


def test_when_every_other_document_holds_the_answer_distractors_still_come(tmp_path):
    samples, passages = corpus()
    samples[0] = Sample(samples[0].question_id, "Which model?", "<ANSWER>: Llama 3", "Llama 3", "c000", "d00", "src")
    passages = [Passage(p.chunk_id, p.doc_id, p.title, p.text + " Llama 3 is used.") for p in passages]
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", eval_fraction=0, test_fraction=0)
    plans = plan_records(samples, passages, {s.doc_id: "train" for s in samples}, options, None)
    assert all(len(plan.passages) == 5 for plan in plans if plan.sample == 0)


def test_document_tags_inside_a_passage_are_defused(tmp_path):
    samples, passages = corpus()
    passages[0] = Passage(
        passages[0].chunk_id,
        passages[0].doc_id,
        "RAFT",
        without_document_tags("Wrap each one in <DOCUMENT>...</DOCUMENT>."),
    )
    records = build(
        tmp_path, DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", p=1.0), samples, passages
    )
    with_tags = [r for r in records if any("[DOCUMENT]" in t for t in r["context"]["sentences"][0])]
    assert with_tags
    for record in with_tags:
        documents, question = split_instruction(record["instruction"])
        assert question == record["question"] and documents.count("<DOCUMENT>") == 5


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    texts = [p.read_text(encoding="utf-8") for p in sorted(Path("data").glob("*/*.md"))]
    model = build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", texts)
    return load_tokenizer(model)


@pytest.mark.parametrize("overlength", ["drop", "truncate"])
def test_samples_longer_than_the_context_are_dropped_or_truncated(tmp_path, tiny_tokenizer, overlength):
    samples, passages = corpus()
    long_text = " ".join(f"Filler sentence {i} about pipeline parallel stages." for i in range(120))
    passages = [
        Passage(p.chunk_id, p.doc_id, p.title, p.text + (f" {long_text}" if p.doc_id == "d03" else ""))
        for p in passages
    ]
    lengths = TokenLengths(tiny_tokenizer, 700)
    options = DatasetOptions(refusal_answer=REFUSAL_ANSWER, distractors="random", overlength=overlength)
    splits = splits_of(samples, options)
    plans = plan_records(samples, passages, splits, options, None)
    stats = write_dataset(layout(tmp_path), plans, samples, passages, options, lengths)
    records = [json.loads(line) for line in layout(tmp_path).raft_file("all").read_text().splitlines()]
    long_ones = sum(any(long_text[:40] in t for t in (passages[i].text for i in plan.passages)) for plan in plans)
    assert long_ones > 0
    assert max(stats.token_lengths) <= 700
    for record in records:
        documents, question = split_instruction(record["instruction"])
        messages = chat_messages(question, documents, record["cot_answer"])
        assert len(tiny_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)) <= 700
    if overlength == "drop":
        assert stats.dropped_overlength == long_ones and stats.truncated == 0
        assert len(records) == len(plans) - long_ones
    else:
        assert stats.truncated == long_ones and stats.dropped_overlength == 0 and len(records) == len(plans)
