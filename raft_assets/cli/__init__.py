"""The `raft-assets` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from raft_assets.cli.chat import add_chat_arguments, chat_command
from raft_assets.cli.run import run_command


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
        default="*",
        help="assets in Dagster's selection syntax, comma-separated, e.g. 'chunks' or 'documents+' (default: '*', all)",
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
    run.add_argument("--verbose", action="store_true", help="print Dagster's event log as the run goes")
    run.set_defaults(handler=run_command)

    chat = commands.add_parser(
        "chat",
        help="the chatbot: retrieve top-k chunks, answer with the fine-tuned model, show the sources it quoted",
        description="Ask the fine-tuned model (or an endpoint) with the retrieved chunks, as it was trained.",
    )
    add_chat_arguments(chat)
    chat.set_defaults(handler=chat_command)

    args = parser.parse_args(argv)
    return args.handler(args)
