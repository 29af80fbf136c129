"""`raft_dataset` and `eval_set` materialized from the shipped sample corpus, end to end on a real instance."""

import json
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import yaml

from raft_assets.contracts.raft_format import chat_messages, split_instruction, without_document_tags
from raft_assets.defs.curation.assets import curated_answers
from raft_assets.defs.dataset.assets import eval_set, raft_dataset
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.training.base_model import load_tokenizer, read_pointer
from raft_assets_tests.conftest import SOURCES, run_assets


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_file_loads_with_datasets_and_as_the_reference_loader_reads_it(sample_pipeline):
    project, _, _ = sample_pipeline
    folder = Path(project.data_dir) / "raft"
    for name in ("raft.jsonl", "raft_train.jsonl", "raft_test.jsonl", "raft_chat.jsonl"):
        loaded = datasets.load_dataset("json", data_files=str(folder / name), split="train")
        assert len(loaded) == len(lines(folder / name)) > 0

    tokenizer = load_tokenizer(read_pointer(project.layout))
    for record in lines(folder / "raft_train.jsonl")[:20]:
        # What llama-recipes' raft_dataset.py does: split at the last </DOCUMENT>, build the chat, template it.
        documents, question = split_instruction(record["instruction"])
        assert question == record["question"] and documents.count("<DOCUMENT>") == 5
        text = tokenizer.apply_chat_template(chat_messages(question, documents, record["cot_answer"]), tokenize=False)
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
        assert f"Question: {question}" in text and text.endswith(f"{record['cot_answer']}<|eot_id|>")


def test_splits_keep_documents_apart_and_the_eval_set_never_overlaps_training(sample_pipeline):
    project, _, _ = sample_pipeline
    folder = Path(project.data_dir)
    train = lines(folder / "raft" / "raft_train.jsonl")
    test = lines(folder / "raft" / "raft_test.jsonl")
    evaluation = json.loads((folder / "eval" / "eval_set.json").read_text())
    assert train and test and evaluation
    train_docs, test_docs = {r["doc_id"] for r in train}, {r["doc_id"] for r in test}
    eval_docs = {item["doc_id"] for item in evaluation}
    assert not train_docs & test_docs and not eval_docs & (train_docs | test_docs)
    assert len(test_docs) >= 3 and len(eval_docs) >= 3  # the sample corpus measures more than one document
    assert not {item["question"] for item in evaluation} & {r["question"] for r in train}
    assert all(set(item) >= {"question", "answer", "doc_id", "source", "id"} for item in evaluation)


def test_hard_distractors_are_nearer_to_the_oracle_than_random_ones(sample_pipeline):
    project, instance, _ = sample_pipeline
    folder = Path(project.data_dir)
    index = ChunkIndex.load(folder / "index")
    vector = dict(zip(index.chunk_ids, index.embeddings, strict=True))
    chunk_frame = pl.read_parquet(folder / "chunks" / "*.parquet")
    chunk_of_text = {without_document_tags(t): c for t, c in chunk_frame.select("text", "chunk_id").iter_rows()}

    def mean_similarity(strategy: str) -> float:
        run_assets(project, instance, [raft_dataset], config={"raft_dataset": {"config": {"distractors": strategy}}})
        similarities = [
            float(np.dot(vector[record["chunk_id"]], vector[chunk_of_text[text]]))
            for record in lines(folder / "raft" / "raft.jsonl")
            for text in record["context"]["sentences"][0]
            if text != record["oracle_context"]
        ]
        return sum(similarities) / len(similarities)

    assert mean_similarity("hard") > mean_similarity("random") + 0.1


def test_curation_survives_regeneration(sample_pipeline):
    project, instance, curation = sample_pipeline
    path = Path(project.data_dir) / "eval" / "eval_set.json"
    first = json.loads(path.read_text())
    rejected, corrected = first[0]["id"], first[1]["id"]
    curation.write_text(yaml.safe_dump({"reject": [rejected], "corrections": {corrected: "A hand-checked answer."}}))

    for source in SOURCES:  # regenerate questions, answers and their curation, then the dataset and the eval set
        run_assets(project, instance, [questions, cot_answers, curated_answers], source)
    run_assets(
        project,
        instance,
        [raft_dataset, eval_set],
        config={"eval_set": {"config": {"curation_file": str(curation), "size": 10}}},
    )

    after = {item["id"]: item for item in json.loads(path.read_text())}
    assert rejected not in after
    assert after[corrected]["answer"] == "A hand-checked answer." and after[corrected]["corrected"]
    assert len(after) == len(first)  # the next-ranked candidate took the rejected one's place
    assert set(after) - {i["id"] for i in first} and len(set(after) & {i["id"] for i in first}) == len(first) - 1
