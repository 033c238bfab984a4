"""A lean HTTP/1.1 keep-alive client for the annotation hot path.

Why not aiohttp: at thousands of small JSON requests per second one Python core spends most of
its time inside a general-purpose client (request/response objects, header multidicts, timers,
tracing hooks). The judge servers speak plain HTTP/1.1 with JSON bodies, so this module does
just that: one :class:`HttpPool` per server URL keeps idle connections and sends
``POST``/``GET`` requests with a ``Content-Length`` body; responses may be ``Content-Length``,
``chunked`` or close-delimited. ``https://`` URLs use the default SSL context.

Errors: :class:`ConnectError` (could not connect), :class:`ConnectionResetError` (connection
lost before a complete response; a request on a reused idle connection that dies before any
response byte is re-sent once on a new connection, the usual keep-alive race),
:class:`ProtocolError` (not HTTP), ``asyncio.TimeoutError``.
"""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit


class ConnectError(OSError):
    """The TCP (or TLS) connection could not be established."""


class ProtocolError(ConnectionError):
    """The peer's answer is not a valid HTTP/1.x response."""


class _Connection(asyncio.Protocol):
    """One connection; at most one request in flight. ``waiter`` resolves to
    ``(status, headers: dict[str, str] lower-case, body: bytes)``."""

    def __init__(self):
        self.transport = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.got_bytes = False
        self._buf = bytearray()
        self._reset_response()

    def _reset_response(self) -> None:
        self._head_end = -1
        self._status = 0
        self._headers: dict = {}
        self._length = None
        self._chunked = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._try_complete()
            except ProtocolError as e:
                self.waiter.set_exception(e)
                self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        w = self.waiter
        if w is None or w.done():
            return
        if self._head_end >= 0 and self._length is None and not self._chunked:
            w.set_result((self._status, self._headers, bytes(self._buf[self._head_end:])))  # close-delimited body
        else:
            w.set_exception(ConnectionResetError(f"connection closed before a complete response ({exc or 'EOF'})"))

    # response parsing
    def _try_complete(self) -> None:
        buf = self._buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ProtocolError("response header larger than 64 KiB")
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            self._status = int(parts[1])
            for line in lines[1:]:
                key, _, value = line.partition(":")
                self._headers[key.strip().lower()] = value.strip()
            self._head_end = end + 4
            if "chunked" in self._headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in self._headers:
                self._length = int(self._headers["content-length"])
            elif self._status in (204, 304) or 100 <= self._status < 200:
                self._length = 0
        if self._chunked:
            body, pos = bytearray(), self._head_end
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                try:
                    size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0:
                        return
                    end = trailer_end + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return
                body += buf[eol + 2: eol + 2 + size]
                pos = eol + 2 + size + 2
        elif self._length is not None:
            end = self._head_end + self._length
            if len(buf) < end:
                return
            body = buf[self._head_end:end]
        else:
            return  # close-delimited: completed in connection_lost
        result = (self._status, self._headers, bytes(body))
        del buf[:end]
        self._reset_response()
        self.waiter.set_result(result)


class HttpPool:
    """Keep-alive connections to one server (``http[s]://host[:port][/base]``)."""

    def __init__(self, url: str, connect_timeout: float = 10.0, default_headers: dict | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extra = "".join(f"{k}: {v}\r\n" for k, v in (default_headers or {}).items())
        self._head = f"HTTP/1.1\r\nHost: {host_header}\r\n{extra}"
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl), self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectError(f"connect to {self.host}:{self.port} timed out after "
                               f"{self.connect_timeout:g}s") from None
        except OSError as e:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}") from None
        return conn

    async def request(self, method: str, path: str, body: bytes = b"", timeout: float | None = None,
                      content_type: str = "application/json") -> tuple[int, dict, bytes]:
        """Send one request; returns ``(status, headers, body)``."""
        head = (f"{method} {self.base}{path} {self._head}Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or conn._buf:  # closed, or unsolicited bytes: not safe to reuse
                conn.transport.close()
                continue
            try:
                return await self._exchange(conn, head, body, timeout)
            except ConnectionResetError:
                if conn.got_bytes:
                    raise
                # the server closed this idle connection just as we reused it: use a fresh one
        return await self._exchange(await self._connect(), head, body, timeout)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes, timeout: float | None):
        loop = asyncio.get_running_loop()
        conn.waiter = waiter = loop.create_future()
        conn.got_bytes = False
        timer = loop.call_later(timeout, _expire, waiter) if timeout else None
        conn.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            conn.transport.write(body)
        try:
            status, headers, data = await waiter
        except BaseException:
            conn.transport.abort()
            raise
        finally:
            conn.waiter = None
            if timer is not None:
                timer.cancel()
        if conn.closed or headers.get("connection", "").lower() == "close":
            conn.transport.close()
        else:
            self._idle.append(conn)
        return status, headers, data

    def close(self) -> None:
        for conn in self._idle:
            conn.transport.close()
        self._idle.clear()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
