"""The OpenAI chat completions wire format, as `raft-assets serve` speaks it: request validation, the error shape,
responses and stream chunks, and the service's description in `GET /v1/models`.

What the service adds to OpenAI's objects (`sources`, `truncation`, `refusal`; `raft` in a model entry) is in extra
fields that OpenAI clients ignore. Validation errors name the field and the limit, so a client can fix its request.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

API_KEY_VARIABLE = "RAFT_SERVE_API_KEY"  # the service's key: what it requires, and what a client of it sends
ROLES = {"system", "developer", "user", "assistant", "tool"}
SERVICE_FIELD = "raft"  # the service's own description in its model entry of `GET /v1/models`
MODELS_TIMEOUT_S = 10.0


class ApiError(Exception):
    """A request that gets an error reply: HTTP status and OpenAI's `{"error": {message, type, code}}`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def invalid(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code)


@dataclass(frozen=True)
class ChatRequest:
    """What the service takes from a chat request: the question (the last user message), streaming, answer length."""

    question: str
    stream: bool
    max_new_tokens: int


@dataclass(frozen=True)
class Limits:
    """The bounds a request is validated against."""

    model: str
    max_new_tokens: int  # the most a request may ask for, and what it gets when it asks for nothing
    max_question_chars: int


def parse_chat_request(raw: bytes, limits: Limits) -> ChatRequest:
    """The request, or ApiError 400 (404 for another model) saying what is wrong with it.

    Earlier turns are accepted and not used: the model was fine-tuned on one question with its documents.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(f"The body is not valid JSON: {error}.", "invalid_json") from error
    if not isinstance(body, dict):
        raise invalid("The body must be a JSON object.")
    model = body.get("model") or limits.model
    if model != limits.model:
        raise ApiError(
            404, f"The model {model!r} is not served here; this service serves {limits.model!r}.", "model_not_found"
        )
    return ChatRequest(
        question=question_of(body.get("messages"), limits.max_question_chars),
        stream=flag(body, "stream"),
        max_new_tokens=answer_length(body, limits.max_new_tokens),
    )


def question_of(messages: Any, max_chars: int) -> str:
    """The last user message's text, checked: every message well-formed, the question not empty nor over-long."""
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list of {role, content} objects.", "invalid_messages")
    texts = [message_text(message, index) for index, message in enumerate(messages)]
    users = [text for message, text in zip(messages, texts, strict=True) if message["role"] == "user"]
    if not users:
        raise invalid("'messages' has no user message: the question is the last user message.", "invalid_messages")
    question = users[-1].strip()
    if not question:
        raise invalid("The last user message is empty: ask a question.", "empty_message")
    if len(question) > max_chars:
        raise invalid(
            f"The last user message has {len(question)} characters; the most this service takes is {max_chars}.",
            "message_too_long",
        )
    return question


def message_text(message: Any, index: int) -> str:
    """A message's text: `content` a string or a list of `{"type": "text", "text": ...}` parts."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise invalid(f"messages[{index}] must be an object with a 'role' in {sorted(ROLES)}.", "invalid_messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    parts = content if isinstance(content, list) else []
    if parts and all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in parts):
        return "".join(part["text"] for part in parts)
    raise invalid(f"messages[{index}].content must be a string or a list of text parts.", "invalid_messages")


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise invalid(f"'{name}' must be true or false.")
    return value


def answer_length(body: dict[str, Any], most: int) -> int:
    """`max_completion_tokens`, else `max_tokens`, else the service's limit; at least 1, at most the limit."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return most
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise invalid(f"'{name}' must be a whole number from 1 to {most} (this service's limit).")
    return value


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def envelope(kind: str, answer_id: str, model: str, fingerprint: str) -> dict[str, Any]:
    """The fields every response and stream chunk starts with."""
    return {
        "id": answer_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
    }


def only_choice(**fields: Any) -> list[dict[str, Any]]:
    """`choices` with one choice (n is 1), its index first as OpenAI writes it."""
    return [dict(index=0, **fields)]  # noqa: C408 (the quoted word would be the index folder's name: layout.py's)


def stream_chunk(base: dict[str, Any], delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    return {**base, "choices": only_choice(delta=delta, finish_reason=finish_reason)}


def completion(base: dict[str, Any], text: str, finish_reason: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {**base, "choices": only_choice(message=message, finish_reason=finish_reason)}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` (or `data: [DONE]`) and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


@dataclass(frozen=True)
class ServiceInfo:
    """What a client (evaluation) needs to know about a running service: the model name to ask for, the documents it
    retrieves per question, and a fingerprint of what answers (weights, index, settings): a new deployment, a new
    fingerprint, so that answers cached for one deployment are never taken for another's."""

    model: str
    top_k: int
    fingerprint: str

    def model_entry(self) -> dict[str, Any]:
        """Its entry in `GET /v1/models`."""
        service = {"top_k": self.top_k, "fingerprint": self.fingerprint}
        return {"id": self.model, "object": "model", "created": 0, "owned_by": "raft-assets", SERVICE_FIELD: service}


def service_info(base_url: str, api_key: str | None = None) -> ServiceInfo:
    """The description of the `raft-assets serve` at `base_url` (ending in /v1); raises OSError when it does not
    answer and ValueError when what answers is not such a service."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=MODELS_TIMEOUT_S) as response:  # noqa: S310 (the configured URL)
        entries = json.load(response).get("data", [])
    served = [entry for entry in entries if isinstance(entry.get(SERVICE_FIELD), dict)]
    if not served:
        raise ValueError(f"{base_url} is not a `raft-assets serve` endpoint: no model entry has '{SERVICE_FIELD}'.")
    entry = served[0]
    return ServiceInfo(entry["id"], int(entry[SERVICE_FIELD]["top_k"]), str(entry[SERVICE_FIELD]["fingerprint"]))
