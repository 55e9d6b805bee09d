"""culvert relay  <->  spec test agent (tests/peers/kohaku_agent.py) and a raw forward peer.

The agent is written from the spec only; the forward peer is a plain ``websockets`` client. The relay translates
ids per session (spec §6.3), so on the agent side we check type/proto/port/payload and that one session id maps
to one consistent tunnel id, and on the forward side the exact bytes of the §10 vectors.
"""

import asyncio
import os
import socket
import time

import pytest

import kohaku_proto as kp
from conftest import closed_port, http_get, recv_exact, run_async
from kohaku_agent import KohakuAgent
from kohaku_forward import RawForward

CID = "kohakuriver-task-1"


async def start_agent(url, cid=CID, delay=0.3):
    a = KohakuAgent(url, cid, reconnect_delay=delay)
    await a.start()
    await a.wait_established(timeout=5)
    await wait_registered(url, cid)
    return a


async def wait_registered(url, cid, timeout=5.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        f = await RawForward.open(url, cid, 9)
        last = f.first
        await f.close()
        if last == "CONNECTED":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("relay never reported CONNECTED for %s (last %r)" % (cid, last))


async def agent_next(agent, mtype, timeout=5.0):
    """Next message of type mtype the spec agent received from the relay (others are skipped)."""
    loop = asyncio.get_event_loop()
    end = loop.time() + timeout
    while True:
        m = await agent.recv_msg(timeout=max(0.01, end - loop.time()))
        if m.type == mtype:
            return m


async def agent_drain(agent, seconds):
    got = []
    loop = asyncio.get_event_loop()
    end = loop.time() + seconds
    while True:
        left = end - loop.time()
        if left <= 0:
            return got
        try:
            got.append(await agent.recv_raw(left))
        except asyncio.TimeoutError:
            return got


def raw_http(port, payload, timeout=5.0):
    """Send raw bytes to the relay and return everything it answers before closing (or timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if payload:
            s.sendall(payload)
        buf = b""
        s.settimeout(timeout)
        while True:
            try:
                d = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not d:
                break
            buf += d
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                clen = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v.strip())
                if len(body) >= clen:
                    break
        return buf
    finally:
        s.close()


# --------------------------------------------------------------------------------------------------------
# HTTP surface
# --------------------------------------------------------------------------------------------------------


def test_healthz_200(culvert):
    relay = culvert.relay()
    status, _ = http_get(relay.http + "/healthz")
    assert status == 200


@pytest.mark.parametrize("path", ["/", "/foo", "/ws", "/ws/tunnel", "/ws/forward/x", "/healthz/extra"])
def test_other_plain_paths_404(culvert, path):
    relay = culvert.relay()
    status, _ = http_get(relay.http + path)
    assert status == 404, "GET %s -> %d" % (path, status)


def test_plain_get_on_ws_path_is_4xx(culvert):
    """A non-WebSocket request to a WebSocket path gets a clear 4xx, not 101 and not a crash."""
    relay = culvert.relay()
    status, _ = http_get(relay.http + "/ws/tunnel/" + CID)
    assert 400 <= status < 500, status
    assert relay.proc.alive()


GARBAGE = [
    b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # truncated headers, then EOF
    b"GET /ws/tunnel/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",  # no key/version
    b"GET /ws/tunnel/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",  # bad version
    b"GET /ws/tunnel/x HTTP/1.1\r\nHost: x\rX-Bad: y\r\nUpgrade: websocket\r\n\r\n",  # bare CR
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",  # huge header
    b"POST /ws/tunnel/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /ws/tunnel/x HTTP/9.9\r\n\r\n",
    b"\r\n\r\n\r\n",
]


@pytest.mark.timeout_s(60)
def test_garbage_handshakes_get_http_error_and_relay_survives(culvert):
    relay = culvert.relay()

    async def body():
        agent = await start_agent(relay.url)
        try:
            for g in GARBAGE:
                resp = await asyncio.get_event_loop().run_in_executor(None, raw_http, relay.port, g, 2.0)
                assert not resp.startswith(b"HTTP/1.1 101"), "garbage %r got 101" % g[:60]
                if resp:
                    status = int(resp.split(b" ", 2)[1])
                    assert 400 <= status < 600, "garbage %r -> %r" % (g[:60], resp[:80])
            # A truncated request where the client just goes away.
            s = socket.create_connection(("127.0.0.1", relay.port))
            s.sendall(b"GET /ws/tunnel/y HTTP/1.1\r\nHo")
            s.close()
            assert relay.proc.alive()
            status, _ = http_get(relay.http + "/healthz")
            assert status == 200
            # The registered agent still works end to end.
            f = await RawForward.open(relay.url, CID, 9)
            assert f.first == "CONNECTED"
            await f.close()
            assert agent.ended == 0
        finally:
            await agent.stop()

    run_async(body(), 50)
    assert relay.proc.alive()


# --------------------------------------------------------------------------------------------------------
# /ws/forward first frame
# --------------------------------------------------------------------------------------------------------


def test_forward_without_tunnel_error_text_and_1011(culvert):
    relay = culvert.relay()

    async def body():
        f = await RawForward.open(relay.url, "kohakuriver-task-404", 8080)
        assert f.first == "Error: Container tunnel not connected (container=kohakuriver-task-404)"
        assert isinstance(f.first, str)
        rest = await f.expect_silence(3)
        assert rest == [None], "expected close after the error text, got %r" % rest
        assert f.ws.close_code == 1011

    run_async(body())


def test_forward_connected_text(culvert, tcp_echo):
    relay = culvert.relay()

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, tcp_echo.port)
            assert isinstance(f.first, str) and f.first == "CONNECTED"
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


# --------------------------------------------------------------------------------------------------------
# Vectors through the relay
# --------------------------------------------------------------------------------------------------------


def test_reference_exchange_tcp(culvert, tcp_echo):
    """§10 reference exchange: CONNECT -> CONNECTED (vector 2), DATA hello echo, CLOSE."""
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            assert f.first == "CONNECTED"
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            # What the agent saw: CONNECT, proto 00, the port, empty payload, some non-zero tunnel id.
            c = await agent_next(agent, kp.CONNECT)
            assert (c.proto, c.port, c.payload) == (kp.TCP, P, b"")
            assert c.id != 0
            assert c.raw == kp.encode(kp.CONNECT, kp.TCP, c.id, P)
            tid = c.id
            # What the forward peer sees: vector 2 exactly.
            assert await f.recv() == kp.VECTORS[2]
            await f.send(kp.h("03 00 00000001 0000 68656c6c6f"))
            d = await agent_next(agent, kp.DATA)
            assert d.raw == kp.encode(kp.DATA, kp.TCP, tid, 0, b"hello")
            assert await f.recv() == kp.h("03 00 00000001 0000 68656c6c6f")
            await f.send(kp.h("04 00 00000001 0000"))
            cl = await agent_next(agent, kp.CLOSE)
            assert cl.raw == kp.encode(kp.CLOSE, kp.TCP, tid, 0)
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_refused_port_error_vector5_and_close_back(culvert):
    """Agent ERROR reaches the forward peer byte-exact (vector 5); the relay answers the agent's ERROR with CLOSE."""
    relay = culvert.relay()
    P = closed_port()

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 2, P))
            c = await agent_next(agent, kp.CONNECT)
            assert await f.recv() == kp.VECTORS[5]
            cl = await agent_next(agent, kp.CLOSE)
            assert cl.raw == kp.encode(kp.CLOSE, kp.TCP, c.id, 0)
            # No redundant CLOSE at session end for the refused id.
            await f.close()
            extra = [m for m in await agent_drain(agent, 1.0) if not isinstance(m, str)]
            assert extra == [], "redundant messages after session end: %r" % [kp.decode(m) for m in extra]
        finally:
            await agent.stop()

    run_async(body())


