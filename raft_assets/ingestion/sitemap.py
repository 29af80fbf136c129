"""Loading the pages a sitemap lists, with LangChain's `SitemapLoader`, politely and with per-page errors.

LangChain parses the sitemap (nested sitemaps, URL patterns) and drives the concurrent fetch. This
module replaces its page fetch, which follows redirects anywhere, keeps error pages as content and
turns failures into empty pages, with one that
- fetches only http(s) pages on the allowed hosts, after redirects too;
- starts at most `requests_per_second` requests per second;
- retries timeouts, dropped connections, 429 and 5xx a bounded number of times;
- records why a page failed (HTTP status, content type, timeout) instead of an empty page.
It also reads the sitemap's own bytes, so that a response that is no sitemap (an HTML page, garbage) is
recorded with what it starts with.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

import aiohttp
import requests
from bs4 import BeautifulSoup

from raft_assets.contracts.sources import SitemapSource
from raft_assets.ingestion.html import NO_TEXT_IN_PAGE, extract_page
from raft_assets.ingestion.loaded import LoadedDocument, opening

USER_AGENT = "raft-assets-sitemap-loader/0.1"
# LangChain warns at import when USER_AGENT is unset; our loader sends its own User-Agent header.
os.environ.setdefault("USER_AGENT", USER_AGENT)

from langchain_community.document_loaders.sitemap import SitemapLoader  # noqa: E402

MAX_REDIRECTS = 5
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
TEXT_CONTENT_TYPES = {"application/xhtml+xml", "application/xml"}


class PageError(Exception):
    """A page that cannot be loaded; the message says why."""


class _TransientError(PageError):
    """A failure worth another attempt: timeout, dropped connection, 429, 5xx."""


@dataclass
class SitemapLoad:
    documents: list[LoadedDocument]
    off_host: list[str] = field(default_factory=list)  # listed on hosts not allowed: never fetched
    over_limit: int = 0  # listed beyond max_pages: not fetched


def load_sitemap(source: SitemapSource) -> SitemapLoad:
    return PoliteSitemapLoader(source).load_pages()


class RequestPacer:
    """Spaces the starts of requests at least `1 / per_second` seconds apart."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next_start = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class PoliteSitemapLoader(SitemapLoader):
    def __init__(self, source: SitemapSource) -> None:
        super().__init__(
            source.sitemap,
            filter_urls=source.url_patterns or None,
            is_local=not source.is_remote,
            restrict_to_same_domain=False,  # hosts are checked on every request, redirects included
            requests_per_second=max(1, math.ceil(source.requests_per_second)),  # LangChain's concurrency bound
            header_template={"User-Agent": USER_AGENT},
            requests_kwargs={"timeout": source.timeout_s},
            raise_for_status=True,
            show_progress=False,
        )
        self.source = source
        self.page_errors: dict[str, str] = {}
        self._pacer = RequestPacer(source.requests_per_second)

    def load_pages(self) -> SitemapLoad:
        sitemap = self.source.sitemap
        try:
            data = self._sitemap_bytes()
        except (OSError, requests.RequestException) as error:
            return SitemapLoad([LoadedDocument.failed(sitemap, f"cannot read the sitemap: {error}")])
        soup = BeautifulSoup(data, "xml")
        if soup.find(["urlset", "sitemapindex"]) is None:
            reason = f"not a sitemap: no <urlset> or <sitemapindex> element (it starts with {opening(data)})"
            return SitemapLoad([LoadedDocument.failed(sitemap, reason)])
        listed = list(dict.fromkeys(entry["loc"] for entry in self.parse_sitemap(soup) if "loc" in entry))
        allowed = [url for url in listed if self.host_allowed(url)]
        to_fetch = allowed[: self.source.max_pages]
        pages = asyncio.run(self.fetch_all(to_fetch))  # the pages' HTML; a failed page's reason is in page_errors
        return SitemapLoad(
            documents=[self._document(url, page) for url, page in zip(to_fetch, pages, strict=True)],
            off_host=[url for url in listed if not self.host_allowed(url)],
            over_limit=len(allowed) - len(to_fetch),
        )

    def host_allowed(self, url: str) -> bool:
        parsed = urlparse(url)
        return parsed.scheme in ("http", "https") and parsed.netloc in self.source.hosts

    def _sitemap_bytes(self) -> bytes:
        """The sitemap as stored (the XML parser reads its encoding from its declaration); redirects are followed
        only to the allowed hosts and the sitemap's own."""
        if not self.source.is_remote:
            return Path(self.source.sitemap).read_bytes()
        url = own_host = self.source.sitemap
        for _ in range(MAX_REDIRECTS + 1):
            if not (self.host_allowed(url) or urlparse(url).netloc == urlparse(own_host).netloc):
                raise requests.RequestException(f"redirected to {url}, whose host is not allowed")
            response = self.session.get(url, allow_redirects=False, **self.requests_kwargs)
            if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                continue
            response.raise_for_status()
            return response.content
        raise requests.RequestException(f"more than {MAX_REDIRECTS} redirects")

    def _document(self, url: str, html: str) -> LoadedDocument:
        if url in self.page_errors:
            return LoadedDocument.failed(url, self.page_errors[url])
        page = extract_page(html, self.source.html_extraction)
        if not page.text:
            return LoadedDocument.failed(url, NO_TEXT_IN_PAGE)
        return LoadedDocument(uri=url, title=page.title or url, text=page.text)

    async def _fetch_with_rate_limit(self, url: str, semaphore: asyncio.Semaphore) -> str:
        async with semaphore:
            try:
                return await self._fetch(url)
            except PageError as error:
                self.page_errors[url] = str(error)
                return ""

    async def _fetch(self, url: str, *args: object, **kwargs: object) -> str:
        timeout = aiohttp.ClientTimeout(total=self.source.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=dict(self.session.headers)) as session:
            attempts = self.source.retries + 1
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(0.5 * 2**attempt)
                try:
                    return await self._get(session, url)
                except _TransientError as error:
                    last_error = error
        raise PageError(f"{last_error} (gave up after {attempts} attempts)")

    async def _get(self, session: aiohttp.ClientSession, url: str) -> str:
        """One attempt: GET `url`, following at most MAX_REDIRECTS redirects on allowed hosts."""
        for hop in range(MAX_REDIRECTS + 1):
            if not self.host_allowed(url):
                reason = "redirected to" if hop else "page on"
                raise PageError(f"{reason} {url}, whose host is not allowed")
            await self._pacer.wait()
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    _raise_for_response(response)
                    return await response.text(errors="replace")
            except TimeoutError:
                raise _TransientError(f"timed out after {self.source.timeout_s:g} s") from None
            except aiohttp.ClientConnectionError as error:
                raise _TransientError(f"connection failed: {error}") from None
            except aiohttp.ClientError as error:
                raise PageError(f"request failed: {type(error).__name__}: {error}") from None
        raise PageError(f"more than {MAX_REDIRECTS} redirects")


def _raise_for_response(response: aiohttp.ClientResponse) -> None:
    if response.status in RETRYABLE_STATUSES:
        raise _TransientError(f"HTTP {response.status} {response.reason}")
    if response.status >= 400:
        raise PageError(f"HTTP {response.status} {response.reason}")
    content_type = response.content_type
    if not (content_type.startswith("text/") or content_type in TEXT_CONTENT_TYPES):
        raise PageError(f"not an HTML page (Content-Type {content_type})")
