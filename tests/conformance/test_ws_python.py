"""WebSocket interop: culvert's server and client against Python `websockets`
(Debian python3-websockets 10.4) and against hand-made raw frames.

Run: /usr/bin/python3 -m pytest tests/conformance
Binaries: $CULVERT_BUILD (default build/) must hold ws_echo_server, ws_client.
"""
import asyncio
import base64
import os
import socket

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from wsharness import (Client, EchoServer, STEP, accept_for, client_line_for_binary,
                       close_payload, close_writer, expect_close_frame, expect_eof, frame,
                       header, parse_head, pattern, raw_connect, read_frame, read_head, run,
                       sha256hex)

# No compression: culvert negotiates no extension, and raw sizes must match.
WSOPTS = dict(compression=None, max_size=None, ping_interval=None, close_timeout=STEP)


@pytest.fixture
def server_factory(tmp_path):
    started = []

    def start(*args):
        srv = EchoServer(args, log_path=str(tmp_path / f"server{len(started)}.log"))
        started.append(srv)
        return srv

    yield start
    problems = []
    for srv in started:
        if getattr(srv, "stopped", False):
            srv.kill()
            continue
        if not srv.alive():
            problems.append(f"ws_echo_server died with status {srv.proc.returncode}:\n"
                            f"{srv.stderr_text()}")
            srv.kill()
            continue
        rc = srv.terminate()
        if rc != 0:
            problems.append(f"ws_echo_server exited {rc} after SIGTERM:\n{srv.stderr_text()}")
        srv.kill()
    assert not problems, "\n".join(problems)


@pytest.fixture
def server(server_factory):
    return server_factory()


# ===========================================================================
# Our server, websockets client
# ===========================================================================

def test_text_echo(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            for msg in ["hello", "héllo wörld ✓ 🚀", "a" * 1000, "\x00nul inside"]:
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), STEP)
                assert isinstance(got, str), f"text came back as {type(got)}"
                assert got == msg
    run(go())


def test_binary_echo(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            for msg in [bytes(range(256)), b"\x00" * 10, b"\xff\xfe\xfd", os.urandom(4096)]:
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), STEP)
                assert isinstance(got, bytes), f"binary came back as {type(got)}"
                assert got == msg
    run(go())


def test_empty_messages(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            await ws.send("")
            assert await asyncio.wait_for(ws.recv(), STEP) == ""
            await ws.send(b"")
            assert await asyncio.wait_for(ws.recv(), STEP) == b""
            await ws.send("after")
            assert await asyncio.wait_for(ws.recv(), STEP) == "after"
    run(go())


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 1 << 20])
def test_sizes(server, size):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            data = pattern(size)
            await ws.send(data)
            got = await asyncio.wait_for(ws.recv(), STEP)
            assert len(got) == size and sha256hex(got) == sha256hex(data)
            text = ("abcdefghé" * (size // 10 + 1)).encode()[:size].decode("utf-8", "ignore")
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), STEP) == text
    run(go())


def test_length_encoding_raw(server):
    """Server frames: unmasked, FIN, RSV 0, minimal length encoding."""
    async def go():
        r, w, _ = await raw_connect(server.port)
        cases = {0: b"\x82\x00", 125: b"\x82\x7d", 126: b"\x82\x7e\x00\x7e",
                 65535: b"\x82\x7e\xff\xff",
                 65536: b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"}
        for n, hdr in cases.items():
            data = pattern(n)
            w.write(frame(0x2, data))
            await w.drain()
            f = await read_frame(r)
            assert f.header == hdr, f"size {n}: header {f.header.hex()} != {hdr.hex()}"
            assert f.payload == data
        w.write(frame(0x1, "ok".encode()))
        await w.drain()
        f = await read_frame(r)
        assert f.header + f.payload == b"\x81\x02ok"
        close_writer(w)
    run(go())


def test_fragmented_from_client(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            await ws.send([b"ab", b"cd", b"ef"])
            assert await asyncio.wait_for(ws.recv(), STEP) == b"abcdef"
            await ws.send(["hé", "llo", " ✓"])
            assert await asyncio.wait_for(ws.recv(), STEP) == "héllo ✓"
            big = [pattern(70000), os.urandom(70000), b"", b"z"]
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), STEP) == b"".join(big)
    run(go())