def test_udp_session_vectors_and_datagrams(culvert, udp_echo):
    relay = culvert.relay()
    P = udp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P, proto="udp")
            assert f.first == "CONNECTED"
            await f.send(kp.encode(kp.CONNECT, kp.UDP, 3, P))
            c = await agent_next(agent, kp.CONNECT)
            assert (c.proto, c.port, c.payload) == (kp.UDP, P, b"")
            assert await f.recv() == kp.encode(kp.CONNECTED, kp.UDP, 3, 0)
            for size in (1, 0, 1400, 65000):
                payload = os.urandom(size)
                await f.send(kp.encode(kp.DATA, kp.UDP, 3, 0, payload))
                got = await f.recv()
                assert got == kp.encode(kp.DATA, kp.UDP, 3, 0, payload), "size %d" % size
            # empty datagram echo is vector 9 exactly
            await f.send(kp.VECTORS[9])
            assert await f.recv() == kp.VECTORS[9]
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


@pytest.mark.parametrize("q,proto", [("udp", kp.UDP), ("UDP", kp.UDP), ("tcp", kp.TCP), ("foo", kp.TCP), (None, kp.TCP)])
def test_session_end_closes_live_ids_with_session_proto(culvert, tcp_echo, udp_echo, q, proto):
    """§6.2 proto mapping: observed through the relay-made CLOSE at session end (session proto)."""
    relay = culvert.relay()
    P = udp_echo.port if proto == kp.UDP else tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P, proto=q)
            assert f.first == "CONNECTED"
            await f.send(kp.encode(kp.CONNECT, proto, 1, P))
            c = await agent_next(agent, kp.CONNECT)
            m = await f.recv_msg()
            assert m.type == kp.CONNECTED and m.id == 1
            await f.close()
            cl = await agent_next(agent, kp.CLOSE)
            assert cl.raw == kp.encode(kp.CLOSE, proto, c.id, 0)
        finally:
            await agent.stop()

    run_async(body())


