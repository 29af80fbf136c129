"""Asking a model for a reply that parses: the same request again, with a new seed, until one does.

A `Replier` is what answers: an endpoint's `ChatClient`, or a `StandIn` with the same interface (the extractive
generator, the heuristic curator). An `Outcome` is what an item ends as: its parsed value, or the status and reason it has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from raft_assets.contracts.prompts import Prompt
from raft_assets.llm.client import ChatReply, Plan, RequestFailed, Usage

T = TypeVar("T")


class Replier(Protocol):
    """What generates replies: an endpoint's ChatClient, or a stand-in (the extractive generator, the heuristic
    curator)."""

    model: str
    usage: Usage
    stand_in: str | None  # what a stand-in is and why it runs instead of a model; None for an endpoint

    def plan(self, prompt: Prompt, batch: list[dict[str, Any]]) -> Plan: ...

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply: ...


class StandIn:
    """A model-free Replier for offline runs: it sends nothing and pays nothing. A subclass names its `model`, says
    what it is in `stand_in` (logged and kept in the metadata) and writes the replies (`reply`)."""

    model: str
    stand_in: str

    def __init__(self) -> None:
        self.usage = Usage()  # stays zero

    def plan(self, prompt: Prompt, batch: list[dict[str, Any]]) -> Plan:
        return Plan(len(batch), 0, 0)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    status: str
    value: T | None = None
    text: str | None = None  # the last reply
    error: str | None = None
    attempts: int = 0


def attempt_params(prompt: Prompt, attempt: int) -> dict[str, Any]:
    """The prompt's sampling parameters; a retry adds a seed and temperature so it is a new request."""
    if attempt == 0:
        return dict(prompt.params)
    return {**prompt.params, "temperature": max(float(prompt.params.get("temperature", 0.0)), 0.7), "seed": attempt}


async def ask(
    backend: Replier, prompt: Prompt, values: dict[str, Any], parse: Callable[[str], T | None], max_attempts: int
) -> Outcome[T]:
    text = None
    for attempt in range(max_attempts):
        try:
            reply = await backend.reply(prompt, values, attempt_params(prompt, attempt))
        except RequestFailed as failure:
            return Outcome(failure.status, text=text, error=str(failure), attempts=attempt + 1)
        text = reply.text
        value = parse(text)
        if value is not None:
            return Outcome("ok", value=value, text=text, attempts=attempt + 1)
    shown = (text or "").strip()[:200] or "(empty reply)"
    return Outcome(
        "parse_error",
        text=text,
        error=f"no usable reply in {max_attempts} attempts; last: {shown}",
        attempts=max_attempts,
    )