def test_fragments_raw_split_utf8_with_ping_between(server):
    """A code point split across fragments, a ping between fragments: the
    pong comes first, then one unfragmented echo."""
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x1, b"h\xc3", fin=False))
        w.write(frame(0x9, b"p1"))
        w.write(frame(0x0, b"\xa9l", fin=False))
        w.write(frame(0x0, b"lo", fin=True))
        await w.drain()
        f = await read_frame(r)
        assert f.header + f.payload == b"\x8a\x02p1", f"expected pong p1, got {f!r}"
        f = await read_frame(r)
        assert f.header + f.payload == b"\x81\x06h\xc3\xa9llo", f"got {f!r}"
        close_writer(w)
    run(go())


def test_fragments_one_byte_at_a_time(server):
    """The frame parser must resume at any byte boundary."""
    async def go():
        r, w, _ = await raw_connect(server.port)
        data = frame(0x2, b"x" * 200, fin=False) + frame(0x0, b"y" * 70000)
        for i in range(0, 300):
            w.write(data[i:i + 1])
            await w.drain()
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        w.write(data[300:])
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0x2 and f.fin and f.payload == b"x" * 200 + b"y" * 70000
        close_writer(w)
    run(go())


def test_ping_pong(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            for payload in [b"", b"data", bytes(range(125))]:
                waiter = await ws.ping(payload)
                await asyncio.wait_for(waiter, STEP)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), STEP) == "still here"
    run(go())


def test_ping_pong_raw(server):
    async def go():
        r, w, _ = await raw_connect(server.port)
        for payload in [b"abc", b"", bytes(range(125))]:
            w.write(frame(0x9, payload))
            await w.drain()
            f = await read_frame(r)
            assert f.header + f.payload == bytes([0x8A, len(payload)]) + payload, f"got {f!r}"
        # An unsolicited pong is ignored.
        w.write(frame(0xA, b"x") + frame(0x1, b"next"))
        await w.drain()
        f = await read_frame(r)
        assert f.header + f.payload == b"\x81\x04next", f"got {f!r}"
        close_writer(w)
    run(go())


@pytest.mark.parametrize("code,reason", [(1000, "bye"), (1001, ""), (3000, "x"),
                                         (4999, "ünï")])
def test_close_handshake(server, code, reason):
    async def go():
        ws = await websockets.connect(server.url, **WSOPTS)
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), STEP) == "hi"
        await ws.close(code, reason)
        assert ws.close_code == code, \
            f"server answered close {ws.close_code} {ws.close_reason!r}, expected {code}"
    run(go())


def test_close_handshake_raw(server):
    """Close 1000 'bye': the server echoes 1000 and then closes TCP."""
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x8, close_payload(1000, "bye")))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0x8 and f.fin and not f.masked, f"got {f!r}"
        assert f.close_code == 1000, f"got {f!r}"
        await expect_eof(r)
        close_writer(w)
    run(go())


def test_close_empty_payload(server):
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x8, b""))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0x8 and f.payload in (b"", b"\x03\xe8"), f"got {f!r}"
        await expect_eof(r)
        close_writer(w)
    run(go())


@pytest.mark.parametrize("payload,code", [
    (b"\x03", 1002),                      # 1-byte close payload
    (close_payload(1005), 1002),          # reserved, never on the wire
    (close_payload(1006), 1002),
    (close_payload(999), 1002),
    (close_payload(1016), 1002),
    (close_payload(5000), 1002),
    (close_payload(1000, b"\xff\xfe"), 1007),  # reason not UTF-8
], ids=["short", "1005", "1006", "999", "1016", "5000", "bad-utf8-reason"])
def test_close_invalid_payload(server, payload, code):
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x8, payload))
        await w.drain()
        await expect_close_frame(r, w, code, reply=False)
        close_writer(w)
    run(go())


