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
    active: int = 0  # requests holding a capacity slot now
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
    retry_after_s: Retry-After on 429/503. hang_s: how long a `timeout` fault hangs before closing.
    fail_first_n: the first N attempts of every distinct request fail with `fail_first_status`.
    keep_bodies: record chat request bodies in stats. stream_chunks: content pieces per streamed reply.
    hold_after: once this many replies completed, further chat requests wait without an answer until
    release() or stop(): a client killed then has every completed reply in hand and none half-done.
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
                status_counts=Counter(s.status_counts),
                fingerprints=Counter(s.fingerprints),
                completed_fingerprints=Counter(s.completed_fingerprints),
                faults=Counter(s.faults),
                bodies=list(s.bodies),
                response_formats=Counter(s.response_formats),
            )

    def reset_stats(self) -> None:
        """Zeroes the counters, attempt numbering included (requests in flight keep their slot count)."""
        with self._lock:
            self._stats = ServerStats(active=self._stats.active)

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

        if self.hold_after is not None and self._stats.completed >= self.hold_after:
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
            with self._lock:
                stats = self._stats
                stats.active += 1
                if stats.active > stats.max_concurrent:
                    stats.max_concurrent = stats.active
            try:
                if delay > 0:
                    await asyncio.sleep(delay)
            finally:
                with self._lock:
                    self._stats.active -= 1
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
    )
    with server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
