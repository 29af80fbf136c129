"""Written files follow the process umask: 0666 (folders 0777) less the umask, whatever the writer did.

transformers' `save_pretrained` writes `model.safetensors` at 0600 through a temporary file; what the project
publishes must still be readable by another user of a shared volume (a vLLM container, a Kubernetes pod) under
umask 022, and must not be under a private umask such as 027. The training and the export are checked the same
way in test_training_assets.py.
"""

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from raft_assets.files import current_umask, replace_dir, write_text_atomically
from raft_assets.training.base_model import TINY, build_tiny_model
from raft_assets_tests.test_training_data import DATA


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to `mask` (children such as torchrun inherit it), restored afterwards."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """The permission bits of every file and folder under `root` (itself included), by relative path."""
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


def expected_modes(root: Path, mask: int) -> dict[str, int]:
    return {name: (0o777 if (root / name).is_dir() else 0o666) & ~mask for name in modes(root)}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_current_umask_reads_it_without_changing_it(mask):
    with umask(mask):
        assert current_umask() == mask
        assert current_umask() == mask


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_a_published_folder_gets_the_umask_modes_whatever_its_writer_gave(tmp_path, mask):
    staged = tmp_path / "staged"
    (staged / "inner").mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"weights")
    (staged / "model.safetensors").chmod(0o600)  # as transformers' save_pretrained leaves it
    (staged / "inner").chmod(0o700)  # as tempfile.mkdtemp makes a folder
    (staged / "inner" / "config.json").write_text("{}")
    (staged / "inner" / "run.sh").write_text("#!/bin/sh\n")
    (staged / "inner" / "run.sh").chmod(0o744)  # an executable stays executable
    with umask(mask):
        replace_dir(staged, tmp_path / "published")
        write_text_atomically(tmp_path / "published" / "latest", "step_000001\n")
    published = tmp_path / "published"
    found = modes(published)
    assert found.pop("inner/run.sh") == 0o777 & ~mask
    assert found == {name: mode for name, mode in expected_modes(published, mask).items() if name != "inner/run.sh"}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_the_tiny_base_model_follows_the_umask(tmp_path, mask):
    texts = [path.read_text(encoding="utf-8") for path in sorted(DATA.rglob("*.md"))]
    with umask(mask):
        model = build_tiny_model(tmp_path / TINY, texts)
    assert (model.path / "model.safetensors").is_file()
    assert modes(model.path) == expected_modes(model.path, mask)