def test_max_msg_boundary_and_1009(server_factory):
    srv = server_factory("--max-msg", "1000")

    async def go():
        async with websockets.connect(srv.url, **WSOPTS) as ws:
            await ws.send(pattern(1000))
            assert await asyncio.wait_for(ws.recv(), STEP) == pattern(1000)
            await ws.send(pattern(1001))
            with pytest.raises(ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), STEP)
            assert ei.value.rcvd is not None, "server sent no close frame"
            assert ei.value.rcvd.code == 1009, f"got {ei.value.rcvd}"
        # Fragments add up: 600 + 600 > 1000.
        async with websockets.connect(srv.url, **WSOPTS) as ws:
            await ws.send([b"a" * 600, b"b" * 600])
            with pytest.raises(ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), STEP)
            assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009, f"{ei.value}"
        # Text too.
        async with websockets.connect(srv.url, **WSOPTS) as ws:
            await ws.send("t" * 1001)
            with pytest.raises(ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), STEP)
            assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009, f"{ei.value}"
    run(go())


def test_max_msg_1009_raw_header_only(server_factory):
    """A frame header announcing too much is refused before the payload."""
    srv = server_factory("--max-msg", "1000")

    async def go():
        r, w, _ = await raw_connect(srv.port)
        w.write(frame(0x2, b"", length=1 << 40)[:14])
        await w.drain()
        await expect_close_frame(r, w, 1009, reply=False)
        close_writer(w)
    run(go())


@pytest.mark.parametrize("frames", [
    [(0x1, b"\xff\xfe", True)],
    [(0x1, b"ok \xed\xa0\x80", True)],             # UTF-16 surrogate
    [(0x1, b"\xc0\xaf", True)],                    # overlong '/'
    [(0x1, b"\xf4\x90\x80\x80", True)],            # > U+10FFFF
    [(0x1, b"abc\xc3", True)],                     # truncated at the end
    [(0x1, b"ab\xc3", False), (0x0, b"(", True)],  # bad across fragments
], ids=["ff", "surrogate", "overlong", "too-high", "truncated", "split"])
def test_invalid_utf8_1007(server, frames):
    async def go():
        r, w, _ = await raw_connect(server.port)
        for op, payload, fin in frames:
            w.write(frame(op, payload, fin=fin))
        await w.drain()
        f = await expect_close_frame(r, w, 1007, reply=False)
        assert f.close_code == 1007
        close_writer(w)
    run(go())


@pytest.mark.parametrize("data", [
    frame(0x2, b"unmasked", mask=False),
    frame(0x1, b"rsv1", rsv=4),
    frame(0x2, b"rsv3", rsv=1),
    frame(0x3, b"reserved data opcode"),
    frame(0xB, b"reserved control opcode"),
    frame(0x0, b"continuation without start"),
    frame(0x9, b"p" * 126),
    frame(0x9, b"ping", fin=False),
    frame(0x1, b"a", fin=False) + frame(0x1, b"b"),
    frame(0x2, b"a", fin=False) + frame(0x2, b"b", fin=False),
    frame(0x2, b"", length=0x8000000000000000)[:10] + b"\x00\x00\x00\x00",
], ids=["unmasked", "rsv1", "rsv3", "op3", "opB", "bare-cont", "ping126",
        "ping-frag", "text-in-text", "bin-in-bin", "len-msb"])
def test_protocol_errors_1002(server, data):
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(data)
        await w.drain()
        # A length with the top bit set may count as too big as well.
        await expect_close_frame(r, w, (1002, 1009) if data[1] & 0x7F == 127 else 1002,
                                 reply=False)
        close_writer(w)
    run(go())


def test_accept_key_rfc_vector_no_extensions(server):
    async def go():
        r, w, headers = await raw_connect(
            server.port, key="dGhlIHNhbXBsZSBub25jZQ==",
            extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                  "Sec-WebSocket-Protocol: chat\r\n")
        assert header(headers, "Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert header(headers, "Sec-WebSocket-Extensions") is None
        assert header(headers, "Sec-WebSocket-Protocol") is None
        close_writer(w)
    run(go())


async def http_exchange(port, request):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request)
    await w.drain()
    start, headers = parse_head(await read_head(r))
    close_writer(w)
    return start, headers


