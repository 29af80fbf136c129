"""A loopback OpenAI-compatible chat server for tests and benchmarks: scripted replies, latency, capacity, faults.

One asyncio loop (aiohttp.web) in a background thread serves `GET /v1/models` and `POST /v1/chat/completions`
(plain and SSE streaming). Requests beyond `capacity` queue for a slot, like a GPU server's batch slots.

Faults are decided from a hash of (seed, request fingerprint, attempt), where attempt counts how many times this
exact body was seen before, so runs are reproducible and a retry of the same request can succeed.
HTTP/connection faults (`http_429`, `http_500`, `http_503`, `timeout`, `reset`, and `fail_first_n`) hit on
arrival, before queueing and latency; content faults (`no_answer_tag`, `bad_quote`, `empty`, `off_schema`) alter a
normal 200 reply. A request's `response_format` (structured output) reaches the responder with the rest of the body,
and the stats count it, as they count what a server that does not honour it (`off_schema`) replies instead. Run standalone with `python -m raft_assets_tests.openai_server --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any]], str]

HTTP_FAULTS = ("http_429", "http_500", "http_503", "timeout", "reset")
CONTENT_FAULTS = ("no_answer_tag", "bad_quote", "empty", "off_schema")
FAULTS = HTTP_FAULTS + CONTENT_FAULTS
BAD_QUOTE = "This sentence was invented by the test server and is not in the context."
OFF_SCHEMA = '{"note": "JSON that fits no schema the client asked for"}'  # a server ignoring response_format

_QUOTE = re.compile(r"(##begin_quote##)(.*?)(##end_quote##)", re.DOTALL)
_ANSWER_LINE = re.compile(r"^.*<ANSWER>:.*(?:\n|$)", re.MULTILINE)
_FAULT_STATUS = {"http_429": 429, "http_500": 500, "http_503": 503}
_ERROR_SHAPE = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
STATS_PATH = "/v1/test-server/stats"  # GET: the scalar stats as JSON (see `_stats_json`)
_RESET_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def fingerprint(body: Mapping[str, Any]) -> str:
    """A short hash of a request body, keys sorted: equal bodies have equal fingerprints."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def count_tokens(text: str) -> int:
    """Approximate token count: characters / 4, rounded up (deterministic)."""
    return (len(text) + 3) // 4


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of `{"type": "text", "text": ...}` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def last_user_message(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def echo_responder(body: dict[str, Any]) -> str:
    """The default responder: echoes the last user message."""
    return "echo: " + last_user_message(body)


@dataclass
class ServerStats:
    """Counters for assertions; `OpenAITestServer.stats` returns a copy."""

    requests: int = 0  # every HTTP request received, any endpoint, any outcome
    model_listings: int = 0  # GET /v1/models answered (clients check the endpoint with it)
    status_counts: Counter[int] = field(default_factory=Counter)  # HTTP status -> responses sent
    fingerprints: Counter[str] = field(default_factory=Counter)  # chat request fingerprint -> times seen
    faults: Counter[str] = field(default_factory=Counter)  # fault name (or "fail_first") -> times injected
    completed: int = 0  # chat completions answered 200 (plain or streamed)
    completed_fingerprints: Counter[str] = field(default_factory=Counter)  # fingerprint -> 200 replies sent
    completed_at: list[float] = field(default_factory=list)  # time.monotonic() of each 200 reply, in order
    active: int = 0  # requests holding a capacity slot now
    busy_slot_seconds: float = 0.0  # active integrated over time: over an interval, divided by it, the mean busy slots
    rate_limited: int = 0  # chat requests answered 429 by the requests-per-minute limit
    max_concurrent: int = 0  # most requests holding slots at once
    prompt_tokens: int = 0  # summed over 200 replies
    completion_tokens: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)  # chat request bodies, when keep_bodies
    response_formats: Counter[str] = field(default_factory=Counter)  # chat requests by response_format: its json
    # schema's name, or its type ("json_object", "text"); requests without one are not counted


