"""How many requests to keep in flight at each replica of an endpoint, found while the requests run.

Nobody knows the right number in advance: vLLM batches up to 256 sequences by default, a TGI or cloud deployment
something else, and a cloud API publishes a rate limit, not a capacity. Too few requests in flight leave the
server's batch slots idle; too many only queue at the server (latency grows, throughput does not).

The approach is TCP Vegas's, as Netflix's concurrency-limits library applies it to services
(https://github.com/Netflix/concurrency-limits, "Performance Under Load", 2018): by Little's law, the requests a
server is working on are its throughput times its latency without load, so with `in_flight` requests taking `rtt`
each and a no-load latency `floor`, `in_flight * floor / rtt` of them are being served and the rest are queued
(Vegas's queue estimate is `limit * (1 - floor / rtt)`). Each replica's limit

- starts at `INITIAL_LIMIT` and doubles every window (about one round trip) while the latency stays within
  `HEADROOM` of its floor (TCP's slow start: more in flight still means proportionally more replies per second),
  and after slow start, by up to `HEADROOM` per window while it does, to find a knee that moved;
- once the latency shows a queue, moves halfway (`SMOOTHING`) to the requests being served plus `HEADROOM`: the knee
  plus a small queue, so a slot that frees finds the next request already waiting at the server instead of one
  round trip away;
- on 429 or 503, at most once per round trip, falls to the larger of half its level (AIMD's multiplicative
  decrease) and the replies of the last round trip plus `HEADROOM` (what the server did accept: under a rate limit,
  the level that keeps its rate), and sends nothing to that replica until its Retry-After has passed.

Why not the gradient algorithm (Gradient2) of the same library: it grows the limit by a small queue allowance per
window (`queueSize`), made for a server shedding a sudden surge; from 8 to 1,024 that is hundreds of windows, minutes
of a 70B model's round trips, where doubling takes seven. And its baseline is a long-term average latency, which a
queue that lasts becomes part of; the batch client's queue lasts the whole run. Vegas's floor is the smallest mean latency of a window of
completions (never of one request: an LLM's latency varies with its reply's length, 2 to 10 s for a 70B model), so
the jitter of single requests does not read as a queue. Its known limit: a server whose latency rises with its
batch before its slots are full (per-token time grows with the batch) is held near the batch where latency starts
to grow; `HEADROOM` keeps it above that knee, and a fixed level (`adaptive_concurrency=False`) is there for anyone
who knows better, or who shares a server and must not take all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

INITIAL_LIMIT = 8  # requests in flight per replica before anything is measured
MIN_WINDOW = 16  # completions per measurement at least, so a window's mean latency is not one request's
# A window is half the limit's replies, of requests sent since the last change: after a doubling, the requests
# the new room let in at once; so slow start doubles once per round trip.
# Requests beyond the estimated knee: a queue the server always has the next request from. Half, not less, because
# the floor is biased low: a slow-start window closes on the first replies of its requests, the short ones.
HEADROOM = 0.5
SMOOTHING = 0.5  # the share of the way to a window's estimate the limit moves: one slow window is not the trend
BACKOFF = 0.5  # the limit's factor on 429/503
APP_LIMITED = 0.5  # a window whose requests in flight averaged under half the limit says nothing about more
HISTORY = 50  # limit changes kept for the metadata (the first and the latest)

RECHECK_S = 1.0  # how often the pool looks for room while requests wait, besides releases and Retry-After timers


@dataclass
class ReplicaLimit:
    """One replica's limit and the window of completions it is measured over."""

    maximum: int
    limit: float = INITIAL_LIMIT
    floor_s: float | None = None  # the smallest mean latency of a window: the latency without a queue
    slow_start: bool = True
    in_flight: int = 0
    resume_at: float = 0.0  # no request is sent before this (monotonic time): a Retry-After
    changed_at: float = float("-inf")  # requests sent before the last change do not measure the new limit
    _replies: deque[float] = field(default_factory=deque)  # when the replies of the last round trip came
    _samples: int = 0
    _rtt_sum: float = 0.0
    _in_flight_sum: int = 0

    def __post_init__(self) -> None:
        self.limit = min(self.limit, self.maximum)

    @property
    def level(self) -> int:
        return max(1, int(self.limit))

    def completed(self, sent_at: float, now: float) -> bool:
        """Count a reply to a request sent at `sent_at`; at the end of a window, adjust the limit. True if it changed."""
        self._replies.append(now)
        while now - self._replies[0] > (self.floor_s or 0.0):
            self._replies.popleft()
        if sent_at < self.changed_at:
            return False
        self._samples += 1
        self._rtt_sum += now - sent_at
        self._in_flight_sum += self.in_flight
        if self._samples < max(MIN_WINDOW, self.level // 2):
            return False
        rtt, in_flight = self._rtt_sum / self._samples, self._in_flight_sum / self._samples
        self._samples, self._rtt_sum, self._in_flight_sum = 0, 0.0, 0
        self.floor_s = rtt if self.floor_s is None else min(self.floor_s, rtt)
        before = self.level
        target = in_flight * self.floor_s / rtt * (1 + HEADROOM)  # served now (Little's law), plus a queue
        if in_flight < APP_LIMITED * self.limit:
            pass  # too few requests to say anything about the limit (the end of a batch)
        elif target >= self.limit:  # the latency is within HEADROOM of its floor: more in flight, more replies
            self.limit = self.limit * 2 if self.slow_start else max(self.limit + 1, target)
        else:  # a queue beyond HEADROOM: back to the knee plus HEADROOM
            self.slow_start = False
            self.limit += SMOOTHING * (target - self.limit)
        self.limit = min(max(self.limit, 1.0), float(self.maximum))
        return self._changed(before, now)

    def _changed(self, before: int, now: float) -> bool:
        """After a new limit: start a new window, of requests sent from now on."""
        if self.level == before:
            return False
        self.changed_at = now
        self._samples, self._rtt_sum, self._in_flight_sum = 0, 0.0, 0
        return True

    def back_off(self, sent_at: float, now: float) -> bool:
        """A 429/503 to a request sent at `sent_at`: lower the limit, unless the request was sent before the last
        change (it answers the level before it: TCP's one decrease per window)."""
        if sent_at < self.changed_at:
            return False
        self.slow_start = False
        before = self.level
        accepted = len(self._replies) * (1 + HEADROOM) if self.floor_s else 0.0
        self.limit = max(1.0, min(self.limit, max(self.limit * BACKOFF, accepted)))
        return self._changed(before, now)


@dataclass(frozen=True)
class Change:
    seconds: float  # since the client started
    replica: int
    level: int
    why: str  # "latency" (a window's measurement) or "429"/"503"


@dataclass
class ConcurrencyLog:
    """What the limiter chose: the levels now, the most in flight, and the changes (the first and latest kept)."""

    mode: str  # "adaptive" or "fixed"
    levels: list[int]
    in_flight: int = 0
    most_in_flight: int = 0
    changes: int = 0
    missed_wake_ups: int = 0  # requests admitted by RECHECK_S's look, not by a release or a Retry-After timer
    history: deque[Change] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def describe(self) -> str:
        """For the progress line: e.g. "212 in flight, limit 240 (adaptive)"; several replicas: "limit 120+118"."""
        return f"{self.in_flight} in flight, limit {'+'.join(str(level) for level in self.levels)} ({self.mode})"

    def metadata(self) -> dict[str, int | str]:
        replica = (lambda change: f"#{change.replica}=") if len(self.levels) > 1 else (lambda change: "")
        steps = " ".join(f"{c.seconds:.0f}s:{replica(c)}{c.level}({c.why})" for c in self.history)
        return {
            "llm_concurrency_mode": self.mode,
            "llm_concurrency": sum(self.levels),
            "llm_concurrency_most_in_flight": self.most_in_flight,
            "llm_concurrency_changes": self.changes,
            **({"llm_concurrency_history": steps} if steps else {}),
            **({"llm_concurrency_missed_wake_ups": self.missed_wake_ups} if self.missed_wake_ups else {}),
        }


class ReplicaPool:
    """Admits requests in arrival order to the replica with the most room under its limit, and adapts the limits
    from what comes back. `maximum` bounds the requests in flight over all replicas; `adaptive=False` pins every
    replica at its share of `maximum`."""

    def __init__(self, replicas: int, maximum: int, adaptive: bool = True) -> None:
        share = max(1, maximum // replicas)
        self.limits = [ReplicaLimit(share) if adaptive else ReplicaLimit(share, limit=share) for _ in range(replicas)]
        self.adaptive = adaptive
        self.maximum = maximum
        self.log = ConcurrencyLog("adaptive" if adaptive else "fixed", [limit.level for limit in self.limits])
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._started = time.monotonic()
        self._wake_at: asyncio.TimerHandle | None = None
        self._recheck_at: asyncio.TimerHandle | None = None  # `_recheck`, while requests wait

    async def acquire(self) -> int:
        """Wait for room at a replica (first come, first served); returns the replica's index."""
        if not self._waiters and (index := self._room()) is not None:
            return self._take(index)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._admit()  # nothing in flight may release: held back by a Retry-After, it must set its own wake-up
        if self._recheck_at is None:
            self._recheck_at = asyncio.get_running_loop().call_later(RECHECK_S, self._recheck)
        try:
            return await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self.release(waiter.result())  # admitted, then cancelled: give the room back
            elif waiter in self._waiters:  # else already dropped by `_admit`
                self._waiters.remove(waiter)
            raise

    def release(self, index: int, sent_at: float | None = None) -> None:
        """A request to replica `index` ended; `sent_at` (monotonic) when it was sent, if it was answered."""
        limit = self.limits[index]
        if sent_at is not None and self.adaptive and limit.completed(sent_at, time.monotonic()):
            self._record(index, "latency")
        limit.in_flight -= 1
        self.log.in_flight -= 1
        self._admit()

    def overloaded(self, index: int, status: int, retry_after_s: float, sent_at: float) -> None:
        """Replica `index` answered 429/503 to a request sent at `sent_at` (still held: release it, then acquire
        again)."""
        limit, now = self.limits[index], time.monotonic()
        limit.resume_at = max(limit.resume_at, now + retry_after_s)  # a pinned level waits out Retry-After too
        if self.adaptive and limit.back_off(sent_at, now):
            self._record(index, str(status))

    def _room(self) -> int | None:
        now = time.monotonic()
        free = [
            (limit.level - limit.in_flight, index)
            for index, limit in enumerate(self.limits)
            if limit.in_flight < limit.level and limit.resume_at <= now
        ]
        return max(free)[1] if free and self.log.in_flight < self.maximum else None

    def _take(self, index: int) -> int:
        self.limits[index].in_flight += 1
        self.log.in_flight += 1
        self.log.most_in_flight = max(self.log.most_in_flight, self.log.in_flight)
        return index

    def _admit(self) -> None:
        while self._waiters and (index := self._room()) is not None:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._take(index))
        if self._waiters and self._wake_at is None:  # held back by a Retry-After: look again when it has passed
            resume = min(limit.resume_at for limit in self.limits)
            if resume > time.monotonic():
                self._wake_at = asyncio.get_running_loop().call_at(resume, self._woken)

    def _woken(self) -> None:
        self._wake_at = None
        self._admit()

    def _recheck(self) -> None:
        """A safety net, once a second while requests wait: a stage of the end-to-end test once waited for good with
        nothing in flight and no request admitted (a missed wake-up whose cause is not found yet). Look again, and
        count what that look admits (nothing, where every release and timer admits what it can)."""
        waiting = len(self._waiters)
        self._admit()
        self.log.missed_wake_ups += waiting - len(self._waiters)
        loop = asyncio.get_running_loop()
        self._recheck_at = loop.call_later(RECHECK_S, self._recheck) if self._waiters else None

    def _record(self, index: int, why: str) -> None:
        level = self.limits[index].level
        self.log.levels[index] = level
        self.log.changes += 1
        self.log.history.append(Change(time.monotonic() - self._started, index, level, why))