def ws_request(port, key="dGhlIHNhbXBsZSBub25jZQ==", version="13", method="GET", drop=()):
    hdrs = [("Host", f"127.0.0.1:{port}"), ("Upgrade", "websocket"),
            ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", version)]
    lines = [f"{method} / HTTP/1.1"] + [f"{n}: {v}" for n, v in hdrs if n not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("make,status", [
    (lambda p: ws_request(p, key="not base64!!"), 400),
    (lambda p: ws_request(p, key="c2hvcnQ="), 400),                    # 5 bytes, not 16
    (lambda p: ws_request(p, drop=("Sec-WebSocket-Key",)), 400),
    (lambda p: ws_request(p, drop=("Sec-WebSocket-Version",)), (400, 426)),
    (lambda p: ws_request(p, method="POST"), 400),
    (lambda p: b"GARBAGE\x01\x02 HTTP/9\r\nUpgrade: websocket\r\n\r\n", 400),
    (lambda p: ws_request(p, version="8"), 426),
    (lambda p: f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode(), 404),
], ids=["bad-key", "short-key", "no-key", "no-version", "post", "garbage", "version8",
        "plain-get"])
def test_bad_handshakes(server, make, status):
    async def go():
        start, headers = await http_exchange(server.port, make(server.port))
        ok = status if isinstance(status, tuple) else (status,)
        assert any(start.startswith(f"HTTP/1.1 {s} ") for s in ok), \
            f"expected {status}, got {start!r}"
        if status == 426:
            assert header(headers, "Sec-WebSocket-Version") == "13"
        # The server still works afterwards.
        async with websockets.connect(server.url, **WSOPTS) as ws:
            await ws.send("alive")
            assert await asyncio.wait_for(ws.recv(), STEP) == "alive"
    run(go())


def test_many_concurrent_clients(server):
    async def one(i):
        async with websockets.connect(server.url, **WSOPTS) as ws:
            for j in range(20):
                msg = f"client {i} msg {j}"
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), STEP) == msg
            await ws.send(pattern(100000 + i))
            assert await asyncio.wait_for(ws.recv(), STEP) == pattern(100000 + i)

    async def go():
        await asyncio.gather(*(one(i) for i in range(20)))
    run(go())


def test_abrupt_disconnect_does_not_hurt_others(server):
    async def go():
        async with websockets.connect(server.url, **WSOPTS) as keep:
            r, w, _ = await raw_connect(server.port)
            w.write(frame(0x2, b"x" * 100000)[:5000])  # half a frame, then reset
            await w.drain()
            w.transport.abort()
            await keep.send("ok")
            assert await asyncio.wait_for(keep.recv(), STEP) == "ok"
    run(go())


def test_sigterm_closes_1001_and_exits_zero(server_factory):
    srv = server_factory()
    srv.stopped = True  # this test checks the exit itself

    async def go():
        ws = await websockets.connect(srv.url, **WSOPTS)
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), STEP) == "x"
        srv.proc.send_signal(15)
        with pytest.raises(ConnectionClosed) as ei:
            await asyncio.wait_for(ws.recv(), STEP)
        assert ei.value.rcvd is not None and ei.value.rcvd.code == 1001, f"{ei.value}"
    run(go())
    assert srv.proc.wait(8) == 0


# ===========================================================================
# Our client, websockets server
# ===========================================================================

class WsServer:
    """websockets.serve on an ephemeral port, recording what it received."""

    def __init__(self, handler, **kw):
        self.handler, self.kw = handler, {**WSOPTS, **kw}
        self.received = []
        self.closes = []

    async def __aenter__(self):
        async def h(ws, path=None):
            try:
                await self.handler(ws, self)
            finally:
                try:
                    await asyncio.wait_for(ws.wait_closed(), STEP)
                except asyncio.TimeoutError:
                    pass
                self.closes.append((ws.close_code, ws.close_reason))
        self.srv = await websockets.serve(h, "127.0.0.1", 0, **self.kw)
        self.port = self.srv.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.srv.close()
        await self.srv.wait_closed()