class OpenAITestServer:
    """An OpenAI-compatible chat server on 127.0.0.1 in a background thread; use `with` or start()/stop().

    responder: request JSON -> assistant content; runs on the server loop, so keep it fast.
    models: names served; other models get 404. api_key: when set, requests need `Authorization: Bearer <key>`.
    latency_s (+ deterministic jitter in [0, jitter_s)): asyncio.sleep per request while holding a slot.
    capacity: requests processed at once (None: unbounded); the rest queue.
    faults: fault name -> probability (see FAULTS); HTTP_FAULTS sum to <= 1, CONTENT_FAULTS too.
    requests_per_minute: a rate limit on chat requests (a token bucket holding one second's worth): a request
    beyond it is answered 429 with the Retry-After of the next free token, before queueing, as cloud APIs do.
    retry_after_s: Retry-After on injected 429/503. hang_s: how long a `timeout` fault hangs before closing.
    fail_first_n: the first N attempts of every distinct request fail with `fail_first_status`.
    keep_bodies: record chat request bodies in stats. stream_chunks: content pieces per streamed reply.
    hold_after: once this many chat requests were let through, further ones wait without an answer until
    release() or stop(). Counting requests let through, not replies, makes the hold exact: when this many
    replies completed, no other reply can complete, so a client killed then has none half-done.
    batch_latency_s, batch_failed_share: how long a Batch API batch takes and the share of its lines that fail
    (`BatchEndpoints`; `batch_stats` counts them); batch_latency_s None: no Batch API (404), as vLLM's server.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        models: Iterable[str] = ("test-model",),
        api_key: str | None = None,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        capacity: int | None = None,
        faults: Mapping[str, float] | None = None,
        seed: int = 0,
        retry_after_s: float = 0.1,
        hang_s: float = 30.0,
        fail_first_n: int = 0,
        fail_first_status: int = 500,
        keep_bodies: bool = False,
        stream_chunks: int = 4,
        hold_after: int | None = None,
        port: int = 0,
        requests_per_minute: float | None = None,
        batch_latency_s: float | None = 0.0,
        batch_failed_share: float = 0.0,
    ) -> None:
        self.responder: Responder = responder or echo_responder
        self.models = list(models)
        self.api_key = api_key
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be >= 1 (or None for unbounded)")
        self.capacity = capacity
        self.faults = dict(faults or {})
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        for group in (HTTP_FAULTS, CONTENT_FAULTS):
            if sum(self.faults.get(name, 0.0) for name in group) > 1.0:
                raise ValueError(f"probabilities of {group} sum to more than 1")
        self.seed = seed
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.fail_first_n = fail_first_n
        self.fail_first_status = fail_first_status
        self.keep_bodies = keep_bodies
        self.stream_chunks = max(1, stream_chunks)
        self.hold_after = hold_after
        self.requests_per_minute = requests_per_minute
        self._tokens = max(1.0, (requests_per_minute or 0) / 60)  # the bucket starts full
        self._tokens_at = time.monotonic()
        self._busy_since = time.monotonic()  # when `active` last changed (for busy_slot_seconds)
        self._released: asyncio.Event | None = None
        self._requested_port = port
        self.port = 0
        self._stats = ServerStats()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._startup_error: BaseException | None = None
        self.batches = BatchEndpoints(self, batch_latency_s, batch_failed_share)

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAITestServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name=f"openai-test-server:{self.port}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("test server failed to start") from self._startup_error
        return self

    def release(self) -> None:
        """Ends `hold_after`: held requests and later ones are served."""
        self.hold_after = None
        if self._loop is not None and self._released is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._released.set)

    def stop(self) -> None:
        """Stops serving (hanging requests end at once) and joins the thread; idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as error:  # noqa: BLE001 (reported by start())
            self._startup_error = error
        finally:
            sock.close()
            ready.set()
            loop.close()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._released = asyncio.Event()
        self._slots = asyncio.Semaphore(self.capacity) if self.capacity is not None else None
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get(STATS_PATH, self._stats_json)
        self.batches.add_routes(app)
        app.router.add_route("*", "/{path:.*}", self._unknown)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, backlog=4096).start()
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- stats ---------------------------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """A consistent copy of the counters."""
        with self._lock:
            s = self._stats
            return replace(
                s,
                busy_slot_seconds=s.busy_slot_seconds + s.active * (time.monotonic() - self._busy_since),
                status_counts=Counter(s.status_counts),
                fingerprints=Counter(s.fingerprints),
                completed_fingerprints=Counter(s.completed_fingerprints),
                completed_at=list(s.completed_at),
                faults=Counter(s.faults),
                bodies=list(s.bodies),
                response_formats=Counter(s.response_formats),
            )

    @property
    def batch_stats(self) -> BatchStats:
        """A copy of the Batch API's counters."""
        return self.batches.stats

    def reset_stats(self) -> None:
        """Zeroes the counters, attempt numbering included (requests in flight keep their slot count)."""
        with self._lock:
            self._stats = ServerStats(active=self._stats.active)
            self._busy_since = time.monotonic()

    # -- fault decisions -----------------------------------------------------------------------------------

    def _draws(self, fp: str, attempt: int) -> tuple[float, float, float]:
        digest = hashlib.blake2b(f"{self.seed}:{fp}:{attempt}".encode(), digest_size=24).digest()
        a, b, c = struct.unpack("<QQQ", digest)
        return a / 2.0**64, b / 2.0**64, c / 2.0**64

    def _pick(self, group: tuple[str, ...], draw: float) -> str | None:
        total = 0.0
        for name in group:
            total += self.faults.get(name, 0.0)
            if draw < total:
                return name
        return None

    def planned_fault(self, body: Mapping[str, Any], attempt: int) -> str | None:
        """The fault this server injects into `body`'s attempt number `attempt` (0 = first), or None."""
        if attempt < self.fail_first_n:
            return "fail_first"
        http_draw, content_draw, _ = self._draws(fingerprint(body), attempt)
        return self._pick(HTTP_FAULTS, http_draw) or self._pick(CONTENT_FAULTS, content_draw)

    # -- handlers ------------------------------------------------------------------------------------------

    def _count(self, status: int) -> None:
        with self._lock:
            self._stats.status_counts[status] += 1

    def _error(
        self, status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
    ) -> web.Response:
        kind, default_code = _ERROR_SHAPE.get(status, ("server_error", None))
        code = code or default_code
        payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        self._count(status)
        return web.Response(status=status, text=json.dumps(payload), content_type="application/json", headers=headers)

    def _admit(self, request: web.Request) -> web.Response | None:
        """Counts the request and checks the API key; returns a 401 response when it is wrong."""
        with self._lock:
            self._stats.requests += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.")
        return None

    def _model_json(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "openai-test-server"}

    async def _models(self, request: web.Request) -> web.Response:
        if denied := self._admit(request):
            return denied
        with self._lock:
            self._stats.model_listings += 1
        self._count(200)
        return web.json_response({"object": "list", "data": [self._model_json(name) for name in self.models]})

    async def _model(self, request: web.Request) -> web.Response:
        if denied := self._admit(request):
            return denied
        name = request.match_info["model"]
        if name not in self.models:
            return self._error(404, f"The model `{name}` does not exist.")
        self._count(200)
        return web.json_response(self._model_json(name))

    async def _stats_json(self, request: web.Request) -> web.Response:
        """The scalar counters, for a client in another process (a benchmark); not counted as a request."""
        stats = self.stats
        scalars = {name: value for name, value in vars(stats).items() if isinstance(value, int | float)}
        return web.json_response({**scalars, "capacity": self.capacity, "monotonic": time.monotonic()})

    async def _unknown(self, request: web.Request) -> web.Response:
        if denied := self._admit(request):
            return denied
        return self._error(404, f"Unknown endpoint: {request.method} {request.path}", code="unknown_url")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if denied := self._admit(request):
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "`messages` is required and must be a list.")
        model = body.get("model")
        if model not in self.models:
            return self._error(404, f"The model `{model}` does not exist.")

        if self.requests_per_minute is not None and (wait_s := self._over_rate()) is not None:
            with self._lock:
                self._stats.rate_limited += 1
            message = f"Rate limit of {self.requests_per_minute:g} requests per minute reached."
            return self._error(429, message, {"Retry-After": f"{wait_s:.3f}"})
        if self.hold_after is not None and sum(self._stats.fingerprints.values()) >= self.hold_after:
            await self._held()
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError  # the client went away while held: nothing to answer
        fp = fingerprint(body)
        with self._lock:
            attempt = self._stats.fingerprints[fp]
            self._stats.fingerprints[fp] = attempt + 1
            if self.keep_bodies:
                self._stats.bodies.append(body)
            if isinstance(requested := body.get("response_format"), dict):
                self._stats.response_formats[response_format_name(requested)] += 1
        fault = self.planned_fault(body, attempt) if (self.faults or self.fail_first_n) else None
        if fault is not None:
            with self._lock:
                self._stats.faults[fault] += 1
            if fault not in CONTENT_FAULTS:
                return await self._http_fault(request, fault)

        await self._process(fp, attempt)
        try:
            content = self.responder(body)
            if not isinstance(content, str):
                raise TypeError(f"the responder returned {type(content).__name__}, not str")
        except Exception as error:  # noqa: BLE001 (a responder bug becomes a 500 the test can see)
            return self._error(500, f"responder failed: {error!r}")
        content = _apply_content_fault(content, fault)

        prompt_tokens = sum(count_tokens(message_text(m)) for m in body["messages"] if isinstance(m, dict))
        completion_tokens = count_tokens(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        with self._lock:
            self._stats.completed += 1
            self._stats.completed_fingerprints[fp] += 1
            self._stats.completed_at.append(time.monotonic())
            self._stats.prompt_tokens += prompt_tokens
            self._stats.completion_tokens += completion_tokens
            self._stats.status_counts[200] += 1
        head = {"id": f"chatcmpl-{next(self._ids)}", "created": int(time.time()), "model": model}
        if body.get("stream"):
            return await self._stream(request, head, content, usage, body)
        reply = {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
        return web.Response(text=json.dumps(reply), content_type="application/json")

    def _over_rate(self) -> float | None:
        """Takes a token of the requests-per-minute bucket; None when there was one, else seconds until the next."""
        assert self.requests_per_minute is not None
        rate, now = self.requests_per_minute / 60, time.monotonic()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / rate

    def _occupy(self, change: int) -> None:
        """Adds `change` to the slots busy, integrating the time the old count lasted."""
        now = time.monotonic()
        with self._lock:
            stats = self._stats
            stats.busy_slot_seconds += stats.active * (now - self._busy_since)
            self._busy_since = now
            stats.active += change
            stats.max_concurrent = max(stats.max_concurrent, stats.active)

    async def _held(self) -> None:
        """Waits until release() or stop()."""
        assert self._released is not None and self._stopping is not None
        waits = [asyncio.ensure_future(self._released.wait()), asyncio.ensure_future(self._stopping.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()

    async def _process(self, fp: str, attempt: int) -> None:
        """Holds a capacity slot (queueing for one) for the request's latency."""
        delay = self.latency_s
        if self.jitter_s:
            delay += self.jitter_s * self._draws(fp, attempt)[2]
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        try:
            self._occupy(+1)
            try:
                if delay > 0:
                    await asyncio.sleep(delay)
            finally:
                self._occupy(-1)
        finally:
            if slots is not None:
                slots.release()

    async def _http_fault(self, request: web.Request, fault: str) -> web.StreamResponse:
        if fault == "fail_first":
            status = self.fail_first_status
        elif fault in _FAULT_STATUS:
            status = _FAULT_STATUS[fault]
        else:  # timeout or reset: no response at all
            if fault == "timeout":
                assert self._stopping is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.hang_s)
            _drop_connection(request, reset=fault == "reset")
            raise asyncio.CancelledError  # aiohttp then writes nothing on the dropped connection
        headers = {"Retry-After": f"{self.retry_after_s:g}"} if status in (429, 503) else None
        return self._error(status, f"injected fault: {fault}", headers)

    async def _stream(
        self, request: web.Request, head: dict[str, Any], content: str, usage: dict[str, int], body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {**head, "object": "chat.completion.chunk"}

        def event(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            chunk = {
                **head,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }
            if include_usage:
                chunk["usage"] = None
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        step = max(1, -(-len(content) // self.stream_chunks))
        events = [event({"role": "assistant", "content": ""}, None)]
        events += [event({"content": content[i : i + step]}, None) for i in range(0, len(content), step)]
        events.append(event({}, "stop"))
        if include_usage:
            events.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        for data in events:
            await response.write(data)
        await response.write_eof()
        return response


def response_format_name(response_format: Mapping[str, Any]) -> str:
    """A request's `response_format` as the stats count it: the JSON schema's name, or the format's type."""
    schema = response_format.get("json_schema")
    return str(schema.get("name")) if isinstance(schema, dict) else str(response_format.get("type"))


def _apply_content_fault(content: str, fault: str | None) -> str:
    if fault == "empty":
        return ""
    if fault == "off_schema":
        return OFF_SCHEMA
    if fault == "no_answer_tag":
        return _ANSWER_LINE.sub("", content)
    if fault == "bad_quote":
        return _QUOTE.sub(lambda m: f"{m[1]}{BAD_QUOTE}{m[3]}", content)
    return content


def _drop_connection(request: web.Request, *, reset: bool) -> None:
    """Closes the connection without a response; with `reset`, sends a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
    transport.abort()


# -- Batch API: /v1/files and /v1/batches ---------------------------------------------------------------------


@dataclass
class BatchStats:
    """Counters of the Batch API endpoints; `OpenAITestServer.batch_stats` returns a copy."""

    files_uploaded: int = 0
    batches_created: int = 0
    lines: int = 0  # request lines in the batches created
    lines_answered: int = 0  # lines answered 200 (in an output file)
    lines_failed: int = 0  # lines answered with an error (in an error file)
    answered_fingerprints: Counter[str] = field(default_factory=Counter)  # a line's body fingerprint -> 200 replies


BATCH_ENDPOINT = "/v1/chat/completions"  # the one endpoint a batch's lines may ask


class BatchEndpoints:
    """The OpenAI Batch API over a test server's responder: upload a JSONL file (`POST /v1/files`, purpose "batch"),
    create a batch of it (`POST /v1/batches`), poll it (`GET /v1/batches/{id}`), download its output and error files
    (`GET /v1/files/{id}/content`).

    A batch is "validating" when created and moves on as it is polled: "in_progress" until `latency_s` has passed
    since it was created (read at each poll, so a test may shorten it), then "finalizing" (its lines answered, each
    by the responder) and "completed". A share `failed_share` of the lines, drawn from a hash of the server's seed
    and the line's body, is answered 500 in the error file instead.
    """

    def __init__(self, server: OpenAITestServer, latency_s: float | None, failed_share: float) -> None:
        self.server = server
        self.latency_s = latency_s
        self.failed_share = failed_share
        self._files: dict[str, dict[str, Any]] = {}  # id -> file object, with its bytes under "content"
        self._batches: dict[str, dict[str, Any]] = {}  # id -> batch object, with its lines under "lines"
        self._stats = BatchStats()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        """The routes, unless `latency_s` is None: a server without the Batch API."""
        if self.latency_s is None:
            return
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}", self._file)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)

    @property
    def stats(self) -> BatchStats:
        with self._lock:
            return replace(self._stats, answered_fingerprints=Counter(self._stats.answered_fingerprints))

    def _new_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        file = {
            "id": f"file-{next(self._ids)}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self._files[file["id"]] = {**file, "content": content}
        return file

    @staticmethod
    def _shown(record: dict[str, Any]) -> dict[str, Any]:
        """A file or batch object as the API shows it: without the content, lines and clock kept beside it."""
        return {key: value for key, value in record.items() if key not in ("content", "lines", "started")}

    async def _upload(self, request: web.Request) -> web.Response:
        if denied := self.server._admit(request):
            return denied
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or purpose != "batch":
            return self.server._error(400, "Expected a multipart `file` and `purpose` batch.")
        file = self._new_file(upload.filename, "batch", upload.file.read())
        with self._lock:
            self._stats.files_uploaded += 1
        self.server._count(200)
        return web.json_response(file)

    async def _file(self, request: web.Request) -> web.Response:
        if denied := self.server._admit(request):
            return denied
        if (file := self._files.get(request.match_info["file_id"])) is None:
            return self.server._error(404, f"No such file: {request.match_info['file_id']}")
        self.server._count(200)
        return web.json_response(self._shown(file))

    async def _file_content(self, request: web.Request) -> web.Response:
        if denied := self.server._admit(request):
            return denied
        if (file := self._files.get(request.match_info["file_id"])) is None:
            return self.server._error(404, f"No such file: {request.match_info['file_id']}")
        self.server._count(200)
        return web.Response(body=file["content"], content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        if denied := self.server._admit(request):
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self.server._error(400, "The request body is not valid JSON.")
        file = self._files.get(body.get("input_file_id", ""))
        if file is None or body.get("endpoint") != BATCH_ENDPOINT or body.get("completion_window") != "24h":
            return self.server._error(400, f"Expected an uploaded input_file_id, endpoint {BATCH_ENDPOINT}, 24h.")
        lines, problem = self._parse_lines(file["content"])
        if problem:
            return self.server._error(400, problem)
        batch = {
            "id": f"batch_{next(self._ids)}",
            "object": "batch",
            "endpoint": BATCH_ENDPOINT,
            "input_file_id": file["id"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "lines": lines,
            "started": time.monotonic(),
        }
        self._batches[batch["id"]] = batch
        with self._lock:
            self._stats.batches_created += 1
            self._stats.lines += len(lines)
        self.server._count(200)
        return web.json_response(self._shown(batch))

    def _parse_lines(self, content: bytes) -> tuple[list[dict[str, Any]], str | None]:
        """The request lines of an input file, or why the file is refused."""
        try:
            lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        except ValueError as error:
            return [], f"The input file is not JSONL: {error}"
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids) or None in ids:
            return [], "Every line needs a custom_id, unique in the file."
        for line in lines:
            if line.get("method") != "POST" or line.get("url") != BATCH_ENDPOINT:
                return [], f"Line {line['custom_id']}: expected method POST and url {BATCH_ENDPOINT}."
            if (line.get("body") or {}).get("model") not in self.server.models:
                return [], f"Line {line['custom_id']}: the model is not served."
        return lines, None

    async def _retrieve(self, request: web.Request) -> web.Response:
        if denied := self.server._admit(request):
            return denied
        if (batch := self._batches.get(request.match_info["batch_id"])) is None:
            return self.server._error(404, f"No such batch: {request.match_info['batch_id']}")
        if batch["status"] == "finalizing":
            batch.update(status="completed", completed_at=int(time.time()))
        elif time.monotonic() - batch["started"] >= (self.latency_s or 0.0):
            self._answer(batch)
        else:
            batch.update(status="in_progress", in_progress_at=batch.get("in_progress_at") or int(time.time()))
        self.server._count(200)
        return web.json_response(self._shown(batch))

    def _answer(self, batch: dict[str, Any]) -> None:
        """Answers every line, into an output file (200) and an error file (failed lines); status finalizing."""
        answered, failed = [], []
        for number, line in enumerate(batch["lines"]):
            fp = fingerprint(line["body"])
            result = self._line_response(line["body"], fp)
            record = {"id": f"batch_req_{batch['id']}_{number}", "custom_id": line["custom_id"], "error": None}
            (answered if result["status_code"] == 200 else failed).append({**record, "response": result})
            if result["status_code"] == 200:
                with self._lock:
                    self._stats.answered_fingerprints[fp] += 1
        with self._lock:
            self._stats.lines_answered += len(answered)
            self._stats.lines_failed += len(failed)
        for key, lines in (("output_file_id", answered), ("error_file_id", failed)):
            if lines:
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                batch[key] = self._new_file(f"{batch['id']}_{key}.jsonl", "batch_output", content)["id"]
        batch["request_counts"] = {"total": len(batch["lines"]), "completed": len(answered), "failed": len(failed)}
        batch.update(status="finalizing", finalizing_at=int(time.time()))

    def _line_response(self, body: dict[str, Any], fp: str) -> dict[str, Any]:
        """A line's `response`: the chat completion the responder writes, or a 500 for a failed line."""
        draw = hashlib.blake2b(f"{self.server.seed}:batch:{fp}".encode(), digest_size=8).digest()
        try:
            if int.from_bytes(draw) / 2.0**64 < self.failed_share:
                raise RuntimeError("injected fault: batch line failed")
            content = self.server.responder(body)
        except Exception as error:  # noqa: BLE001 (a failed line, as the error file reports it)
            error_body = {"error": {"message": str(error), "type": "server_error", "param": None, "code": None}}
            return {"status_code": 500, "request_id": fp, "body": error_body}
        prompt_tokens = sum(count_tokens(message_text(m)) for m in body["messages"] if isinstance(m, dict))
        completion = {
            "id": f"chatcmpl-{fp}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": count_tokens(content),
                "total_tokens": prompt_tokens + count_tokens(content),
            },
        }
        return {"status_code": 200, "request_id": fp, "body": completion}


def load_responder(spec: str) -> Responder:
    """`package.module:function`, e.g. `raft_assets_tests.raft_model:raft_responder`."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    """Serves until interrupted or terminated, printing the base URL first (for a server in another process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra seconds, deterministic, in [0, jitter)")
    parser.add_argument("--capacity", type=int, default=None, help="requests processed at once; the rest queue")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", action="append", dest="models", help="repeatable; default test-model")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=P", help=f"repeatable; NAME in {FAULTS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=0.1)
    parser.add_argument("--hang", type=float, default=30.0)
    parser.add_argument("--fail-first-n", type=int, default=0)
    parser.add_argument("--requests-per-minute", type=float, default=None, help="429 beyond it, with Retry-After")
    parser.add_argument(
        "--responder", default=None, metavar="MODULE:FUNCTION", help="what writes the replies; default: echo"
    )
    args = parser.parse_args(argv)
    faults = {name: float(p) for name, _, p in (item.partition("=") for item in args.fault)}
    server = OpenAITestServer(
        load_responder(args.responder) if args.responder else None,
        models=args.models or ["test-model"],
        api_key=args.api_key,
        latency_s=args.latency,
        jitter_s=args.jitter,
        capacity=args.capacity,
        faults=faults,
        seed=args.seed,
        retry_after_s=args.retry_after,
        hang_s=args.hang,
        fail_first_n=args.fail_first_n,
        port=args.port,
        requests_per_minute=args.requests_per_minute,
    )
    with server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
