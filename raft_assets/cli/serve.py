"""`raft-assets serve`: the chatbot as an OpenAI-compatible RAG endpoint, with its web page at `/`.

The model is the newest fine-tuned checkpoint (or `--checkpoint`), answered by one of three backends:
`transformers` (in this process, batching concurrent requests: a CPU), `vllm` (the `vllm` resource's server for the
checkpoint, started here and stopped on exit: a GPU), or an endpoint URL (any OpenAI-compatible server; its key from
RAFT_SERVE_ENDPOINT_API_KEY, never the generator's RAFT_LLM_API_KEY). `auto`: vllm when there is a GPU and a `vllm`
command, else transformers. The service's own key, when RAFT_SERVE_API_KEY is set, is required from its clients.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from starlette.applications import Starlette

from raft_assets.cli.chat import ChatError, checkpoint_folder, fail, no_progress_bars
from raft_assets.contracts.layout import Layout
from raft_assets.defs.evaluation.vllm import VLLMResource
from raft_assets.hashing import content_hash, tree_fingerprint
from raft_assets.inference.answering import DEFAULT_MAX_NEW_TOKENS
from raft_assets.llm.client import Endpoint
from raft_assets.retrieval.retriever import Retriever
from raft_assets.serving.app import ServeOptions, create_app
from raft_assets.serving.generators import BATCH_WINDOW_S, ContextBudget, EndpointGenerator, Generator
from raft_assets.serving.protocol import API_KEY_VARIABLE, ServiceInfo
from raft_assets.serving.server import listening_socket, serve_forever, url_of
from raft_assets.serving.service import RagService
from raft_assets.settings import load_settings

ENDPOINT_KEY_VARIABLE = "RAFT_SERVE_ENDPOINT_API_KEY"
BACKENDS = ("auto", "transformers", "vllm")
DEFAULTS = ServeOptions()
log = logging.getLogger("raft_assets.serve")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="a Hugging Face checkpoint folder (default: the newest fine-tuned)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="KIND",
        help="transformers (in process, batched), vllm (a vLLM server for the checkpoint), or an OpenAI-compatible "
        f"URL (its key: {ENDPOINT_KEY_VARIABLE}); default auto: vllm with a GPU and the vllm command, else transformers",
    )
    parser.add_argument("--model", metavar="NAME", help="the model to ask the endpoint for (with a URL backend)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="chunks retrieved per question (default 5)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: a free one)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest answer in tokens, and a request's max_tokens limit (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--max-model-len", type=int, metavar="N", help="context length in tokens (default: the checkpoint's)"
    )
    parser.add_argument(
        "--max-question-chars",
        type=int,
        default=DEFAULTS.max_question_chars,
        metavar="N",
        help=f"longest question accepted (default {DEFAULTS.max_question_chars})",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULTS.max_active,
        metavar="N",
        help=f"requests answered at once, the in-process batch size (default {DEFAULTS.max_active})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULTS.max_queued,
        metavar="N",
        help=f"requests waiting beyond those; more get 503 with Retry-After (default {DEFAULTS.max_queued})",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=BATCH_WINDOW_S * 1000,
        metavar="MS",
        help="in process, a batch takes the requests that come within this of each other "
        f"(default {BATCH_WINDOW_S * 1000:g})",
    )
    parser.add_argument("--device", default="auto", help="device of the in-process model: auto, cpu, cuda...")
    parser.add_argument("--vllm-executable", default="vllm", metavar="PATH", help="the vllm command (default vllm)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N", help="GPUs for vllm (default 1)")


def serve_command(args: argparse.Namespace) -> int:
    """Serves until interrupted: 0; 2 when the service cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    no_progress_bars()
    if problem := argument_problem(args):
        return fail(problem)
    settings = load_settings()
    with ExitStack() as stack:
        try:
            app = open_service(args, Layout.of(settings.data_dir, settings.checkpoint_dir), stack)
            sock = listening_socket(args.host, args.port)
        except (ChatError, OSError, ValueError, LookupError, dg.Failure) as error:
            return fail(str(error))
        info, backend = app.state.service.info, app.state.service.generator.name
        key_note = f"; clients need {API_KEY_VARIABLE}" if app.state.options.api_key else ""
        print(f"Serving {info.model} ({backend}) at {url_of(sock)}/ (OpenAI API: /v1){key_note}", file=sys.stderr)
        serve_forever(app, sock)
    return 0


