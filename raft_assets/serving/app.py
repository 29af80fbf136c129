"""The HTTP service (Starlette): `POST /v1/chat/completions` (streamed as server-sent events or not), `GET /v1/models`,
`GET /health` and the chat page at `/`.

Every `/v1` request needs `Authorization: Bearer <key>` when the service has a key (compared in constant time); the
page and `/health` do not (the page asks for the key when `/health` says one is needed). A request waits for one of
the bounded slots (`admission.py`); one line is logged per request, with its status, time and sizes, never the
question nor the answer.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from raft_assets.serving.admission import Admission
from raft_assets.serving.protocol import (
    ApiError,
    ChatRequest,
    Limits,
    completion,
    completion_id,
    envelope,
    parse_chat_request,
    sse,
    stream_chunk,
)
from raft_assets.serving.service import Prepared, RagService

log = logging.getLogger("raft_assets.serve")
PAGE = "page.html"


@dataclass(frozen=True)
class ServeOptions:
    """The service's bounds and key (None: no key)."""

    max_active: int = 16
    max_queued: int = 64
    max_question_chars: int = 4000
    max_new_tokens: int = 512
    api_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        """Bodies beyond this are refused before being read: room for the question and a conversation around it."""
        return 16 * self.max_question_chars + 65_536


class HeldResponse(StreamingResponse):
    """A streamed response that calls `on_close` when it is over, streamed to the end or not (a client gone)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class RequestLog:
    """ASGI middleware: one log line per HTTP request, once its response is over, with the fields the handler put
    in `request.state.log` (never the question nor the answer)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = fields

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            extra = "".join(f" {name}={value}" for name, value in fields.items())
            milliseconds = (time.monotonic() - started) * 1000
            log.info(f"{scope['method']} {scope['path']} {status[0] or 'aborted'} {milliseconds:.0f}ms{extra}")


def create_app(service: RagService, options: ServeOptions) -> Starlette:
    """The service's ASGI application."""
    admission = Admission(options.max_active, options.max_queued)
    limits = Limits(service.info.model, options.max_new_tokens, options.max_question_chars)
    page = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise ApiError(401, "A valid API key is needed: `Authorization: Bearer <key>`.", "invalid_api_key")

    async def home(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": service.info.model,
                "backend": service.generator.name,
                "top_k": service.info.top_k,
                "active": admission.admitted - admission.queued,
                "queued": admission.queued,
                "api_key_required": options.api_key is not None,
            }
        )

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [service.info.model_entry()]})

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        chat = parse_chat_request(await bounded_body(request, options.max_body_bytes), limits)
        ticket = admission.enter()
        handed_over = False
        try:
            await ticket.wait()
            prepared = await service.prepare(chat.question, chat.max_new_tokens)
            request.state.log.update(
                stream=chat.stream, documents=len(prepared.chunks), dropped=prepared.dropped, queued=admission.queued
            )
            if prepared.dropped:
                log.warning(f"truncated: {prepared.dropped} lowest-ranked documents left out to fit the context")
            if chat.stream:
                handed_over = True
                return HeldResponse(streamed(service, prepared, chat, request.state.log), ticket.release)
            return await answered(service, prepared, chat, request.state.log)
        finally:
            if not handed_over:
                ticket.release()

    async def api_error(request: Request, error: ApiError) -> Response:
        request.state.log["error"] = error.code
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("the request failed", exc_info=error)
        failure = ApiError(500, f"The service failed: {type(error).__name__}.", "internal_error")
        return JSONResponse(failure.body(), status_code=500)

    routes = [
        Route("/", home),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.generator.aclose()

    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, Exception: server_error}, lifespan=lifespan)
    app.add_middleware(RequestLog)
    app.state.service, app.state.options, app.state.admission = service, options, admission
    return app


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, read up to `limit` bytes: ApiError 413 beyond, before reading the rest."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"The body is over {limit} bytes.", "body_too_large")
    return bytes(body)


async def answered(service: RagService, prepared: Prepared, chat: ChatRequest, fields: dict[str, Any]) -> Response:
    base = envelope("chat.completion", completion_id(), service.info.model, service.info.fingerprint)
    pieces, finish = [], "stop"
    async for delta in service.answer(prepared, chat.max_new_tokens):
        pieces.append(delta.text)
        finish = delta.finish_reason or finish
    text = "".join(pieces)
    fields.update(characters=len(text), finish=finish)
    return JSONResponse({**completion(base, text, finish), **prepared.extras(text)})


async def streamed(
    service: RagService, prepared: Prepared, chat: ChatRequest, fields: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The answer as OpenAI stream chunks: the role, the text piece by piece, then the finish reason with the sources;
    an error after the first byte is an `error` event (the status is sent already), as OpenAI's streams do."""
    base = envelope("chat.completion.chunk", completion_id(), service.info.model, service.info.fingerprint)
    yield sse(stream_chunk(base, {"role": "assistant", "content": ""}))
    pieces, finish = [], "stop"
    started = time.monotonic()
    try:
        async for delta in service.answer(prepared, chat.max_new_tokens):
            if delta.text:
                if not pieces:
                    fields["first_token_ms"] = round((time.monotonic() - started) * 1000)
                pieces.append(delta.text)
                yield sse(stream_chunk(base, {"content": delta.text}))
            finish = delta.finish_reason or finish
    except ApiError as error:
        fields["error"] = error.code
        yield sse(error.body())
        return
    text = "".join(pieces)
    fields.update(characters=len(text), finish=finish)
    yield sse({**stream_chunk(base, {}, finish), **prepared.extras(text)})
    yield sse("[DONE]")
