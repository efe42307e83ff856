"""The teacher's HTTP client: JSON over ``httpx.AsyncClient``, with its errors sorted for retries.

Why a wrapper at all: the vLLM server backend retries some failures and not others, so every
failure arrives as one of three kinds: ``HTTPStatusError`` (the server answered non-2xx: its own
message is kept), ``HTTPConnectionError`` (no usable answer: refused, reset, malformed) and
``TimeoutError``. httpx keeps connections alive and pools them per host. Proxy variables are
ignored (``trust_env=False``): teacher endpoints are vLLM servers the user names, usually on
loopback or a cluster network, never meant to go through a web proxy.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx


class HTTPStatusError(Exception):
    """The server answered with a non-2xx status."""

    def __init__(self, url: str, status: int, body: bytes):
        text = body.decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            payload = json.loads(text)
            error = payload.get("error", payload)
            text = error.get("message", text) if isinstance(error, dict) else str(error)
        super().__init__(f"{url}: HTTP {status}: {text[:500]}")
        self.status = status
        self.body = body


class HTTPConnectionError(ConnectionError):
    """No answer: connection refused or reset, or a malformed response."""


class AsyncHTTPClient:
    """JSON GET/POST to a few servers with many requests in flight; connections are reused."""

    def __init__(self, headers: dict[str, str] | None = None, max_idle_per_host: int = 64):
        self._client = httpx.AsyncClient(
            headers=headers, trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_idle_per_host),
        )

    async def get_json(self, url: str, timeout: float) -> Any:
        return await self._send("GET", url, None, timeout)

    async def post_json(self, url: str, payload: Any, timeout: float) -> Any:
        return await self._send("POST", url, payload, timeout)

    async def _send(self, method: str, url: str, payload: Any, timeout: float) -> Any:
        """The decoded JSON answer; HTTPStatusError, HTTPConnectionError or TimeoutError."""
        try:
            response = await self._client.request(method, url, json=payload, timeout=timeout)
        except httpx.TimeoutException as err:
            raise TimeoutError(f"{url}: no answer within {timeout:g} s") from err
        except httpx.UnsupportedProtocol as err:
            raise ValueError(f"not an http(s) URL: {url!r}") from err
        except httpx.ConnectError as err:
            raise HTTPConnectionError(f"{url}: cannot connect ({err})") from None
        except httpx.TransportError as err:
            raise HTTPConnectionError(f"{url}: connection lost ({type(err).__name__}: {err})"
                                      ) from None
        if not response.is_success:
            raise HTTPStatusError(url, response.status_code, response.content)
        try:
            return response.json()
        except ValueError as err:
            raise HTTPConnectionError(f"{url}: the answer is not JSON ({err})") from None

    async def aclose(self) -> None:
        # Connections opened in an event loop that has ended cannot be closed from another one
        # (RuntimeError "Event loop is closed"); they are gone with their loop anyway.
        with contextlib.suppress(RuntimeError):
            await self._client.aclose()
