"""Progress of a generation stage: a bar in the terminal, a line in the Dagster run log at a steady interval."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from logging import Logger

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Not failures: a duplicate question is a good reply that an earlier chunk also gave; a skipped item is one the
# extractive stand-in has nothing to say about (a chunk of source code, say). Every other status is a failure.
NOT_FAILED = ("ok", "duplicate", "skipped")


class StageProgress:
    def __init__(
        self,
        stage: str,
        total: int,
        log: Logger,
        interval_s: float,
        tokens: Callable[[], int],
        concurrency: Callable[[], str] | None = None,
    ) -> None:
        """`concurrency`: the client's level of requests in flight, as the line shows it (`Usage.concurrency_line`)."""
        self.stage = stage
        self.total = total
        self.log = log
        self.interval_s = interval_s
        self.tokens = tokens
        self.concurrency = concurrency
        self.statuses: Counter[str] = Counter()
        self._started = time.monotonic()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[tokens]} tokens, {task.fields[failed]} failed"),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        )
        self._task = self._bar.add_task(stage, total=total, rate="0.0", tokens="0", failed=0)
        self._ticker: asyncio.Task[None] | None = None

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in NOT_FAILED)

    def advance(self, status: str) -> None:
        self.statuses[status] += 1
        rate = self.done / max(time.monotonic() - self._started, 1e-9)
        self._bar.update(self._task, advance=1, rate=f"{rate:.1f}", tokens=f"{self.tokens():,}", failed=self.failed)

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed else 0.0
        eta = f"{(self.total - self.done) / rate:.0f} s" if rate else "?"
        percent = 100 * self.done / self.total if self.total else 100
        level = self.concurrency() if self.concurrency else ""
        return (
            f"{self.stage}: {self.done}/{self.total} ({percent:.0f}%), {rate:.1f}/s, ETA {eta}, "
            f"{self.tokens():,} tokens, {self.failed} failed{f', {level}' if level else ''}"
        )

    async def __aenter__(self) -> StageProgress:
        self._bar.start()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker:
            self._ticker.cancel()
        self._bar.stop()
        self.log.info(self.line())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.log.info(self.line())
