"""A minimal asyncio HTTP/1.1 JSON client with keep-alive connection pools (stdlib only).

Why not httpx/aiohttp: the toolkit declares neither, and the teacher client needs only
``GET``/``POST`` of JSON to a few vLLM servers, with many requests in flight and connections
reused. Responses with ``Content-Length``, chunked encoding or close-delimited bodies are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class AsyncHTTPClient:
    """Pools idle connections per (scheme, host, port); safe for many concurrent requests."""

    def __init__(self, headers: dict[str, str] | None = None, max_idle_per_host: int = 64):
        self.headers = dict(headers or {})
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def get_json(self, url: str, timeout: float) -> Any:
        return json.loads(await self.request("GET", url, None, timeout))

    async def post_json(self, url: str, payload: Any, timeout: float) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return json.loads(await self.request("POST", url, body, timeout))

    async def request(self, method: str, url: str, body: bytes | None, timeout: float) -> bytes:
        """Send one request; raise HTTPStatusError, HTTPConnectionError or TimeoutError."""
        return await asyncio.wait_for(self._request(method, url, body), timeout)

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    # -- internals
    async def _request(self, method: str, url: str, body: bytes | None) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        # A pooled connection may have been closed by the server while idle: if it fails before
        # any answer, try once more on a fresh one (the request was not processed).
        for reused in (True, False):
            conn = self._take(key) if reused else None
            if reused and conn is None:
                continue
            if conn is None:
                conn = await self._connect(parts.scheme, parts.hostname, port, url)
            try:
                conn.writer.write(raw)
                await conn.writer.drain()
                status, keep_alive, payload = await self._read_response(conn.reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as err:
                conn.close()
                if reused:
                    continue
                raise HTTPConnectionError(f"{url}: connection lost ({err!r})") from None
            except BaseException:
                conn.close()  # timeout or cancellation mid-response: the stream is unusable
                raise
            if keep_alive:
                self._give_back(key, conn)
            else:
                conn.close()
            if not 200 <= status < 300:
                raise HTTPStatusError(url, status, payload)
            return payload
        raise HTTPConnectionError(f"{url}: no connection")  # pragma: no cover - loop returns

    async def _connect(self, scheme: str, host: str, port: int, url: str) -> _Connection:
        context = ssl.create_default_context() if scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
        except OSError as err:
            reason = err.strerror or repr(err)
            raise HTTPConnectionError(f"{url}: cannot connect to {host}:{port} ({reason})") from None
        return _Connection(reader, writer)

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(key)
        while pool:
            conn = pool.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _give_back(self, key: tuple[str, str, int], conn: _Connection) -> None:
        pool = self._idle.setdefault(key, [])
        if len(pool) < self.max_idle_per_host:
            pool.append(conn)
        else:
            conn.close()

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        status_line = await reader.readuntil(b"\r\n")
        try:
            version, status_text = status_line.decode("latin-1").split(" ", 2)[:2]
            status = int(status_text)
        except ValueError:
            raise HTTPConnectionError(f"malformed status line {status_line[:80]!r}") from None
        headers: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and not (version == "HTTP/1.0" and connection != "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return status, keep_alive, b"".join(chunks)
        if "content-length" in headers:
            return status, keep_alive, await reader.readexactly(int(headers["content-length"]))
        return status, False, await reader.read()