# --------------------------------------------------------------------------------------------------------
# Id namespacing (§6.3, §11.1)
# --------------------------------------------------------------------------------------------------------


def test_two_sessions_same_id_never_mix(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            a = await RawForward.open(relay.url, CID, P)
            b = await RawForward.open(relay.url, CID, P)
            await a.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            ca = await agent_next(agent, kp.CONNECT)
            assert await a.recv() == kp.VECTORS[2]
            await b.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            cb = await agent_next(agent, kp.CONNECT)
            assert await b.recv() == kp.VECTORS[2]
            assert ca.id != cb.id, "two sessions' id 1 mapped to the same tunnel id"
            for i in range(5):
                pa = b"A%d" % i * 1000
                pb = b"B%d" % i * 1000
                await a.send(kp.encode(kp.DATA, kp.TCP, 1, 0, pa))
                await b.send(kp.encode(kp.DATA, kp.TCP, 1, 0, pb))
                assert await a.read_data(1, len(pa)) == pa
                assert await b.read_data(1, len(pb)) == pb
            # Ending session A closes only A's connection.
            await a.close()
            cl = await agent_next(agent, kp.CLOSE)
            assert cl.id == ca.id
            await b.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"still here"))
            assert await b.read_data(1, 10) == b"still here"
            assert await b.expect_silence(0.5) == []
            await b.close()
        finally:
            await agent.stop()

    run_async(body())


def test_duplicate_connect_in_session_error(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            assert await f.recv() == kp.VECTORS[2]
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            m = await f.recv_msg()
            assert (m.type, m.id, m.port, m.payload) == (kp.ERROR, 1, 0, b"Duplicate client id")
            # the existing connection is untouched
            await f.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"ok?"))
            assert await f.read_data(1, 3) == b"ok?"
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_port_not_allowed_and_port_zero_is_url_port(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, closed_port()))
            m = await f.recv_msg()
            assert (m.type, m.id, m.payload) == (kp.ERROR, 1, b"Port not allowed")
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 2, 0))
            m = await f.recv_msg()
            assert m.raw == kp.encode(kp.CONNECTED, kp.TCP, 2, 0)
            c = await agent_next(agent, kp.CONNECT)
            assert c.port == P, "agent was asked for port %d, not the URL port %d" % (c.port, P)
            await f.send(kp.encode(kp.DATA, kp.TCP, 2, 0, b"zero"))
            assert await f.read_data(2, 4) == b"zero"
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_agent_close_relayed_and_answered_with_close(culvert, tcp_service):
    """Service closes -> agent CLOSE -> session gets CLOSE(session id); relay sends CLOSE back to the agent."""
    relay = culvert.relay()

    def bye(c):
        c.sendall(b"bye")

    svc = tcp_service(bye)

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, svc.port)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 7, svc.port))
            c = await agent_next(agent, kp.CONNECT)
            assert await f.recv() == kp.encode(kp.CONNECTED, kp.TCP, 7, 0)
            assert await f.recv() == kp.encode(kp.DATA, kp.TCP, 7, 0, b"bye")
            assert await f.recv() == kp.encode(kp.CLOSE, kp.TCP, 7, 0)
            cl = await agent_next(agent, kp.CLOSE)
            assert cl.raw == kp.encode(kp.CLOSE, kp.TCP, c.id, 0)
            # ...and no second CLOSE, also not at session end.
            await f.close()
            more = [kp.decode(m) for m in await agent_drain(agent, 1.0) if not isinstance(m, str)]
            assert [m for m in more if m and m.type == kp.CLOSE] == []
        finally:
            await agent.stop()

    run_async(body())


