"""Writing files and folders atomically: a reader or a crash never sees half of one. No heavy imports,
so the training processes use it too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def staging_dir(target: Path, purpose: str) -> Path:
    """A hidden folder beside `target` for this process, cleared of what a killed earlier run may have left."""
    staging = target.with_name(f".{target.name}.{purpose}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_dir(new: Path, target: Path) -> None:
    """Put the folder `new` at `target`, moving any old folder there aside first and then deleting it."""
    if not target.exists():
        new.rename(target)
        return
    old = staging_dir(target, "old")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)
