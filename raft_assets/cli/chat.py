"""`raft-assets chat`: the chatbot. Retrieves the top-k chunks, streams the model's answer, shows the sources it quoted.

The model is the newest fine-tuned checkpoint (`hf_checkpoint`'s newest export), another checkpoint folder,
or an OpenAI-compatible endpoint. It is prompted exactly as in fine-tuning (`answering.answer_messages`).
An endpoint gets the chat's own key (`--api-key`, else RAFT_CHAT_API_KEY), never the generator's RAFT_LLM_API_KEY:
the endpoint is whatever URL the user names, not the one the key was issued for.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import quoted_spans
from raft_assets.inference.answering import DEFAULT_MAX_NEW_TOKENS, AnswerRequest, stream_endpoint
from raft_assets.llm.client import Endpoint
from raft_assets.retrieval.retriever import RetrievedChunk, Retriever
from raft_assets.serving.sources import quoting_chunk
from raft_assets.settings import load_settings
from raft_assets.training.base_model import missing_files

EXIT_WORDS = {"exit", "quit"}
CHAT_KEY_VARIABLE = "RAFT_CHAT_API_KEY"
Answerer = Callable[[AnswerRequest], Iterator[str]]


class ChatError(Exception):
    """The chat cannot start: no index, no checkpoint."""


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="a Hugging Face checkpoint folder (default: the newest fine-tuned)",
    )
    model.add_argument(
        "--endpoint",
        metavar="URL",
        help=f"an OpenAI-compatible endpoint instead (its key: {CHAT_KEY_VARIABLE} or --api-key; default none)",
    )
    parser.add_argument("--model", metavar="NAME", help="the model to ask the endpoint for (with --endpoint)")
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the endpoint's key (with --endpoint); prefer the variable {CHAT_KEY_VARIABLE}, since every user of "
        "the machine can read a command line (ps). The flag wins over the variable; the generator's "
        "RAFT_LLM_API_KEY is never sent",
    )
    parser.add_argument("--question", metavar="TEXT", help="answer this question and exit (default: ask on stdin)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="chunks retrieved per question (default 5)")
    parser.add_argument("--no-retrieval", action="store_true", help="answer without context (no documents)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--device", default="auto", help="device of a local checkpoint: auto (a GPU if any), cpu, cuda..."
    )


def chat_command(args: argparse.Namespace) -> int:
    """0 when answered, 1 when the model could not be asked, 2 when the chat cannot start."""
    if args.endpoint and not args.model:
        return fail("--endpoint needs --model (the name the endpoint serves)")
    no_progress_bars()  # no "Loading weights" bars around the conversation
    settings = load_settings()
    layout = Layout.of(settings.data_dir, settings.checkpoint_dir)
    try:
        retriever = None if args.no_retrieval else Retriever.load(layout)
        answerer = endpoint_answerer(args) if args.endpoint else checkpoint_answerer(args, layout)
    except (ChatError, OSError, ValueError, LookupError) as error:
        return fail(str(error))
    if args.question is not None:
        return 0 if answer(args.question, retriever, args.top_k, answerer) else 1
    return interactive(retriever, args.top_k, answerer)


def no_progress_bars() -> None:
    """Transformers' loading bars off; imported here, as the other commands of the CLI never load transformers."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def newest_checkpoint(layout: Layout) -> Path:
    """The newest `hf_checkpoint` export."""
    folder = Layout.latest_run(layout.hf_folder)
    if folder is None:
        raise ChatError(
            f"no fine-tuned checkpoint in {layout.hf_folder}: materialize hf_checkpoint first or pass --checkpoint"
        )
    return folder


def checkpoint_folder(given: Path | None, layout: Layout) -> Path:
    """The checkpoint to load: `given`, else the newest fine-tuned; ChatError when it is not a checkpoint."""
    folder = given or newest_checkpoint(layout)
    missing = missing_files(folder) if folder.is_dir() else ["the folder itself"]
    if missing:
        raise ChatError(f"{folder} is not a checkpoint to load: missing {', '.join(missing)}")
    return folder


def checkpoint_answerer(args: argparse.Namespace, layout: Layout) -> Answerer:
    folder = checkpoint_folder(args.checkpoint, layout)
    print(f"Loading {folder}...", file=sys.stderr)
    from raft_assets.inference.local_model import TransformersBackend  # torch: imported by the command that needs it

    return TransformersBackend(folder, batch_size=1, max_new_tokens=args.max_new_tokens, device=args.device).stream


def endpoint_key(args: argparse.Namespace) -> str:
    """The chat endpoint's own key: --api-key, else RAFT_CHAT_API_KEY, else none ("EMPTY")."""
    return args.api_key or os.environ.get(CHAT_KEY_VARIABLE) or "EMPTY"


def endpoint_answerer(args: argparse.Namespace) -> Answerer:
    endpoint = Endpoint.at(args.endpoint, model=args.model, api_key=endpoint_key(args))
    return lambda request: stream_endpoint(endpoint, request, args.max_new_tokens)


def interactive(retriever: Retriever | None, top_k: int, answerer: Answerer) -> int:
    """Questions from stdin until end of input or `exit`."""
    print("Ask a question (`exit` or Ctrl-D to quit).", file=sys.stderr)
    while True:
        try:
            question = input("question> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        if question.lower() in EXIT_WORDS:
            return 0
        if question:
            answer(question, retriever, top_k, answerer)


def answer(question: str, retriever: Retriever | None, top_k: int, answerer: Answerer) -> bool:
    """Stream the answer to the terminal, then its sources; False when the model could not be asked."""
    import openai  # here: 0.8 s to import, which the other commands need not wait for

    chunks = retriever.top_k([question], top_k)[0] if retriever else []
    pieces = []
    try:
        for piece in answerer(AnswerRequest(question, [chunk.text for chunk in chunks])):
            pieces.append(piece)
            print(piece, end="", flush=True)
    except (openai.APIError, ValueError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return False
    print()
    print_sources("".join(pieces), chunks)
    return True


def describe(chunk: RetrievedChunk) -> str:
    """Title, source and uri of the chunk's document, and the chunk id."""
    where = ", ".join(part for part in (chunk.source, chunk.uri) if part)
    return f"{chunk.title or '(untitled)'} ({where}; chunk {chunk.chunk_id[:12]})"


def print_sources(answer_text: str, chunks: list[RetrievedChunk]) -> None:
    print("\nSources")
    spans = quoted_spans(answer_text)
    print("  Quoted:" if spans else "  Quoted: nothing")
    for span in spans:
        chunk = quoting_chunk(span, chunks)
        origin = describe(chunk) if chunk else "not found in the retrieved documents"
        print(f'    "{shorten(span)}" <- {origin}')
    print("  Retrieved:" if chunks else "  Retrieved: none (no retrieval)")
    for rank, chunk in enumerate(chunks, 1):
        print(f"    {rank}. {describe(chunk)}, score {chunk.score:.3f}")


def shorten(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