# --------------------------------------------------------------------------------------------------------
# Odd input
# --------------------------------------------------------------------------------------------------------


def test_agent_text_and_malformed_do_not_end_tunnel(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            c = await agent_next(agent, kp.CONNECT)
            assert await f.recv() == kp.VECTORS[2]
            await agent.send_raw("some text from the agent")
            for neg in kp.NEGATIVE_VECTORS:
                await agent.send_raw(neg)
            # Types the relay ignores from an agent, and a message for an unmapped id.
            await agent.send_raw(kp.encode(kp.CONNECT, kp.TCP, 4242, 80))
            await agent.send_raw(kp.encode(kp.PING, kp.TCP, 1, 0))
            await agent.send_raw(kp.encode(kp.PONG, kp.TCP, 1, 0))
            await agent.send_raw(kp.encode(kp.DATA, kp.TCP, 0xDEAD, 0, b"nobody's"))
            await agent.send_raw(b"")
            await asyncio.sleep(0.5)
            assert agent.ended == 0 and agent.ws is not None, "relay ended the tunnel"
            assert await f.expect_silence(0.3) == [], "forward peer saw something"
            # existing connection still flows, and new CONNECTs work
            await f.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"after text"))
            assert await f.read_data(1, 10) == b"after text"
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 2, P))
            m = await f.recv_msg()
            assert m.raw == kp.encode(kp.CONNECTED, kp.TCP, 2, 0)
            assert c.id != 0
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_forward_text_and_malformed_after_connected_ignored(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            assert await f.recv() == kp.VECTORS[2]
            await agent_next(agent, kp.CONNECT)
            await f.send("text after CONNECTED")
            for neg in kp.NEGATIVE_VECTORS:
                await f.send(neg)
            await f.send(kp.encode(kp.PING, kp.TCP, 0x01020304, 0))  # dropped by culvert (§6.3)
            await f.send(kp.encode(kp.DATA, kp.TCP, 99, 0, b"unknown id"))
            await f.send(b"")
            await f.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"still alive"))
            assert await f.read_data(1, 11) == b"still alive"
            seen = [kp.decode(m) for m in await agent_drain(agent, 0.5) if not isinstance(m, str)]
            bad = [m for m in seen if m is None or m.type in (kp.PING, 0x08) or m.proto == 2]
            assert bad == [], "relay passed malformed/dropped types to the agent: %r" % bad
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


@pytest.mark.timeout_s(60)
def test_16MiB_message_accepted_over_is_1009(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            # exactly 16 MiB (unknown type 0x08: accepted and ignored)
            await f.send(kp.encode(0x08, kp.TCP, 1, 0, b"\0" * (kp.RELAY_MAX_MESSAGE - 8)))
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            assert await f.recv(timeout=15) == kp.VECTORS[2]
            # one byte more: 1009
            try:
                await f.send(kp.encode(0x08, kp.TCP, 1, 0, b"\0" * (kp.RELAY_MAX_MESSAGE - 7)))
            except Exception:
                pass
            rest = await f.expect_silence(10)
            assert rest and rest[-1] is None, "session not closed after an oversize message"
            assert f.ws.close_code == 1009, "close code %r" % f.ws.close_code
            # Agent side: the tunnel survives the session's end.
            assert agent.ended == 0
        finally:
            await agent.stop()

    run_async(body(), 55)


@pytest.mark.timeout_s(60)
def test_oversize_agent_message_1009(culvert):
    relay = culvert.relay()

    async def body():
        agent = await start_agent(relay.url)
        ws = agent.ws
        try:
            try:
                await ws.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"\0" * (kp.RELAY_MAX_MESSAGE - 7)))
            except Exception:
                pass
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1009, "close code %r" % ws.close_code
        finally:
            await agent.stop()

    run_async(body(), 55)
    assert relay.proc.alive()


