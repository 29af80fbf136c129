"""Chat completion requests on aiohttp, retried as the openai SDK retries them, for a fraction of its CPU.

Profiled at 280 requests/s (benchmarks/RESULTS.md, "Generation: where the client's CPU per request goes"), the SDK's
raw `post` on its aiohttp transport spent twice aiohttp's CPU per request above it (0.56 against 0.27 ms): its request
options (pydantic models, copied twice per request), the URL and headers merged twice (the SDK's, then httpx2's),
httpx2's send and response layers. A request goes to aiohttp directly here, keeping what the SDK did for it:

- retries of 408, 409 and 5xx replies (429 and 503 apart: the caller lowers its level and sends those again),
  timeouts and failed connections, up to `max_retries`, after the SDK's delays: 0.5 s doubling up to 8 s, less
  up to 25% of jitter, or the reply's Retry-After up to 2 minutes (a longer one is not retried); a server's
  `x-should-retry: true|false` decides when present;
- each attempt's timeout, `timeout_s` to connect and between reads, as the SDK's aiohttp transport sets it;
- the key in `Authorization: Bearer`, which aiohttp drops on a redirect to another host, as httpx does; proxies
  and certificates from the environment.

The SDK still asks the endpoint which models it serves (`ChatClient.check_endpoints`) and runs the Batch API.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

OVERLOADED = (429, 503)  # "later": the caller's to retry, after lowering its level
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0  # a reply that asks for a longer wait is not retried
KEEPALIVE_S = 5.0  # the SDK's idle connection expiry


class StatusError(Exception):
    """A reply with an error status; its message is the SDK's ("Error code: 500 - {...}")."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str) -> None:
        try:
            body: object = json.loads(text)
        except ValueError:
            body = text
        super().__init__(f"Error code: {status} - {body}" if text else f"Error code: {status}")
        self.status = status
        self.headers = headers


class ConnectionProblem(Exception):
    """No reply: the attempt timed out, or the connection failed (the message says which)."""


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a reply asks for (`retry-after-ms`, or `retry-after` in seconds); None when it asks for none."""
    for name, scale in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return float(headers[name]) / scale
        except (KeyError, ValueError):
            continue
    return None


def worth_retrying(error: StatusError) -> bool:
    """Whether the SDK would send the request again (429 and 503 are the caller's)."""
    asked = retry_after_s(error.headers)
    if error.status in OVERLOADED or (asked is not None and asked > MAX_RETRY_AFTER_S):
        return False
    decided = error.headers.get("x-should-retry")
    if decided in ("true", "false"):
        return decided == "true"
    return error.status in (408, 409) or error.status >= 500


def retry_delay(retries_taken: int, headers: Mapping[str, str]) -> float:
    """The SDK's wait before the next attempt, after `retries_taken` retries."""
    asked = retry_after_s(headers)
    if asked is not None and 0 < asked <= MAX_RETRY_AFTER_S:
        return asked
    return min(INITIAL_RETRY_DELAY_S * 2.0**retries_taken, MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())


def new_session(connections: int) -> aiohttp.ClientSession:
    """One client's connections, to all its replicas: room for `connections` at once. Inside the event loop."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector)


def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment sets for `url` (HTTP(S)_PROXY, NO_PROXY, its credentials in .netrc), as aiohttp's
    `trust_env` finds it; looked up once here, where `trust_env` looks it up in a thread for every request."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


class ChatTransport:
    """POSTs chat completion requests to one replica (`base_url`, as the SDK takes it: ".../v1")."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        timeout_s: float,
        max_retries: int,
        on_attempt: Callable[[], None],
    ) -> None:
        """`on_attempt` is called before each HTTP request, retries included."""
        self.session = session
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.proxy, self.proxy_auth = env_proxy(self.url)
        self.timeout_s = timeout_s
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)
        self.max_retries = max_retries
        self.on_attempt = on_attempt

    async def post(self, body: dict[str, Any]) -> Any:
        """The reply's JSON (its text, if it is not JSON); raises StatusError or ConnectionProblem when retries are
        spent or not worth it."""
        data = json.dumps(body, ensure_ascii=False).encode()
        retries_taken = 0
        while True:
            try:
                return await self._attempt(data)
            except StatusError as error:
                if retries_taken == self.max_retries or not worth_retrying(error):
                    raise
                delay = retry_delay(retries_taken, error.headers)
            except ConnectionProblem:
                if retries_taken == self.max_retries:
                    raise
                delay = retry_delay(retries_taken, {})
            await asyncio.sleep(delay)
            retries_taken += 1

    async def _attempt(self, data: bytes) -> Any:
        self.on_attempt()
        try:
            async with self.session.post(
                self.url,
                data=data,
                headers=self.headers,
                timeout=self.timeout,
                proxy=self.proxy,
                proxy_auth=self.proxy_auth,
            ) as response:
                content = await response.read()
        except aiohttp.ConnectionTimeoutError as error:
            raise ConnectionProblem(f"connection failed: {error or 'timed out'}") from error
        except TimeoutError as error:  # aiohttp's read timeout, of a server that does not answer in time
            raise ConnectionProblem(f"timed out after {self.timeout_s:g} s") from error
        except aiohttp.ClientError as error:
            raise ConnectionProblem(f"connection failed: {error}") from error
        if response.status >= 400:
            raise StatusError(response.status, response.headers, content.decode(errors="replace"))
        try:
            return json.loads(content)
        except ValueError:
            return content.decode(errors="replace")
