"""Answering backends and retrieval: the tiny model in process, the test server as an endpoint, a real index."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import chat_messages, documents_block
from raft_assets.contracts.tables import CHUNK_SCHEMA, DOCUMENT_SCHEMA
from raft_assets.hashing import content_hash
from raft_assets.inference.answering import Answer, AnswerRequest, EndpointBackend, answer_messages
from raft_assets.inference.local_model import TransformersBackend
from raft_assets.llm.client import Endpoint
from raft_assets.llm.reply_cache import CachedReply, ReplyCache
from raft_assets.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL, embed, load_embedder
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.retrieval.retriever import Retriever
from raft_assets.training.base_model import build_tiny_model
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message

# (source, title, uri, chunk texts): three documents in two sources, one fact per chunk.
DOCUMENTS = [
    (
        "llama",
        "Llama 3 model card",
        "docs/llama3.md",
        [
            "Llama 3 was trained on over 15 trillion tokens of public data. The largest model has 70 billion parameters.",
            "Llama 3 uses a tokenizer with a vocabulary of 128,000 tokens, which encodes language more efficiently.",
            "The Llama 3 8B model supports a context window of 8,192 tokens and uses grouped query attention.",
            "Meta released Llama 3 under a community license that permits commercial use with some limits.",
        ],
    ),
    (
        "llama",
        "Fine-tuning with RAFT",
        "docs/raft.md",
        [
            "RAFT trains a model to answer from documents: each sample holds the oracle document and distractors.",
            "In RAFT samples, documents are wrapped as <DOCUMENT>text</DOCUMENT> before the question is asked.",
            "The oracle document is kept in eighty percent of the samples, so the model also learns to answer without it.",
        ],
    ),
    (
        "pytorch",
        "FSDP tutorial",
        "https://pytorch.org/tutorials/fsdp.html",
        [
            "Fully Sharded Data Parallel shards parameters, gradients and optimizer states across data parallel workers.",
            "Activation checkpointing trades compute for memory by recomputing activations during the backward pass.",
            "Mixed precision with bfloat16 halves the memory of activations while keeping the range of float32.",
        ],
    ),
]
CHUNK_TEXTS = [text for *_, texts in DOCUMENTS for text in texts]


def write_corpus(generated: Path) -> None:
    """`documents` and `chunks` parquet files per source and the retrieval index, as the assets write them."""
    documents: dict[str, list[tuple]] = {}
    chunks: dict[str, list[tuple]] = {}
    for source, title, uri, texts in DOCUMENTS:
        doc_id = content_hash(source, uri)
        full_text = "\n\n".join(texts)
        documents.setdefault(source, []).append((doc_id, source, uri, title, full_text, content_hash(full_text), None))
        chunks.setdefault(source, []).extend(
            (content_hash(text), doc_id, source, position, text, [doc_id]) for position, text in enumerate(texts)
        )
    for stage, rows, schema in (("documents", documents, DOCUMENT_SCHEMA), ("chunks", chunks, CHUNK_SCHEMA)):
        (generated / stage).mkdir(parents=True)
        for source, source_rows in rows.items():
            pl.DataFrame(source_rows, schema=schema, orient="row").write_parquet(
                generated / stage / f"{source}.parquet"
            )
    frame = pl.concat([pl.read_parquet(path) for path in sorted((generated / "chunks").glob("*.parquet"))])
    ChunkIndex(
        chunk_ids=frame["chunk_id"].to_list(),
        embeddings=embed(load_embedder(DEFAULT_EMBEDDING_MODEL), frame["text"].to_list()),
        model=DEFAULT_EMBEDDING_MODEL,
        doc_ids=frame["doc_id"].to_list(),
    ).save(generated / "index")


def write_checkpoint(checkpoints: Path, run: str = "run-1") -> Path:
    """The tiny model saved as the newest fine-tuned checkpoint: `checkpoints/hf/<run>` and `hf/latest_run`."""
    folder = checkpoints / "hf" / run
    build_tiny_model(folder, CHUNK_TEXTS * 3)
    (checkpoints / "hf" / "latest_run").write_text(run + "\n")
    return folder


def build_project(root: Path) -> Path:
    """The corpus under `root/generated` and the checkpoint under `root/checkpoints`; returns `root`."""
    write_corpus(root / "generated")
    write_checkpoint(root / "checkpoints")
    return root


@pytest.fixture(scope="module")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("answering"))


@pytest.fixture(scope="module")
def checkpoint(project_root: Path) -> Path:
    return project_root / "checkpoints" / "hf" / "run-1"


def rag_requests(count: int) -> list[AnswerRequest]:
    """Requests of different lengths (1 to 5 documents), the last one without context."""
    requests = [
        AnswerRequest(f"Question {i}: what does the documentation say?", CHUNK_TEXTS[i : i + 1 + i % 5])
        for i in range(count - 1)
    ]
    return [*requests, AnswerRequest("What is RAFT?")]


# -- the prompt ------------------------------------------------------------------------------------------


def test_the_prompt_is_the_fine_tuning_prompt_with_or_without_documents():
    documents = ["First passage.", "Second <DOCUMENT>passage</DOCUMENT>."]
    messages = answer_messages(AnswerRequest("What is it?", documents))
    defused = ["First passage.", "Second [DOCUMENT]passage[/DOCUMENT]."]
    assert messages == chat_messages("What is it?", documents_block(defused).strip())
    assert "Context: <DOCUMENT>First passage.</DOCUMENT>\n<DOCUMENT>Second [DOCUMENT]" in messages[1]["content"]
    # Without context: the same prompt, the context empty.
    assert answer_messages(AnswerRequest("What is it?")) == chat_messages("What is it?", "")
    assert "Context: \n" in answer_messages(AnswerRequest("What is it?"))[1]["content"]


# -- transformers ----------------------------------------------------------------------------------------


def test_transformers_backend_batches_keep_order_and_give_the_greedy_answers_of_one_at_a_time(checkpoint: Path):
    requests = rag_requests(10)
    batched = TransformersBackend(checkpoint, batch_size=8, max_new_tokens=12, device="cpu")
    single = TransformersBackend(checkpoint, batch_size=1, max_new_tokens=12, device="cpu")

    answers = asyncio.run(batched.answer_all(requests))
    one_at_a_time = asyncio.run(single.answer_all(requests))
    assert [answer.text for answer in answers] == [answer.text for answer in one_at_a_time]
    assert all(answer.error is None and answer.text and answer.seconds > 0 for answer in answers)
    assert len({answer.text for answer in answers}) >= 3  # the prompts make a difference: order is checkable
    # Batched greedy decoding is the model's own: each answer is what generate gives for that prompt alone.
    prompts = single.prompt_ids(requests)
    assert answers[3].text == single.generate([prompts[3]])[0]
    assert answers[-1].text == single.generate([prompts[-1]])[0]
    # The order of the requests is the order of the answers, whatever the batching.
    reversed_answers = asyncio.run(batched.answer_all(requests[::-1]))
    assert [answer.text for answer in reversed_answers] == [answer.text for answer in answers][::-1]
    # Streaming gives the same answer, piece by piece.
    assert "".join(batched.stream(requests[2])) == answers[2].text


def test_transformers_backend_keeps_its_answers_and_takes_them_from_the_cache(checkpoint: Path, tmp_path: Path):
    requests = rag_requests(5)
    cache = ReplyCache(tmp_path / "replies.sqlite").scoped("these weights")
    backend = TransformersBackend(checkpoint, batch_size=2, max_new_tokens=8, device="cpu", cache=cache)
    computed = asyncio.run(backend.answer_all(requests))
    assert len(cache) == len(requests) and all(answer.seconds > 0 and not answer.cached for answer in computed)

    # A new process (a resumed run) with the same cache: nothing to compute, the same answers, each with the
    # time it took when it was computed.
    again = TransformersBackend(checkpoint, batch_size=2, max_new_tokens=8, device="cpu", cache=cache)
    cache.put(again.cache_key(requests[1]), again.name, CachedReply("kept from before the kill", 10, 5, 1.25))
    resumed = asyncio.run(again.answer_all(requests))
    assert [answer.text for answer in resumed] == [
        computed[0].text,
        "kept from before the kill",
        *(answer.text for answer in computed[2:]),
    ]
    assert all(answer.cached for answer in resumed)
    assert [answer.seconds for answer in resumed] == [computed[0].seconds, 1.25, *(a.seconds for a in computed[2:])]

    # Other weights (another scope) share nothing with these.
    other = TransformersBackend(checkpoint, batch_size=2, max_new_tokens=8, device="cpu", cache=cache.scoped("x"))
    assert all(answer.seconds > 0 for answer in asyncio.run(other.answer_all(requests[:2])))


def test_transformers_backend_reports_a_prompt_too_long_for_the_context(checkpoint: Path):
    backend = TransformersBackend(checkpoint, batch_size=4, max_new_tokens=8, device="cpu")
    too_long = AnswerRequest("Too long?", [" ".join(f"word{i}" for i in range(3000))])
    answers = asyncio.run(backend.answer_all([AnswerRequest("Short?", CHUNK_TEXTS[:1]), too_long]))
    assert answers[0].error is None and answers[0].text
    assert answers[1].text == ""
    assert re.search(r"the prompt has \d+ tokens: .* does not fit the model's context of 4096", answers[1].error)


# -- an OpenAI-compatible endpoint -----------------------------------------------------------------------


def question_echo(body: dict[str, Any]) -> str:
    """Answers with the question and the number of documents; a question with FAIL makes the server fail (500)."""
    question = re.search(r"^Question: (.*)$", last_user_message(body), re.MULTILINE).group(1)
    if "FAIL" in question:
        raise RuntimeError("scripted failure")
    context = last_user_message(body).split("Context: ", 1)[1].split("\n\nAnswer this question", 1)[0]
    documents = context.count("</DOCUMENT>")
    return f"<ANSWER>: {question} ({documents} documents)"


def test_endpoint_backend_answers_through_the_client_with_errors_per_request_and_the_cache(tmp_path: Path):
    requests = rag_requests(6)
    failing = AnswerRequest("FAIL this one", CHUNK_TEXTS[:2])
    with OpenAITestServer(question_echo, keep_bodies=True) as server:
        endpoint = Endpoint.at(server.base_url, model="test-model", max_retries=1, max_concurrency=4)
        cache = ReplyCache(tmp_path / "replies.sqlite")
        backend = EndpointBackend(endpoint, cache, max_new_tokens=64)

        answers = asyncio.run(backend.answer_all([*requests[:3], failing, *requests[3:]]))
        assert [answer.text for answer in answers[:3]] == [
            f"<ANSWER>: {request.question} ({len(request.documents)} documents)" for request in requests[:3]
        ]
        assert answers[-1].text == "<ANSWER>: What is RAFT? (0 documents)"
        assert answers[3] == Answer("", answers[3].seconds, answers[3].error)
        assert answers[3].error.startswith("HTTP 500 (after 1 retries)")
        assert all(answer.error is None for index, answer in enumerate(answers) if index != 3)
        # The request is the fine-tuning prompt, greedy.
        body = next(body for body in server.stats.bodies if "Question 1:" in last_user_message(body))
        assert body["messages"] == answer_messages(requests[1])
        assert (body["temperature"], body["max_tokens"]) == (0.0, 64)

        # Asked again, every answered request comes from the cache, with the time it took when it was asked:
        # the server sees nothing.
        server.reset_stats()
        again = asyncio.run(backend.answer_all(requests))
        assert server.stats.requests == 0
        assert backend.usage.cache_hits == len(requests)
        answered = [answer for index, answer in enumerate(answers) if index != 3]
        assert [answer.text for answer in again] == [answer.text for answer in answered]
        assert all(answer.cached for answer in again) and not any(answer.cached for answer in answers)
        assert [answer.seconds for answer in again] == [answer.seconds for answer in answered]
        assert all(answer.seconds > 0 for answer in again)
        cache.close()


def test_a_reply_cache_written_before_replies_had_their_seconds_opens_and_keeps_its_replies(tmp_path: Path):
    path = tmp_path / "replies.sqlite"
    with sqlite3.connect(path) as old:  # the table as earlier versions created it, with one reply
        old.execute(
            "CREATE TABLE replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL)"
        )
        old.execute("INSERT INTO replies VALUES ('old', 'm', 'an old reply', 3, 4, 0.0)")
    old.close()

    cache = ReplyCache(path)
    assert cache.get("old") == CachedReply("an old reply", 3, 4, None)  # kept; its time was never measured
    cache.put("new", "m", CachedReply("a new reply", 5, 6, 0.5))
    assert (cache.get("new"), cache.get("old")) == (
        CachedReply("a new reply", 5, 6, 0.5),
        CachedReply("an old reply", 3, 4, None),
    )
    cache.close()
    reopened = ReplyCache(path)  # the column is there now: opening again changes nothing
    assert len(reopened) == 2 and reopened.get("new").seconds == 0.5
    reopened.close()


# -- retrieval -------------------------------------------------------------------------------------------


def test_retriever_finds_the_chunk_of_an_exact_text_query_with_its_document(project_root: Path):
    generated = project_root / "generated"
    retriever = Retriever.load(Layout.of(generated, project_root))
    fsdp, raft = CHUNK_TEXTS[7], CHUNK_TEXTS[5]
    results = retriever.top_k([fsdp, raft], k=3)

    assert [len(found) for found in results] == [3, 3]
    top = results[0][0]
    assert (top.chunk_id, top.text, top.title, top.source) == (content_hash(fsdp), fsdp, "FSDP tutorial", "pytorch")
    assert top.uri == "https://pytorch.org/tutorials/fsdp.html"
    assert top.doc_id == content_hash("pytorch", top.uri)
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert [chunk.score for chunk in results[0]] == sorted((chunk.score for chunk in results[0]), reverse=True)
    # Literal <DOCUMENT> tags of a chunk are defused, as in the RAFT records.
    assert results[1][0].chunk_id == content_hash(raft)
    assert results[1][0].text == raft.replace("<DOCUMENT>", "[DOCUMENT]").replace("</DOCUMENT>", "[/DOCUMENT]")
    assert retriever.top_k([], k=3) == []
    assert len(retriever.top_k(["anything"], k=50)[0]) == len(CHUNK_TEXTS)


def test_retriever_needs_the_chunks_of_its_index(project_root: Path, tmp_path: Path):
    generated = project_root / "generated"
    shutil.copytree(generated / "index", tmp_path / "index")  # the index, without its chunks
    with pytest.raises(FileNotFoundError, match="materialize 'chunks' first"):
        Retriever.load(Layout.of(tmp_path, tmp_path))
    (tmp_path / "chunks").mkdir()
    pl.read_parquet(generated / "chunks" / "llama.parquet").write_parquet(tmp_path / "chunks" / "llama.parquet")
    with pytest.raises(ValueError, match="materialize 'retrieval_index' again"):
        Retriever.load(Layout.of(tmp_path, tmp_path))
