"""Bounded concurrency and a bounded queue: at most `max_active` requests are answered at once and `max_queued` wait;
one more is refused at once with 503 and a Retry-After, rather than waiting without bound while memory and latency
grow. Retry-After is the mean time of the last answers (at least a second): about when a slot frees up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from raft_assets.serving.protocol import ApiError

RECENT = 50  # answers whose mean time is the Retry-After


class Admission:
    def __init__(self, max_active: int, max_queued: int) -> None:
        if max_active < 1 or max_queued < 0:
            raise ValueError("max_active must be at least 1 and max_queued at least 0")
        self.max_active = max_active
        self.max_queued = max_queued
        self.admitted = 0  # answered now or waiting
        self.slots = asyncio.Semaphore(max_active)
        self.recent_seconds: deque[float] = deque(maxlen=RECENT)

    @property
    def queued(self) -> int:
        return max(self.admitted - self.max_active, 0)

    def enter(self) -> Ticket:
        """A place in the queue, or ApiError 503 with Retry-After when the queue is full."""
        if self.admitted >= self.max_active + self.max_queued:
            retry_after = str(self.retry_after_s())
            raise ApiError(
                503,
                f"The service is busy ({self.max_active} requests answered, {self.max_queued} waiting): retry in "
                f"{retry_after} s.",
                "service_unavailable",
                {"Retry-After": retry_after},
            )
        self.admitted += 1
        return Ticket(self)

    def retry_after_s(self) -> int:
        mean = sum(self.recent_seconds) / len(self.recent_seconds) if self.recent_seconds else 1.0
        return max(1, math.ceil(mean))


class Ticket:
    """A request's place: `wait` for a slot, `release` once (whatever happened) when the answer is over."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.started: float | None = None  # when it got its slot
        self.released = False

    async def wait(self) -> None:
        await self.admission.slots.acquire()
        self.started = time.monotonic()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.admission.admitted -= 1
        if self.started is not None:
            self.admission.slots.release()
            self.admission.recent_seconds.append(time.monotonic() - self.started)