async def echo_handler(ws, rec):
    try:
        async for msg in ws:
            rec.received.append(msg)
            await ws.send(msg)
    except ConnectionClosed:
        pass


class client_for:
    def __init__(self, url, *args):
        self.url, self.args = url, args

    async def __aenter__(self):
        self.c = await Client.start(self.url, *self.args)
        return self.c

    async def __aexit__(self, *exc):
        await self.c.close_proc()


def test_client_echo():
    async def go():
        async with WsServer(echo_handler) as s, client_for(s.url) as c:
            await c.expect("open")
            steps = [("text hello", "text hello", "hello"),
                     ("text héllo ✓ 🚀", "text héllo ✓ 🚀", "héllo ✓ 🚀"),
                     ("text", "text ", ""),
                     ("binary 00ff10", "binary 00ff10", b"\x00\xff\x10"),
                     ("binary", "binary ", b""),
                     ("big 1024", client_line_for_binary(pattern(1024)), pattern(1024)),
                     ("big 1025", client_line_for_binary(pattern(1025)), pattern(1025)),
                     ("big 65536", client_line_for_binary(pattern(65536)), pattern(65536)),
                     ("big 1048576", client_line_for_binary(pattern(1 << 20)),
                      pattern(1 << 20))]
            for cmd, want, sent in steps:
                await c.send(cmd)
                await c.expect(want)
                assert s.received[-1] == sent and type(s.received[-1]) is type(sent)
            await c.send("close 1000 done")
            await c.expect_close(1000)
            assert await c.wait() == 0
        assert s.closes == [(1000, "done")], s.closes
    run(go())


def test_client_fragmented_from_server():
    async def handler(ws, rec):
        await ws.send([b"ab", b"cd"])
        await ws.send(["hé", "llo"])
        await ws.send([pattern(700), pattern(700)[::-1], b""])
        await ws.send("end")
        await ws.wait_closed()

    async def go():
        async with WsServer(handler) as s, client_for(s.url) as c:
            await c.expect("open")
            await c.expect("binary 61626364")
            await c.expect("text héllo")
            await c.expect(client_line_for_binary(pattern(700) + pattern(700)[::-1]))
            await c.expect("text end")
            await c.send("close 1000")
            await c.expect_close(1000)
            assert await c.wait() == 0
    run(go())


def test_client_answers_server_ping():
    async def handler(ws, rec):
        waiter = await ws.ping(b"hello")
        await asyncio.wait_for(waiter, STEP)
        await ws.send("pong-ok")
        await asyncio.sleep(1.0)  # keepalive pings every 0.2 s meanwhile
        await ws.send("still-open")
        await ws.wait_closed()

    async def go():
        async with WsServer(handler, ping_interval=0.2, ping_timeout=1.0) as s, \
                client_for(s.url) as c:
            await c.expect("open")
            await c.expect("text pong-ok")
            await c.expect("text still-open")
            await c.send("close 1000")
            await c.expect_close(1000)
            assert await c.wait() == 0
        assert s.closes == [(1000, "")], s.closes
    run(go())


def test_client_server_initiated_close():
    async def handler(ws, rec):
        await ws.send("bye soon")
        await ws.close(4001, "reason")

    async def go():
        async with WsServer(handler) as s, client_for(s.url) as c:
            await c.expect("open")
            await c.expect("text bye soon")
            await c.expect_close(4001, "reason")
            assert await c.wait() == 0
        # The client answered the close (1006 would mean it just dropped TCP).
        assert len(s.closes) == 1 and s.closes[0][0] not in (None, 1006), s.closes
    run(go())


