"""The chat page of `raft-assets serve` in a browser: headless Chromium (Debian's `chromium`, driven by Playwright)
asks with the keyboard, sees the streamed answer apart from its reasoning, the source links and a refusal.

The service answers through the OpenAI-compatible test server, which quotes the retrieved document that answers
(the tiny checkpoint's untrained text would show nothing worth looking at). Set RAFT_UPDATE_SCREENSHOTS=1 to write
the page to docs/images/chatbot.png for the README.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from raft_assets.contracts.raft_format import REFUSAL_ANSWER
from raft_assets_tests.browser import NEEDS_CHROMIUM, chromium_page
from raft_assets_tests.conftest import REPO
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message
from raft_assets_tests.test_answering import build_project
from raft_assets_tests.test_chat_cli import FSDP_SENTENCE, quoting_responder
from raft_assets_tests.test_serve import FSDP_QUESTION, serving

SCREENSHOT = REPO / "docs" / "images" / "chatbot.png"

pytestmark = [NEEDS_CHROMIUM, pytest.mark.browser]


def responder(body: dict[str, Any]) -> str:
    """A refusal for the weather, which no document is about; otherwise a quote from the document that answers."""
    if "weather" in last_user_message(body).split("\n", 1)[0]:
        return f"None of the documents is about the weather.\n<ANSWER>: {REFUSAL_ANSWER}"
    return quoting_responder(body)


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory):
    root = build_project(tmp_path_factory.mktemp("serve_page"))
    with (
        OpenAITestServer(responder, stream_chunks=24) as upstream,
        serving(root, "--backend", upstream.base_url, "--model", "test-model", "--top-k", "3") as (url, app),
    ):
        yield url


@pytest.fixture
def page():
    with chromium_page(1100, 760) as page:
        yield page


def test_the_page_streams_an_answer_with_its_reasoning_apart_and_links_its_sources(
    service_url: str, page: Page, tmp_path: Path
):
    page.goto(service_url)
    question = page.get_by_label("Your question")
    expect(question).to_be_focused()
    expect(page.locator("#about")).to_contain_text("3 retrieved per question")  # from /health
    question.fill(FSDP_QUESTION)
    question.press("Enter")  # Enter sends

    reply = page.get_by_role("article", name="Answer")
    expect(reply.locator(".answer")).to_have_text(FSDP_SENTENCE)
    expect(reply.locator(".answer")).to_have_attribute("aria-live", "polite")
    expect(question).to_be_focused()  # ready for the next question
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    reasoning = reply.locator("details")
    expect(reasoning).not_to_have_attribute("open", "")  # folded once the answer is there
    reasoning.locator("summary").click()
    expect(reasoning.locator("q")).to_have_text(FSDP_SENTENCE)  # the quote, marked in the reasoning
    expect(reasoning).not_to_contain_text("##begin_quote##")
    sources = reply.get_by_role("region", name="Sources")
    link = sources.get_by_role("link", name="FSDP tutorial")
    expect(link).to_have_attribute("href", "https://pytorch.org/tutorials/fsdp.html")
    expect(sources.get_by_role("listitem").filter(has_text="FSDP tutorial")).to_contain_text(
        "quoted 1×"
    )  # the FSDP tutorial's chunks, one item

    page.screenshot(path=tmp_path / "chatbot.png", full_page=False)
    if os.environ.get("RAFT_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "chatbot.png", SCREENSHOT)

    question.fill("What will the weather be tomorrow?")
    page.get_by_role("button", name="Send").click()
    refusal = page.get_by_role("article", name="Answer").nth(1)
    expect(refusal.locator(".badge")).to_have_text("No answer in the documents")
    expect(refusal).to_have_class("reply refusal")
    expect(refusal.locator(".answer")).to_have_text(REFUSAL_ANSWER)
