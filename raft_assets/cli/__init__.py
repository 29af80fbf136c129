"""The `raft-assets` command."""

from __future__ import annotations

import argparse

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
    run.add_argument("--verbose", action="store_true", help="print Dagster's event log as the run goes")
    run.set_defaults(handler=run_command)

    args = parser.parse_args(argv)
    return args.handler(args)
