"""The code location loads in Dagster's own tools (`dagster definitions validate`; `dagster dev` in test_ui.py), and
loads without the libraries that only a few steps use."""

import subprocess
import sys

import pytest

from raft_assets_tests.dagster_dev import DAGSTER, REPO, dev_env

# Seconds to import each, which every step of a run (the multiprocess executor imports the code location in each
# step's process), the code server and the CLI would pay: the steps that use them import them.
HEAVY_MODULES = ("torch", "transformers", "nltk", "matplotlib.pyplot", "datasketch", "scipy", "openai", "pypdf")


@pytest.mark.slow  # imports the module in a new interpreter
@pytest.mark.parametrize("module", ["raft_assets.definitions", "raft_assets.cli"])
def test_the_code_location_and_the_cli_import_none_of_the_heavy_modules_that_few_steps_use(module):
    probe = f"import sys, {module}; print(' '.join(m for m in sys.argv[1:] if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe, *HEAVY_MODULES], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


@pytest.mark.slow  # `dagster definitions validate` loads the code location in two processes
@pytest.mark.parametrize("target", [["-w", "workspace.yaml"], ["-m", "raft_assets.definitions"]])
def test_definitions_validate(tmp_path, target):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", *target],
        cwd=REPO,
        env=dev_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Validation successful for code location raft_assets" in result.stdout + result.stderr