def test_client_max_msg_1009():
    async def handler(ws, rec):
        await ws.send(pattern(1000))
        await ws.send(pattern(1001))
        await ws.wait_closed()

    async def go():
        async with WsServer(handler) as s, client_for(s.url, "--max-msg", "1000") as c:
            await c.expect("open")
            await c.expect(client_line_for_binary(pattern(1000)))
            await c.expect_close(1009)
            assert await c.wait() == 0
        assert len(s.closes) == 1 and s.closes[0][0] == 1009, s.closes
    run(go())


def test_client_max_msg_1009_fragmented():
    async def handler(ws, rec):
        await ws.send([b"a" * 600, b"b" * 600])
        await ws.wait_closed()

    async def go():
        async with WsServer(handler) as s, client_for(s.url, "--max-msg", "1000") as c:
            await c.expect("open")
            await c.expect_close(1009)
            assert await c.wait() == 0
        assert s.closes and s.closes[0][0] == 1009, s.closes
    run(go())


def test_client_connect_refused():
    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        c = await Client.start(f"ws://127.0.0.1:{port}/")
        try:
            rc = await c.wait()
            lines = await c.rest()
            assert rc == 1, f"exit {rc}, lines {lines}"
            assert "open" not in lines
            assert any(ln.startswith("error ") for ln in lines), lines
        finally:
            await c.close_proc()
    run(go())


@pytest.mark.parametrize("url", ["wss://127.0.0.1:1/", "http://127.0.0.1:1/", "ws://", "junk"])
def test_client_bad_url(url):
    async def go():
        c = await Client.start(url)
        try:
            rc = await c.wait()
            lines = await c.rest()
            assert rc == 1 and lines and lines[0].startswith("error "), (rc, lines)
        finally:
            await c.close_proc()
    run(go())


# --- raw server: for what a real server library would never send ----------

class RawServer:
    """Accepts one connection, records the request head, answers with
    respond(key) (default: a correct 101) and runs script(reader, writer)."""

    def __init__(self, script, respond=None):
        self.script, self.respond = script, respond
        self.request = None
        self.done = asyncio.get_running_loop().create_future()

    async def __aenter__(self):
        async def on_conn(r, w):
            try:
                self.request = await read_head(r)
                _, headers = parse_head(self.request)
                key = header(headers, "Sec-WebSocket-Key") or ""
                if self.respond:
                    w.write(self.respond(key))
                else:
                    w.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_for(key)}"
                             "\r\n\r\n").encode())
                await w.drain()
                await self.script(r, w)
                if not self.done.done():
                    self.done.set_result(None)
            except Exception as e:  # surfaced by the test via self.done
                if not self.done.done():
                    self.done.set_exception(e)
            finally:
                close_writer(w)
        self.srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.srv.close()
        await self.srv.wait_closed()


async def expect_client_close(r, w, code):
    """Reads the client's close frame (it must be masked) and answers it."""
    while True:
        f = await read_frame(r)
        if f.opcode == 0x8:
            break
    assert f.masked and f.fin, f"client close frame must be masked: {f!r}"
    assert f.close_code == code, f"expected close {code} from client, got {f!r}"
    w.write(frame(0x8, f.payload[:2], mask=False))
    await w.drain()
    return f


def test_client_handshake_exact_and_frames_masked():
    """Spec §2: exactly these headers, in this order; one masked FIN frame
    per message."""
    async def script(r, w):
        w.write(frame(0x1, b"hi", mask=False))
        await w.drain()
        f = await read_frame(r)
        assert f.fin and f.masked and f.rsv == 0 and f.opcode == 0x2, f"{f!r}"
        assert f.payload == b"\x01\x02\x03"
        f = await read_frame(r)
        assert f.fin and f.masked and f.opcode == 0x1 and f.payload == "ünï".encode(), f"{f!r}"
        f = await read_frame(r)
        assert f.fin and f.masked and f.opcode == 0x2 and f.payload == pattern(70000)
        await expect_client_close(r, w, 1000)

    async def go():
        async with RawServer(script) as s:
            c = await Client.start(f"ws://127.0.0.1:{s.port}/ws/tunnel/kohakuriver-task-1?x=1")
            try:
                await c.expect("open")
                await c.expect("text hi")
                for cmd in ["binary 010203", "text ünï", "big 70000", "close 1000"]:
                    await c.send(cmd)
                await c.expect_close(1000)
                assert await c.wait() == 0
                await asyncio.wait_for(s.done, STEP)
            finally:
                await c.close_proc()
            lines = s.request.split("\r\n")
            assert lines[0] == "GET /ws/tunnel/kohakuriver-task-1?x=1 HTTP/1.1", lines
            assert lines[1] == f"Host: 127.0.0.1:{s.port}", lines
            assert lines[2] == "Connection: Upgrade", lines
            assert lines[3] == "Upgrade: websocket", lines
            assert lines[4] == "Sec-WebSocket-Version: 13", lines
            assert lines[5].startswith("Sec-WebSocket-Key: "), lines
            key = lines[5][len("Sec-WebSocket-Key: "):]
            assert len(base64.b64decode(key, validate=True)) == 16
            assert lines[6:] == ["", ""], f"unexpected extra headers: {lines[6:]}"
    run(go())


