"""The package's shape, as docs/ARCHITECTURE.md draws it, checked on the source: layers import downwards only,
no stage's library code imports another stage or Dagster, each artifact's file name is spelled in one module, and
the RAFT_* variables are read in the settings module (and the chat and serve commands' own keys in the CLI)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raft_assets"
FOUNDATION = {"settings", "fields", "files", "hashing"}
SERVICES = {"llm", "retrieval", "inference", "serving"}
STAGES = {"ingestion", "generation", "curation", "dataset", "training", "evaluation"}
DAGSTER_LAYER = {"defs", "definitions", "cli"}
# What each layer may import from the package: its own layer and the ones below it.
ALLOWED = {
    "foundation": {"foundation"},
    "contracts": {"foundation", "contracts"},
    "service": {"foundation", "contracts", "service"},
    "stage": {"foundation", "contracts", "service"},  # and its own stage
    "dagster": {"foundation", "contracts", "service", "stage", "dagster"},
}


def layer(package: str) -> str:
    if package in FOUNDATION:
        return "foundation"
    if package == "contracts":
        return "contracts"
    if package in SERVICES:
        return "service"
    if package in STAGES:
        return "stage"
    assert package in DAGSTER_LAYER, f"raft_assets.{package} is in no layer of docs/ARCHITECTURE.md"
    return "dagster"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def package_of(module: str) -> str:
    """The top-level package under raft_assets (`raft_assets.defs.training.assets` -> `defs`)."""
    return module.split(".")[1]


def test_every_layer_imports_only_its_own_and_the_layers_below():
    wrong = []
    for module, path in modules().items():
        if module == "raft_assets":
            continue
        package = package_of(module)
        for imported in imports(path):
            if not imported.startswith("raft_assets."):
                continue
            target = package_of(imported)
            if target == package:
                continue
            if layer(target) not in ALLOWED[layer(package)]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_library_code_imports_no_dagster():
    """(The training script reports through `dagster_pipes`, the dependency-free client side of Dagster Pipes.)"""
    wrong = [
        module
        for module, path in modules().items()
        if module != "raft_assets"
        and layer(package_of(module)) != "dagster"
        and any(name.split(".")[0] == "dagster" for name in imports(path))
    ]
    assert wrong == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules().items():
        if module == "raft_assets":
            continue
        for imported in imports(path):
            if imported.startswith("raft_assets.") and package_of(imported) != package_of(module):
                graph[package_of(module)].add(package_of(imported))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    assert [package for package in list(graph) if reaches(package, package, {package})] == []


@pytest.mark.parametrize(
    "literal",
    [
        '"raft_train.jsonl"',
        '"raft_test.jsonl"',
        '"raft_chat.jsonl"',
        '"eval_set.json"',
        '"splits.parquet"',
        '"replies.sqlite"',
        '"base_model.json"',
        '"latest_run"',
        '"index"',
        '"train_params.yaml"',
        '"prompts.yaml"',
    ],
)
def test_each_file_name_is_written_in_one_module(literal):
    holders = [module for module, path in modules().items() if literal in path.read_text(encoding="utf-8")]
    assert len(holders) == 1, holders


ENVIRON = re.compile(r"os\.(?:environ(?:\.get)?|getenv)\s*[\[(]\s*f?\"(RAFT_[A-Z0-9_{}]*)")


def test_raft_variables_are_read_in_the_settings_module_and_the_cli_only():
    readers = {
        module
        for module, path in modules().items()
        if ENVIRON.search(path.read_text(encoding="utf-8")) or 'endpoint_variables("RAFT_' in path.read_text()
    }
    assert {module for module in readers if not module.startswith("raft_assets.cli.")} == {"raft_assets.settings"}
