"""The lean HTTP/1.1 client against raw socket servers: framing variants and keep-alive races."""
import asyncio
import json

import pytest

from annotate.backends.httpconn import ConnectError, HttpPool, ProtocolError


async def serve(handler):
    """Start a raw TCP server; ``handler(reader, writer, n)`` gets the n-th request on a connection."""
    async def on_conn(reader, writer):
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                body = await reader.readexactly(length)
                n += 1
                if not await handler(writer, n, head, body):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_chunked_close_delimited_and_headers():
    async def handler(writer, n, head, body):
        assert head.startswith(b"POST /base/generate HTTP/1.1\r\n") and b"Authorization: Bearer k" in head
        payload = json.dumps({"echo": json.loads(body)}).encode()
        if n == 1:  # chunked, with a chunk extension and a trailer
            half = len(payload) // 2
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
                         + b"%x;ext=1\r\n" % half + payload[:half] + b"\r\n"
                         + b"%x\r\n" % (len(payload) - half) + payload[half:] + b"\r\n0\r\nX-Trailer: 1\r\n\r\n")
            await writer.drain()
            return True
        writer.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n" + payload)  # close-delimited
        await writer.drain()
        return False

    async def main():
        server, url = await serve(handler)
        pool = HttpPool(url + "/base", default_headers={"Authorization": "Bearer k"})
        s1, h1, b1 = await pool.request("POST", "/generate", b'{"a": 1}', timeout=5)
        s2, h2, b2 = await pool.request("POST", "/generate", b'{"a": 2}', timeout=5)  # same connection
        pool.close()
        server.close()
        return (s1, h1, b1), (s2, h2, b2)

    (s1, h1, b1), (s2, h2, b2) = asyncio.run(main())
    assert s1 == 200 and h1["retry-after"] == "3" and json.loads(b1) == {"echo": {"a": 1}}
    assert s2 == 200 and json.loads(b2) == {"echo": {"a": 2}}


def test_idle_connection_dropped_by_server_is_resent_once():
    seen = []

    async def handler(writer, n, head, body):
        seen.append((n, body))
        if n == 2:  # the server gave up on the idle connection: close without answering
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async def main():
        server, url = await serve(handler)
        pool = HttpPool(url)
        r1 = await pool.request("POST", "/x", b"1", timeout=5)
        r2 = await pool.request("POST", "/x", b"2", timeout=5)
        server.close()
        return r1, r2

    r1, r2 = asyncio.run(main())
    assert r1[2] == b"ok" and r2[2] == b"ok"
    assert seen == [(1, b"1"), (2, b"2"), (1, b"2")]  # re-sent on a fresh connection


def test_errors_are_classified():
    async def bad(writer, n, head, body):
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        return True

    async def silent(writer, n, head, body):
        await asyncio.sleep(5)
        return False

    async def half(writer, n, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async def main():
        results = {}
        for name, handler in (("bad", bad), ("silent", silent), ("half", half)):
            server, url = await serve(handler)
            try:
                await HttpPool(url).request("POST", "/x", b"{}", timeout=0.3)
            except Exception as e:  # noqa: BLE001
                results[name] = e
            server.close()
        try:
            await HttpPool("http://127.0.0.1:9").request("GET", "/health", timeout=1)
        except Exception as e:  # noqa: BLE001
            results["refused"] = e
        return results

    r = asyncio.run(main())
    assert isinstance(r["bad"], ProtocolError)
    assert isinstance(r["silent"], asyncio.TimeoutError)
    assert isinstance(r["half"], ConnectionResetError) and not isinstance(r["half"], ProtocolError)
    assert isinstance(r["refused"], ConnectError)
    with pytest.raises(ValueError):
        HttpPool("ftp://example.org")