def test_client_masking_keys_vary():
    keys = []

    async def script(r, w):
        for _ in range(8):
            f = await read_frame(r)
            keys.append(f.header[-4:])
        await expect_client_close(r, w, 1000)

    async def go():
        async with RawServer(script) as s:
            c = await Client.start(f"ws://127.0.0.1:{s.port}/")
            try:
                await c.expect("open")
                for i in range(8):
                    await c.send(f"text m{i}")
                await c.send("close 1000")
                await c.expect_close(1000)
                await asyncio.wait_for(s.done, STEP)
            finally:
                await c.close_proc()
        assert len(set(keys)) > 1, f"every frame used the same masking key {keys[0].hex()}"
    run(go())


def test_client_answers_ping_raw():
    async def script(r, w):
        w.write(frame(0x9, b"xyz", mask=False))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0xA and f.fin and f.masked and f.payload == b"xyz", f"{f!r}"
        # A ping between fragments is answered; the message still arrives whole.
        w.write(frame(0x2, b"\x01", fin=False, mask=False) + frame(0x9, b"", mask=False)
                + frame(0x0, b"\x02", mask=False))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0xA and f.masked and f.payload == b"", f"{f!r}"
        w.write(frame(0x8, close_payload(1000, "done"), mask=False))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0x8 and f.masked and f.close_code == 1000, f"{f!r}"

    async def go():
        async with RawServer(script) as s:
            c = await Client.start(f"ws://127.0.0.1:{s.port}/")
            try:
                await c.expect("open")
                await c.expect("binary 0102")
                await c.expect_close(1000, "done")
                assert await c.wait() == 0
                await asyncio.wait_for(s.done, STEP)
            finally:
                await c.close_proc()
    run(go())


@pytest.mark.parametrize("data,code", [
    (frame(0x2, b"masked!", mask=True), 1002),
    (frame(0x2, b"rsv", mask=False, rsv=4), 1002),
    (frame(0x3, b"op3", mask=False), 1002),
    (frame(0x0, b"cont", mask=False), 1002),
    (frame(0x9, b"p" * 126, mask=False), 1002),
    (frame(0x1, b"\xff", mask=False), 1007),
    (frame(0x1, b"a\xc3", fin=False, mask=False) + frame(0x0, b"(", mask=False), 1007),
], ids=["masked", "rsv", "op3", "bare-cont", "ping126", "bad-utf8", "bad-utf8-split"])
def test_client_rejects_bad_server_frames(data, code):
    async def script(r, w):
        w.write(data)
        await w.drain()
        await expect_client_close(r, w, code)

    async def go():
        async with RawServer(script) as s:
            c = await Client.start(f"ws://127.0.0.1:{s.port}/")
            try:
                await c.expect("open")
                await c.expect_close(code)
                assert await c.wait() == 0
                await asyncio.wait_for(s.done, STEP)
            finally:
                await c.close_proc()
    run(go())