# --------------------------------------------------------------------------------------------------------
# Registration (§6.1, §11.2) and reconnects (§7, §11.10)
# --------------------------------------------------------------------------------------------------------


def test_agent_replacement_and_old_end_does_not_unregister(culvert, tcp_echo):
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        old = await start_agent(relay.url)
        new = None
        try:
            new = KohakuAgent(relay.url, CID, reconnect_delay=0.3)
            await new.start()
            await new.wait_established(timeout=5)
            await asyncio.sleep(0.3)
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            c = await agent_next(new, kp.CONNECT)
            assert c.port == P
            assert await f.recv() == kp.VECTORS[2]
            assert [m for m in await agent_drain(old, 0.3) if not isinstance(m, str)] == [], "old agent got traffic"
            # The old one ends: the new one must stay registered.
            await old.stop()
            await asyncio.sleep(0.5)
            g = await RawForward.open(relay.url, CID, P)
            assert g.first == "CONNECTED", "replacement was unregistered when the old tunnel ended: %r" % g.first
            await g.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            assert await g.recv() == kp.VECTORS[2]
            await g.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"via new"))
            assert await g.read_data(1, 7) == b"via new"
            # the earlier session still works too
            await f.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"f too"))
            assert await f.read_data(1, 5) == b"f too"
            await f.close()
            await g.close()
        finally:
            await old.stop()
            if new:
                await new.stop()

    run_async(body())


def test_session_survives_agent_reconnect(culvert, tcp_echo):
    """Tunnel ends: the session gets CLOSE(session id) and stays open; after re-registration CONNECT works (§11.10)."""
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            f = await RawForward.open(relay.url, CID, P)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            assert await f.recv() == kp.VECTORS[2]
            await agent.ws.close()  # tunnel ends; agent reconnects after 0.3 s
            assert await f.recv(timeout=5) == kp.encode(kp.CLOSE, kp.TCP, 1, 0)
            await agent.wait_established(count=2, timeout=5)
            await wait_registered(relay.url, CID)
            # The old session uses the new tunnel (looked up per CONNECT).
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 2, P))
            m = await f.recv_msg(timeout=5)
            assert m.raw == kp.encode(kp.CONNECTED, kp.TCP, 2, 0), m
            await f.send(kp.encode(kp.DATA, kp.TCP, m.id, 0, b"again"))
            assert await f.read_data(m.id, 5) == b"again"
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_tunnel_send_failed_vector11_while_no_tunnel(culvert, tcp_echo):
    """A session whose agent is gone (and not yet back) gets vector 11 for a CONNECT."""
    relay = culvert.relay()
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url, delay=4)
        try:
            f = await RawForward.open(relay.url, CID, P)
            assert f.first == "CONNECTED"
            await agent.ws.close()
            await asyncio.sleep(0.5)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 9, P))
            assert await f.recv() == kp.VECTORS[11]
            # the session is still open and usable once the agent is back
            await agent.wait_established(count=2, timeout=8)
            await wait_registered(relay.url, CID)
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 10, P))
            assert await f.recv() == kp.encode(kp.CONNECTED, kp.TCP, 10, 0)
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


