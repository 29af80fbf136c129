"""Writing files and folders atomically: a reader or a crash never sees half of one. No heavy imports,
so the training processes use it too.

What these helpers publish has the modes of any file the process creates: 0666 for files (0777 for
folders and executables) less the umask. Writers that go through a private temporary file do not give
that: transformers' `save_pretrained` leaves `model.safetensors` at 0600, which a vLLM container or a
Kubernetes pod running as another user of a shared volume cannot read. So `replace_dir` sets the modes of
everything it publishes; `written_atomically` leaves the file to its writer, which creates it with `open` or
the like, following the umask.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (`.<name>.partial`) to write the file at, renamed to `path` when the block
    ends (deleted when it raises). A run killed while writing leaves the partial file, which the next one replaces.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with written_atomically(path) as partial:
        partial.write_text(text, encoding="utf-8")


def staging_dir(target: Path, purpose: str) -> Path:
    """A hidden folder beside `target` for this process, cleared of what a killed earlier run may have left."""
    staging = target.with_name(f".{target.name}.{purpose}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_dir(new: Path, target: Path) -> None:
    """Put the folder `new` at `target` with the umask's modes, moving any old folder there aside first
    (to `.<name>.old`, where `recover_dir` finds it after a crash between the two renames) and then deleting it."""
    follow_umask(new)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Put back the folder that `replace_dir` moved aside when a crash stopped it before the new one was in place."""
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        old.rename(target)


def follow_umask(root: Path) -> None:
    """Give `root` and everything under it the modes that creating them now would give (symbolic links are
    left alone). Only modes that differ are changed, so files another user wrote are not touched when right."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = (0o777 if path.is_dir() or mode & 0o111 else 0o666) & ~mask
        if mode != wanted:
            path.chmod(wanted)


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it for a moment."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def open_shared_database(path: Path, schema: str) -> sqlite3.Connection:
    """The SQLite file `path` (made, with the table of `schema`, when missing), for several processes to read and
    write at once: write-ahead log, a writer waits up to 60 s for another's lock, each statement its own
    transaction unless one is begun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    database = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("PRAGMA synchronous=NORMAL")
    database.execute(schema)
    return database
