"""The `raft-assets` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from raft_assets.cli.chat import add_chat_arguments, chat_command
from raft_assets.cli.review import add_review_arguments, review_command
from raft_assets.cli.run import run_command
from raft_assets.cli.serve import add_serve_arguments, serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raft-assets", description="RAFT fine-tuning from your documents, with Dagster."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="materialize assets headlessly into DAGSTER_HOME (the runs show in `dagster dev` afterwards)",
        description="Materialize assets: every selected source partition first, then the rest.",
    )
    run.add_argument(
        "--select",
        help="assets in Dagster's selection syntax, comma-separated, e.g. 'chunks' or 'documents+' (default: all; "
        "with --recipe alone, the per-recipe assets and the experiment report)",
    )
    run.add_argument(
        "--source",
        action="append",
        metavar="NAME",
        help="materialize only this source's partition (repeatable; default: every source in the sources file)",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="Dagster run config for the assets and resources, e.g. `ops: {fsdp_checkpoint: {config: {max_steps: 20}}}`",
    )
    run.add_argument(
        "--recipe",
        action="append",
        metavar="NAME",
        help="materialize only this recipe's partition of the per-recipe assets (repeatable; default: every recipe in "
        "the experiments file); without --select, only the recipes' assets and the experiment report, from the "
        "shared sources, index and eval set as they are",
    )
    run.add_argument("--verbose", action="store_true", help="print Dagster's event log as the run goes")
    run.set_defaults(handler=run_command)

    chat = commands.add_parser(
        "chat",
        help="the chatbot: retrieve top-k chunks, answer with the fine-tuned model, show the sources it quoted",
        description="Ask the fine-tuned model (or an endpoint) with the retrieved chunks, as it was trained.",
    )
    add_chat_arguments(chat)
    chat.set_defaults(handler=chat_command)

    serve = commands.add_parser(
        "serve",
        help="the chatbot as an OpenAI-compatible RAG endpoint, with a chat page at /",
        description="Serve the fine-tuned model with retrieval: POST /v1/chat/completions, GET /v1/models, "
        "GET /health, and the chat page at /.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_command)

    review = commands.add_parser(
        "review",
        help="rate a sample of an eval report's answers; the verdicts calibrate the judge in the experiment report",
        description="Show (question, reference, answer, judge verdict) pairs and append your y/n verdicts beside the "
        "eval set's curation file.",
    )
    add_review_arguments(review)
    review.set_defaults(handler=review_command)

    args = parser.parse_args(argv)
    return args.handler(args)
