"""The curation rubric: what a rating is, the JSON schema the endpoint is asked to follow, and reading a reply.

The schema is derived from the pydantic model `Rating` and sent as `response_format` (OpenAI's structured output,
which vLLM's guided decoding honours), so what the endpoint is told and what a reply is checked against are one
definition. A reply that does not fit is asked again by `llm.asking.ask`, like generation's.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raft_assets.contracts.prompts import Prompt, load_prompts

# The problems a rater may name: code -> what it means (shown to the rater in the prompt).
REASONS = {
    "not_grounded": "the answer states something the chunk does not support, or quotes text that is not in it",
    "incorrect": "the answer is wrong, or does not answer the question",
    "incomplete": "the answer leaves out part of what the question asks",
    "not_self_contained": 'the question needs the chunk to be understood ("the passage", "this section", an unnamed it)',
    "not_search_like": "the question is not a query a user would type: vague, cut off, or not a question",
    "off_domain": "the question is about the site's navigation, search, headers, footers or legal boilerplate",
}
NEAR_DUPLICATE = "near_duplicate"  # added by curation, not the rater: a better-rated question says the same
SCHEMA_NAME = "question_rating"

ReasonCode = Literal[tuple(REASONS)]  # type: ignore[valid-type]


class Rating(BaseModel):
    """A rater's reply, as the endpoint must give it."""

    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=1, le=10, description="1 (useless) to 10 (excellent).")
    reasons: list[ReasonCode] = Field(description="The codes of the problems the pair has; empty when none.")
    comment: str = Field(description="One short sentence on the main problem, or an empty string.")


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": SCHEMA_NAME, "schema": Rating.model_json_schema(), "strict": True},
}


def curation_prompt() -> Prompt:
    """The `curation` prompt of prompts.yaml, its requests asking for `Rating`'s schema (part of every cache key)."""
    prompt = load_prompts()["curation"]
    return dataclasses.replace(prompt, params={**prompt.params, "response_format": RESPONSE_FORMAT})


def prompt_values(question: str, chunk: str, cot_answer: str) -> dict[str, Any]:
    """What the `curation` prompt is filled with for one question."""
    reasons = "\n".join(f"  - {code}: {meaning}" for code, meaning in REASONS.items())
    return {"question": question, "chunk": chunk, "cot_answer": cot_answer, "reasons": reasons}


def _json_text(reply: str) -> str:
    """The reply without a markdown code fence around it (```json ... ```), which some servers add."""
    text = reply.strip()
    if text.startswith("```") and text.endswith("```"):
        text = text.removeprefix("```json").removeprefix("```").removesuffix("```")
    return text.strip()


def parse_rating(reply: str) -> Rating | None:
    """The reply as a `Rating`, or None when it does not fit the schema (then it is asked again)."""
    try:
        return Rating.model_validate_json(_json_text(reply))
    except ValidationError:
        return None


def schema_problem(reply: str | None) -> str:
    """Why a reply does not fit the schema, in a line: what a `parse_error` row records."""
    if not reply or not reply.strip():
        return "an empty reply"
    try:
        json.loads(_json_text(reply))
    except ValueError as error:
        return f"not JSON ({error.msg} at character {error.pos})"
    try:
        Rating.model_validate_json(_json_text(reply))
    except ValidationError as error:
        return "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'reply'}: {problem['msg']}"
            for problem in error.errors()[:3]
        )
    return "it fits"