def test_silent_agent_dropped_with_1011(culvert):
    """Relay pings agents; one that never answers is closed with 1011 after the ping timeout."""
    relay = culvert.relay(extra=["--ping-interval", "0.5", "--ping-timeout", "1"])
    import base64

    s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET /ws/tunnel/silent HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (relay.port, key)
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        assert d, "relay closed during handshake"
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    t0 = time.monotonic()
    frames = []
    stream = rest
    close_payload = None
    s.settimeout(10)
    while close_payload is None:
        while True:
            fr = _parse_frame(stream)
            if fr is None:
                break
            op, payload, used = fr
            stream = stream[used:]
            frames.append(op)
            if op == 0x8:
                close_payload = payload
                break
        if close_payload is not None:
            break
        d = s.recv(65536)
        if not d:
            break
        stream += d
    elapsed = time.monotonic() - t0
    s.close()
    assert 0x9 in frames, "no WS ping seen before close (frames %r)" % frames
    assert close_payload is not None, "connection dropped without a close frame"
    code = int.from_bytes(close_payload[:2], "big")
    assert code == 1011, "close code %d" % code
    assert elapsed < 5, "took %.1fs to drop a silent agent with ping 0.5/1" % elapsed
    assert relay.proc.alive()


def _parse_frame(b):
    """Parse one unmasked server frame; returns (opcode, payload, bytes used) or None if incomplete."""
    if len(b) < 2:
        return None
    op = b[0] & 0x0F
    ln = b[1] & 0x7F
    assert not (b[1] & 0x80), "server frames must not be masked"
    i = 2
    if ln == 126:
        if len(b) < 4:
            return None
        ln = int.from_bytes(b[2:4], "big")
        i = 4
    elif ln == 127:
        if len(b) < 10:
            return None
        ln = int.from_bytes(b[2:10], "big")
        i = 10
    if len(b) < i + ln:
        return None
    return op, b[i : i + ln], i + ln


def test_agent_with_pong_survives_fast_pings(culvert, tcp_echo):
    """An agent that answers pings (websockets does) is not dropped by fast keepalive."""
    relay = culvert.relay(extra=["--ping-interval", "0.3", "--ping-timeout", "1"])

    async def body():
        agent = await start_agent(relay.url)
        try:
            await asyncio.sleep(3)
            assert agent.ended == 0 and agent.ws is not None
            f = await RawForward.open(relay.url, CID, tcp_echo.port)
            assert f.first == "CONNECTED"
            await f.close()
        finally:
            await agent.stop()

    run_async(body())


@pytest.mark.timeout_s(60)
def test_kohakuriver_queue_cap_aborts_only_that_connection(culvert, tcp_echo):
    """§11.4 / issue 2: a KohakuRiver session that stops reading gets its connection aborted at
    the relay's per-connection cap (--conn-buffer), with CLOSE to the agent and a log line; the
    agent's tunnel and another session's connection carry on."""
    relay = culvert.relay(extra=["--allow-anonymous", "--conn-buffer", "256K"])
    P = tcp_echo.port

    async def body():
        agent = await start_agent(relay.url)
        try:
            fa = await RawForward.open(relay.url, CID, P)
            fb = await RawForward.open(relay.url, CID, P)
            await fa.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            ca = await agent_next(agent, kp.CONNECT)
            assert await fa.recv() == kp.VECTORS[2]
            await fb.send(kp.encode(kp.CONNECT, kp.TCP, 1, P))
            cb = await agent_next(agent, kp.CONNECT)
            assert await fb.recv() == kp.VECTORS[2]
            fa.ws.transport.pause_reading()  # session A stops reading its WebSocket
            blob = bytes(range(256)) * 256  # 64 KiB
            for _ in range(400):  # 25 MiB toward A: past socket buffers, tx queue and the cap
                await agent.send_raw(kp.encode(kp.DATA, kp.TCP, ca.id, 0, blob))
            closed = await agent_next(agent, kp.CLOSE, timeout=15)
            assert closed.id == ca.id, "CLOSE for %d, expected A's %d" % (closed.id, ca.id)
            # B is untouched and the tunnel still works.
            await agent.send_raw(kp.encode(kp.DATA, kp.TCP, cb.id, 0, b"still here"))
            assert await fb.recv() == kp.encode(kp.DATA, kp.TCP, 1, 0, b"still here")
            await fb.close()
            fa.ws.transport.resume_reading()
            await fa.close()
        finally:
            await agent.stop()

    run_async(body())
    relay.proc.wait_line(r"aborted: queue toward the forward session is full", stream="err", timeout=5)