@pytest.mark.parametrize("respond", [
    lambda key: (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"),
    lambda key: b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    lambda key: (b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_for(key).encode() + b"\r\n\r\n"),
    lambda key: (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_for(key).encode() + b"\r\n\r\n"),
    lambda key: b"not http at all\r\n\r\n",
], ids=["wrong-accept", "404", "200", "no-upgrade-header", "garbage"])
def test_client_rejects_bad_handshake_response(respond):
    async def script(r, w):
        await asyncio.sleep(0.5)

    async def go():
        async with RawServer(script, respond=respond) as s:
            c = await Client.start(f"ws://127.0.0.1:{s.port}/")
            try:
                rc = await c.wait()
                lines = await c.rest()
                assert rc == 1, f"exit {rc}, lines {lines}"
                assert "open" not in lines, lines
                assert any(ln.startswith("error ") for ln in lines), lines
            finally:
                await c.close_proc()
    run(go())


# --- added: backpressure, signals, edge cases -------------------------------

def test_backpressure_echo_in_order(server):
    """The client stops reading while sending 24 MiB; the server must pause
    (not buffer without bound, not drop) and resume: every echo comes back
    whole and in order."""
    count, size = 384, 65536

    async def go():
        async with websockets.connect(server.url, **WSOPTS) as ws:
            async def sender():
                for i in range(count):
                    await ws.send(i.to_bytes(4, "big") + pattern(size - 4))

            async def reader():
                await asyncio.sleep(0.5)
                for i in range(count):
                    got = await asyncio.wait_for(ws.recv(), STEP)
                    assert len(got) == size and int.from_bytes(got[:4], "big") == i, \
                        f"echo {i}: len {len(got)}, seq {int.from_bytes(got[:4], 'big')}"
                    assert got[4:] == pattern(size - 4)
            await asyncio.gather(sender(), reader())
    run(go(), timeout=60)


def test_sigint_exits_zero(server_factory):
    srv = server_factory()
    srv.stopped = True
    srv.proc.send_signal(2)
    assert srv.proc.wait(8) == 0


def test_client_commands_before_open_are_sent_after_open():
    async def go():
        async with WsServer(echo_handler) as s:
            c = await Client.start(s.url)
            try:
                # Written at once, before the handshake can have finished.
                await c.send("text early\nbinary 0a0b")
                await c.expect("open")
                await c.expect("text early")
                await c.expect("binary 0a0b")
                # (Not in the same write: data that arrives after our close
                # frame is discarded by design, net/ws.c on_data_frame.)
                await c.send("close 1000 early-bye")
                await c.expect_close(1000)
                assert await c.wait() == 0
            finally:
                await c.close_proc()
        assert s.received == ["early", b"\x0a\x0b"], s.received
        assert s.closes == [(1000, "early-bye")], s.closes
    run(go())


def test_client_long_close_reason_stays_valid_utf8():
    """A reason longer than a close frame holds (123 bytes) must be cut at a
    UTF-8 boundary; otherwise the peer fails the connection with 1007."""
    async def go():
        async with WsServer(echo_handler) as s, client_for(s.url) as c:
            await c.expect("open")
            await c.send("close 1000 " + "é" * 100)
            await c.expect_close(1000)
            assert await c.wait() == 0
        assert len(s.closes) == 1 and s.closes[0][0] == 1000, s.closes
        reason = s.closes[0][1]
        assert len(reason.encode()) <= 123 and "é" * (len(reason)) == reason, reason
    run(go())


def test_server_close_reason_echo_max_length(server):
    """A 123-byte reason (the maximum) is accepted; 124 bytes is a protocol
    error (control frame payload over 125)."""
    async def go():
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x8, close_payload(1000, "r" * 123)))
        await w.drain()
        f = await read_frame(r)
        assert f.opcode == 0x8 and f.close_code == 1000 and len(f.payload) <= 125, f"{f!r}"
        await expect_eof(r)
        close_writer(w)
        r, w, _ = await raw_connect(server.port)
        w.write(frame(0x8, close_payload(1000, "r" * 124)))
        await w.drain()
        await expect_close_frame(r, w, 1002, reply=False)
        close_writer(w)
    run(go())
