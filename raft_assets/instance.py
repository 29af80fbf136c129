"""The local Dagster instance under DAGSTER_HOME (default `.dagster_home`), shared by the CLI and the UI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

TEMPLATE = Path(__file__).with_name("dagster.yaml")


def prepare_home() -> Path:
    """Create DAGSTER_HOME (absolute) with the project's dagster.yaml unless it has one; export it."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def local_instance() -> dg.DagsterInstance:
    prepare_home()
    return dg.DagsterInstance.get()


if __name__ == "__main__":
    print(prepare_home())
