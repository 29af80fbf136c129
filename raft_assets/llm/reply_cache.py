"""A content-addressed cache of model replies on disk (SQLite), written as each reply arrives.

The key hashes everything that determines a reply — model, messages, sampling parameters and prompt
version — so a repeated or resumed run never pays twice for the same request, and a changed chunk
(new text, new key) is the only thing sent again. Failures are never cached. A reply may carry how long it took
to compute (`seconds`), so that a report built from the cache can state the time of the run that computed it.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft_assets.files import open_shared_database
from raft_assets.hashing import content_hash


@dataclass(frozen=True)
class CachedReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float | None = None  # how long computing it took; None when not measured (or cached before it was)


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], prompt_version: int) -> str:
    material = json.dumps(
        {"model": model, "messages": messages, "params": params, "prompt_version": prompt_version},
        sort_keys=True,
        ensure_ascii=False,
    )
    return content_hash(material)


class ReplyCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.scope = ""  # see `scoped`
        self._db = open_shared_database(
            path,
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL, seconds REAL)",
        )
        self._add_seconds_column()

    def _add_seconds_column(self) -> None:
        """A cache file written before replies carried their seconds gets the column (NULL: not measured)."""
        try:
            self._db.execute("ALTER TABLE replies ADD COLUMN seconds REAL")
        except sqlite3.OperationalError as error:  # it has it: a new file, or another process added it first
            if "duplicate column" not in str(error):
                raise

    def scoped(self, scope: str) -> ReplyCache:
        """A view of this cache whose keys also depend on `scope`: the identity of what answers beyond its model
        name, such as the weights of a checkpoint served under a fixed name."""
        view = copy.copy(self)
        view.scope = content_hash(self.scope, scope)
        return view

    def _scoped(self, key: str) -> str:
        return content_hash(self.scope, key) if self.scope else key

    def get(self, key: str) -> CachedReply | None:
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, seconds FROM replies WHERE key = ?", (self._scoped(key),)
        ).fetchone()
        return CachedReply(*row) if row else None

    def put(self, key: str, model: str, reply: CachedReply) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, model, text, prompt_tokens, completion_tokens, created, seconds)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self._scoped(key),
                model,
                reply.text,
                reply.prompt_tokens,
                reply.completion_tokens,
                time.time(),
                reply.seconds,
            ),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()