def open_service(args: argparse.Namespace, layout: Layout, stack: ExitStack) -> Starlette:
    """The service's application: the index, the model (a vLLM server stays up while `stack` is open), the options."""
    retriever = Retriever.load(layout)
    _ = retriever.embedder.model  # loaded now rather than with the first question
    model = open_model(args, layout, stack)
    info = ServiceInfo(
        model=model.name,
        top_k=args.top_k,
        fingerprint=content_hash(model.identity, tree_fingerprint(layout.index_folder), str(args.top_k)),
    )
    options = ServeOptions(
        max_active=args.max_concurrency,
        max_queued=args.max_queue,
        max_question_chars=args.max_question_chars,
        max_new_tokens=args.max_new_tokens,
        api_key=os.environ.get(API_KEY_VARIABLE) or None,
    )
    return create_app(RagService(retriever, model.generator, info, model.budget), options)


def argument_problem(args: argparse.Namespace) -> str | None:
    url = is_url(args.backend)
    if not url and args.backend not in BACKENDS:
        return f"--backend {args.backend!r}: expected one of {', '.join(BACKENDS)} or an http(s) URL"
    if url and not args.model:
        return "a URL backend needs --model (the name the endpoint serves)"
    numbers = {
        "--top-k": args.top_k,
        "--max-new-tokens": args.max_new_tokens,
        "--max-question-chars": args.max_question_chars,
        "--max-concurrency": args.max_concurrency,
    }
    wrong = [name for name, value in numbers.items() if value < 1]
    if args.max_queue < 0 or args.batch_window_ms < 0:
        wrong.append("--max-queue" if args.max_queue < 0 else "--batch-window-ms")
    return f"{', '.join(wrong)}: must be positive" if wrong else None


def is_url(backend: str) -> bool:
    return backend.startswith(("http://", "https://"))


def backend_kind(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch  # here: the CLI's other commands never load torch

    return "vllm" if torch.cuda.is_available() and shutil.which("vllm") else "transformers"


@dataclass(frozen=True)
class Model:
    """What answers: the generator, its context budget (None for a URL: no tokenizer), the name clients ask for and
    what identifies the weights (for the service's fingerprint)."""

    generator: Generator
    budget: ContextBudget | None
    name: str
    identity: str


def open_model(args: argparse.Namespace, layout: Layout, stack: ExitStack) -> Model:
    if is_url(args.backend):
        endpoint = Endpoint.at(args.backend, model=args.model, api_key=os.environ.get(ENDPOINT_KEY_VARIABLE) or "EMPTY")
        return Model(EndpointGenerator(endpoint), None, args.model, content_hash(args.backend, args.model))
    folder = checkpoint_folder(args.checkpoint, layout)
    identity = content_hash(str(folder.resolve()), tree_fingerprint(folder))
    if backend_kind(args.backend) == "vllm":
        vllm = VLLMResource(
            executable=args.vllm_executable,
            port=0,
            tensor_parallel_size=args.tensor_parallel_size,
            max_model_len=args.max_model_len,
        )
        served = stack.enter_context(vllm.serve(folder, log=log))
        endpoint = Endpoint.at(served.base_url, model=served.model, api_key=served.api_key or "EMPTY")
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        budget = context_budget(tokenizer, AutoConfig.from_pretrained(folder).max_position_embeddings, args)
        return Model(EndpointGenerator(endpoint), budget, folder.name, identity)
    log.info(f"loading {folder}")
    from raft_assets.inference.local_model import TransformersBackend
    from raft_assets.serving.batching import BatchingGenerator

    backend = TransformersBackend(folder, args.max_concurrency, args.max_new_tokens, device=args.device)
    generator = BatchingGenerator(backend, args.max_concurrency, args.batch_window_ms / 1000)
    return Model(generator, context_budget(backend.tokenizer, backend.context_length, args), folder.name, identity)


def context_budget(tokenizer, model_length: int | None, args: argparse.Namespace) -> ContextBudget | None:
    """The model's context, or `--max-model-len` when shorter."""
    lengths = [length for length in (model_length, args.max_model_len) if length]
    return ContextBudget(tokenizer, min(lengths)) if lengths else None
