"""culvert relay in native mode (docs/PROTOCOL.md, culvert.v1), relay side of issue 3's acceptance.

The agents and sessions here are the Python native peer (tests/peers/native_peer.py), written from
docs/PROTOCOL.md; the reference-style agent is tests/peers/kohaku_agent.py. Visitors are plain sockets on the
relay's public ports. Every check is on real bytes; every test has a wall-clock limit.
"""

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time

import pytest

import kohaku_proto as kp
import native_peer as npeer
from conftest import CULVERT_BIN, run_async
from kohaku_agent import KohakuAgent
from native_peer import (CLOSE, CONNECT, DATA, ERROR, EXPOSED, TCP, UDP, WINDOW0, make_jwt,
                         open_agent, open_session)

TOKEN = "s3cret"
CID = "kohakuriver-task-7"
MiB = 1 << 20


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def token_relay(culvert, extra=()):
    return culvert.relay(extra=["--token", TOKEN] + list(extra))


def run(relay, coro, timeout=25):
    """Run an async test body, then check the relay survived it (a crash after the last assertion, e.g. while
    an agent leaves, would otherwise go unnoticed)."""
    run_async(coro, timeout)
    time.sleep(0.3)
    assert relay.proc.alive(), "relay died (rc %s)\n%s" % (relay.proc.p.poll(), relay.proc.dump())


async def wait_registered(relay, cid=CID, token=TOKEN, timeout=5.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        s = await open_session(relay.url, cid, 9, token=token, native=False)
        last = s.first
        await s.close()
        if last == "CONNECTED":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("relay never reported CONNECTED for %s (last %r)" % (cid, last))


async def wait_unregistered(relay, cid=CID, token=TOKEN, timeout=5.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        s = await open_session(relay.url, cid, 9, token=token, native=False)
        last = s.first
        await s.close()
        if last != "CONNECTED":
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError("%s still registered after %.1fs" % (cid, timeout))


async def native_agent(relay, cid=CID, token=TOKEN, **kw):
    a = await open_agent(relay.url, cid, token=token, **kw)
    assert a.native, "relay did not select culvert.v1 (subprotocol %r)" % a.ws.subprotocol
    await wait_registered(relay, cid, token)
    return a


def raw_handshake(port, path, headers=None, protocol=None, timeout=5.0):
    """A WebSocket upgrade by hand; returns (status, {header: value}, body)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + key]
    if protocol:
        lines.append("Sec-WebSocket-Protocol: " + protocol)
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        head, _, body = buf.partition(b"\r\n\r\n")
        hl = head.decode("latin-1").split("\r\n")
        status = int(hl[0].split(" ")[1])
        hdrs = {}
        for line in hl[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status != 101:
            clen = int(hdrs.get("content-length", "0"))
            while len(body) < clen:
                d = s.recv(65536)
                if not d:
                    break
                body += d
        return status, hdrs, body
    finally:
        s.close()


def wait_count(proc, rx, n, timeout=3.0, stream="err"):
    """Wait until at least n lines of proc's stream match rx."""
    deadline = time.monotonic() + timeout
    while proc.count(rx, stream=stream) < n:
        assert time.monotonic() < deadline, "want %d lines matching %r\n%s" % (n, rx, proc.dump())
        time.sleep(0.02)


def refused_body(status, body):
    assert status == 401, "expected 401, got %d %r" % (status, body)
    return body.decode().strip()


# A deterministic byte stream of any length (random block of prime length, read at an offset).
_BLOCK = os.urandom(1000003)


def pattern(off, n):
    out = bytearray()
    while n > 0:
        i = off % len(_BLOCK)
        k = min(n, len(_BLOCK) - i)
        out += _BLOCK[i:i + k]
        off += k
        n -= k
    return bytes(out)


async def tcp_visitor(port, rcvbuf=None):
    loop = asyncio.get_event_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 3)
    return s


async def recv_n(s, n, timeout=5.0):
    loop = asyncio.get_event_loop()
    buf = bytearray()

    async def go():
        while len(buf) < n:
            d = await loop.sock_recv(s, min(1 << 20, n - len(buf)))
            if not d:
                break
            buf.extend(d)

    try:
        await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        pass
    return bytes(buf)


async def recv_until_eof(s, timeout=5.0):
    """Everything until EOF; returns (data, how) with how in {"eof", "reset", "timeout"}."""
    loop = asyncio.get_event_loop()
    buf = bytearray()

    async def go():
        while True:
            d = await loop.sock_recv(s, 1 << 20)
            if not d:
                return "eof"
            buf.extend(d)

    try:
        how = await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        how = "timeout"
    except (ConnectionResetError, BrokenPipeError):
        how = "reset"
    return bytes(buf), how


def connect_refused(port, timeout=1.0):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


async def fill_until_stalled(st, quiet=1.0, limit=96 * MiB):
    """Agent side: send pattern bytes on st within credit until the relay stops granting (no credit and no
    WINDOW for `quiet` s). Returns the byte count sent."""
    peer = st.peer
    while st.tx_total < limit:
        if st.tx_credit > 0:
            n = min(st.tx_credit, npeer.MAX_DATA)
            await st.send(pattern(st.tx_total, n))
            continue
        try:
            await peer.until(lambda: st.tx_credit > 0 or st.closed or peer.ended, timeout=quiet)
        except AssertionError:
            return st.tx_total
        assert not st.closed and not peer.ended, "stream ended while filling: %r %r" % (st, peer.log[-5:])
    raise AssertionError("the relay kept granting credit for %d MiB while the visitor read nothing" % (limit // MiB))


def types_at_least_8(peer):
    return [m for m in peer.log if m.type >= 8]


# --------------------------------------------------------------------------------------------------------
# 1. negotiation
# --------------------------------------------------------------------------------------------------------


def test_negotiation_native_agent_and_session_get_culvert_v1(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await open_agent(relay.url, CID, token=TOKEN)
        assert a.ws.subprotocol == "culvert.v1"
        await wait_registered(relay)
        s = await open_session(relay.url, CID, 8080, token=TOKEN)
        assert s.ws.subprotocol == "culvert.v1"
        assert s.first == "CONNECTED"
        await s.close()
        await a.close()

    run(relay, body())
    # The 101 names the protocol (raw check of the header, not just the library's view).
    status, hdrs, _ = raw_handshake(relay.port, "/ws/tunnel/other", {"Authorization": "Bearer " + TOKEN},
                                    protocol="culvert.v1")
    assert status == 101 and hdrs.get("sec-websocket-protocol") == "culvert.v1", (status, hdrs)


def test_negotiation_without_subprotocol_is_kohakuriver_mode(culvert):
    """No subprotocol offered: none in the 101, and the relay never sends a type >= 8 to that peer (an EXPOSE
    from it gets no EXPOSED; a native session's stream to it gets no WINDOW on the agent side)."""
    relay = token_relay(culvert)

    async def body():
        a = await open_agent(relay.url, CID, token=TOKEN, native=False)
        assert a.ws.subprotocol is None and not a.native
        await wait_registered(relay)
        await a.expose(1, 8080)
        await a.expose(2, 8081, proto=UDP)
        await asyncio.sleep(1.0)
        assert types_at_least_8(a) == [], a.log

        # A native session talking to this KohakuRiver agent: data flows, the agent never sees WINDOW.
        s = await open_session(relay.url, CID, 8080, token=TOKEN)
        assert s.native and s.first == "CONNECTED"
        sst = await s.connect(1, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        up = os.urandom(600 * 1024)
        await sst.send(up)
        await a.until(lambda: ast.rx_total >= len(up), what="600 KiB at the KohakuRiver agent")
        assert bytes(ast.rx) == up
        down = os.urandom(600 * 1024)
        for i in range(0, len(down), 65536):
            await a.send(kp.encode(DATA, TCP, ast.id, 0, down[i:i + 65536]))
        await s.until(lambda: sst.rx_total >= len(down), what="600 KiB at the session")
        assert bytes(sst.rx) == down
        assert sst.violation is None, sst.violation
        await asyncio.sleep(0.3)
        assert types_at_least_8(a) == [], types_at_least_8(a)
        # KohakuRiver agent: an empty DATA is an empty chunk, not a FIN; the session sees no FIN.
        await s.close()
        await a.close()

    run(relay, body())


def test_negotiation_plain_session_gets_no_native_messages(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        s = await open_session(relay.url, CID, 8080, token=TOKEN, native=False)
        assert s.ws.subprotocol is None and s.first == "CONNECTED"
        sst = await s.connect(3, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        down = os.urandom(1 * MiB)
        await ast.send(down)
        await s.until(lambda: sst.rx_total >= len(down), what="1 MiB at the plain session")
        assert bytes(sst.rx) == down
        await asyncio.sleep(0.3)
        assert types_at_least_8(s) == [], types_at_least_8(s)
        await s.close()
        await a.close()

    run(relay, body())


# --------------------------------------------------------------------------------------------------------
# 2. authentication
# --------------------------------------------------------------------------------------------------------


def _jwt(kind):
    now = int(time.time())
    return {
        "secret": TOKEN,
        "jwt_agent": make_jwt(TOKEN, exp=now + 600, agents=[CID]),
        "jwt_star": make_jwt(TOKEN, exp=now + 600, agents=["*"]),
        "jwt_two": make_jwt(TOKEN, exp=now + 600, agents=["other", CID]),
        "jwt_expired": make_jwt(TOKEN, exp=now - 10, agents=[CID]),
        "jwt_other_agent": make_jwt(TOKEN, exp=now + 600, agents=["kohakuriver-task-8"]),
        "jwt_no_agents": make_jwt(TOKEN, exp=now + 600, no_agents=True),
        "jwt_empty_agents": make_jwt(TOKEN, exp=now + 600, agents=[]),
        "jwt_wrong_key": make_jwt("not-the-secret", exp=now + 600, agents=[CID]),
        "jwt_no_exp": _jwt_no_exp(),
        "jwt_alg_none": _jwt_alg_none(),
        "wrong": "s3cre",
        "wrong_longer": "s3cret-and-more",
    }[kind]


def _jwt_no_exp():
    import hmac
    import json

    h = npeer.b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = npeer.b64url(json.dumps({"agents": [CID]}).encode())
    sig = npeer.b64url(hmac.new(TOKEN.encode(), (h + "." + p).encode(), hashlib.sha256).digest())
    return h + "." + p + "." + sig


def _jwt_alg_none():
    import json

    h = npeer.b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    p = npeer.b64url(json.dumps({"exp": int(time.time()) + 600, "agents": ["*"]}).encode())
    return h + "." + p + "."


# (token kind, expected tunnel result, expected forward result); result = 101 or the 401 reason.
AUTH_CASES = [
    ("secret", 101, 101),
    ("jwt_agent", 101, 101),
    ("jwt_star", 101, 101),
    ("jwt_two", 101, 101),
    ("jwt_no_agents", "token does not allow", 101),
    ("jwt_empty_agents", "token does not allow", 101),
    ("jwt_other_agent", "token does not allow", 101),
    ("jwt_expired", "token expired", "token expired"),
    ("jwt_wrong_key", "bad token", "bad token"),
    ("jwt_no_exp", "bad token", "bad token"),
    ("jwt_alg_none", "bad token", "bad token"),
    ("wrong", "bad token", "bad token"),
    ("wrong_longer", "bad token", "bad token"),
    (None, "missing token", "missing token"),
]


@pytest.mark.parametrize("kind,tunnel,forward", AUTH_CASES, ids=[str(c[0]) for c in AUTH_CASES])
def test_auth_bearer(culvert, kind, tunnel, forward):
    relay = token_relay(culvert)
    tok = _jwt(kind) if kind else None
    hdrs = {"Authorization": "Bearer " + tok} if tok else {}
    refusals = 0
    for path, want in (("/ws/tunnel/" + CID, tunnel), ("/ws/forward/%s/8080?proto=tcp" % CID, forward)):
        status, _, body = raw_handshake(relay.port, path, hdrs, protocol="culvert.v1")
        if want == 101:
            assert status == 101, "%s with %s: %d %r" % (path, kind, status, body)
        else:
            refusals += 1
            reason = refused_body(status, body)
            assert reason.startswith(want), "%s with %s: reason %r, expected %r" % (path, kind, reason, want)
    if refusals:
        wait_count(relay.proc, r"refused", refusals)
    else:
        time.sleep(0.2)
        assert relay.proc.count(r"refused", stream="err") == 0, relay.proc.dump()


def test_auth_websockets_client_sees_401(culvert):
    import websockets

    relay = token_relay(culvert)

    async def body():
        for tok in ("wrong", None):
            with pytest.raises(websockets.InvalidStatusCode) as ei:
                await open_agent(relay.url, CID, token=tok)
            assert ei.value.status_code == 401
        a = await open_agent(relay.url, CID, token=TOKEN)
        assert a.native
        await a.close()

    run(relay, body())
    wait_count(relay.proc, r"refused agent from 127\.0\.0\.1:\d+: bad token", 1)
    wait_count(relay.proc, r"refused agent from 127\.0\.0\.1:\d+: missing token", 1)


def test_auth_jwt_native_agent_registers_and_serves(culvert):
    """A native agent with a JWT for its id registers; a session with a forward-only JWT reaches it."""
    relay = token_relay(culvert)

    async def body():
        a = await open_agent(relay.url, CID, token=make_jwt(TOKEN, agents=[CID]))
        fwd_tok = make_jwt(TOKEN, no_agents=True)
        await wait_registered(relay, token=fwd_tok)
        s = await open_session(relay.url, CID, 8080, token=fwd_tok)
        assert s.first == "CONNECTED"
        sst = await s.connect(1, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        await sst.send(b"through a jwt")
        await a.until(lambda: bytes(ast.rx) == b"through a jwt")
        await s.close()
        await a.close()

    run(relay, body())


def test_auth_path_prefix_reference_agent(culvert, tcp_echo):
    """A reference-style agent (no headers, no subprotocol) dialing /t/s3cret/ws/tunnel/ID registers; a session
    with the token reaches it; a wrong prefix token is refused."""
    relay = token_relay(culvert)

    async def body():
        ag = KohakuAgent(relay.url + "/t/" + TOKEN, CID, reconnect_delay=0.3)
        await ag.start()
        try:
            await ag.wait_established(timeout=5)
            await wait_registered(relay)
            s = await open_session(relay.url, CID, tcp_echo.port, token=TOKEN, native=False)
            assert s.first == "CONNECTED"
            sst = await s.connect(1, tcp_echo.port)
            await s.until(lambda: sst.got_connected, what="CONNECTED from the reference agent")
            payload = os.urandom(300 * 1024)
            await sst.send(payload, honour_credit=False)
            await s.until(lambda: sst.rx_total >= len(payload), what="echo through the reference agent")
            assert bytes(sst.rx) == payload
            await s.close()
            # A session can use the prefix too.
            s2 = await open_session(relay.url, CID, tcp_echo.port, prefix="/t/" + TOKEN, native=False)
            assert s2.first == "CONNECTED"
            await s2.close()
        finally:
            await ag.stop()

    run(relay, body())
    status, _, body_ = raw_handshake(relay.port, "/t/wrong/ws/tunnel/" + CID)
    assert refused_body(status, body_) == "bad token"
    status, _, body_ = raw_handshake(relay.port, "/t/%s/ws/tunnel/%s" % (make_jwt(TOKEN, exp=1, agents=[CID]), CID))
    assert refused_body(status, body_) == "token expired"
    relay.proc.wait_line(r"refused .*bad token", stream="err", timeout=3)


def test_relay_without_token_refuses_to_start(culvert):
    p = culvert.procs.start([CULVERT_BIN, "relay", "--listen", "127.0.0.1:0"], env={"CULVERT_TOKEN": ""},
                            name="relay")
    rc = p.wait_exit(5)
    assert rc == 2, p.dump()
    assert "--allow-anonymous" in p.stderr_text(), p.dump()
    assert "listening" not in p.stdout_text()


def test_relay_token_from_env(culvert):
    p = culvert.procs.start([CULVERT_BIN, "relay", "--listen", "127.0.0.1:0"], env={"CULVERT_TOKEN": "envsecret"},
                            name="relay")
    m = p.wait_line(r"listening on (\S+):(\d+)", timeout=5)
    port = int(m.group(2))
    assert raw_handshake(port, "/ws/tunnel/" + CID, {"Authorization": "Bearer envsecret"})[0] == 101
    status, _, body = raw_handshake(port, "/ws/tunnel/x")
    assert refused_body(status, body) == "missing token"


def test_relay_allow_anonymous_warns_and_admits(culvert, tcp_echo):
    relay = culvert.relay(extra=["--allow-anonymous"])
    relay.proc.wait_line(r"allow-anonymous", stream="err", timeout=3)
    assert relay.proc.count(r"(?i)warn", stream="err") >= 1, relay.proc.dump()

    async def body():
        ag = KohakuAgent(relay.url, CID, reconnect_delay=0.3)
        await ag.start()
        try:
            await ag.wait_established(timeout=5)
            await wait_registered(relay, token=None)
            s = await open_session(relay.url, CID, tcp_echo.port, native=False)
            sst = await s.connect(1, tcp_echo.port)
            await sst.send(b"anonymous hello", honour_credit=False)
            await s.until(lambda: bytes(sst.rx) == b"anonymous hello", what="echo")
            await s.close()
        finally:
            await ag.stop()

    run(relay, body())


def test_relay_token_and_allow_anonymous(culvert):
    """Both flags: no credentials admitted, but a wrong token is still refused."""
    relay = culvert.relay(extra=["--token", TOKEN, "--allow-anonymous"])
    assert raw_handshake(relay.port, "/ws/tunnel/" + CID)[0] == 101
    assert raw_handshake(relay.port, "/ws/tunnel/a2", {"Authorization": "Bearer " + TOKEN})[0] == 101
    status, _, body = raw_handshake(relay.port, "/ws/tunnel/a3", {"Authorization": "Bearer nope"})
    assert refused_body(status, body) == "bad token"


# --------------------------------------------------------------------------------------------------------
# 3. public ports
# --------------------------------------------------------------------------------------------------------


def test_expose_tcp_roundtrip_and_half_close(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        start = len(a.log)
        await a.expose(1, 8080)
        m = await a.wait_msg(lambda m: m.type == EXPOSED, start=start, what="EXPOSED")
        assert (m.proto, m.id, m.payload) == (TCP, 1, b""), m
        port = m.port
        assert port > 0

        v = await tcp_visitor(port)
        st = await a.wait_stream()
        c = a.msgs(lambda m: m.type == CONNECT)[0]
        assert (c.proto, c.port, c.len) == (TCP, 8080, 0) and c.id != 0, c
        await st.connected()
        await loop.sock_sendall(v, b"ping")
        await a.until(lambda: st.rx_total >= 4, what="visitor data at the agent")
        assert bytes(st.rx) == b"ping"
        await st.send(b"pong")
        assert await recv_n(v, 4) == b"pong"

        # Agent FIN: the visitor reads EOF after the data; its own direction stays open.
        await st.send(b"last words")
        await st.fin()
        data, how = await recv_until_eof(v, 3)
        assert (data, how) == (b"last words", "eof")
        await loop.sock_sendall(v, b"after the agent's FIN")
        await a.until(lambda: bytes(st.rx) == b"pingafter the agent's FIN", what="data after FIN")
        assert not st.closed and not st.fin_in

        # Visitor closes its side: the agent sees FIN (empty DATA) or CLOSE.
        v.shutdown(socket.SHUT_WR)
        await a.until(lambda: st.fin_in or st.closed, what="FIN at the agent")
        v.close()
        assert st.violation is None
        await a.close()

    run(relay, body())


def test_expose_visitor_half_close_agent_keeps_sending(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        v = await tcp_visitor(port)
        st = await a.wait_stream()
        await st.connected()
        await loop.sock_sendall(v, b"request")
        v.shutdown(socket.SHUT_WR)
        await a.until(lambda: st.fin_in or st.closed, what="visitor FIN")
        assert bytes(st.rx) == b"request"
        assert st.fin_in and not st.closed, "visitor FIN should be an empty DATA (half-close), got CLOSE"
        reply = os.urandom(700 * 1024)
        await st.send(reply)
        await st.fin()
        data, how = await recv_until_eof(v, 5)
        assert how == "eof" and data == reply, (how, len(data))
        v.close()
        await a.close()

    run(relay, body())


def test_expose_port_not_allowed(culvert):
    relay = token_relay(culvert, ["--allow-ports", "20000-20010"])

    async def body():
        a = await native_agent(relay)
        start = len(a.log)
        await a.expose(1, 8080, 30000)
        m = await a.wait_msg(lambda m: m.type == EXPOSED, start=start)
        assert (m.proto, m.id, m.port, m.payload) == (TCP, 1, 0, b"port not allowed"), m
        port, why = await a.expose_wait(2, 8080, 19999, proto=UDP)
        assert (port, why) == (0, "port not allowed")
        # Port 0 picks one inside the range.
        port, why = await a.expose_wait(3, 8080, 0)
        assert 20000 <= port <= 20010, (port, why)
        await a.close()

    run(relay, body())
    relay.proc.wait_line(r"refused.*port not allowed", stream="err", timeout=3)


def test_expose_port_in_use_by_other_agent(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        b = await native_agent(relay, cid="kohakuriver-task-8")
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        port2, why2 = await b.expose_wait(1, 9090, port)
        assert (port2, why2) == (0, "port in use")
        # The first agent still owns it.
        v = await tcp_visitor(port)
        st = await a.wait_stream()
        assert st.port == 8080
        await st.connected()
        await loop.sock_sendall(v, b"to a")
        await a.until(lambda: bytes(st.rx) == b"to a")
        await asyncio.sleep(0.2)
        assert b.msgs(lambda m: m.type == CONNECT) == []
        v.close()
        await a.close()
        await b.close()

    run(relay, body())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_expose_released_on_disconnect_and_reexposed(culvert, how):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        uport, why = await a.expose_wait(2, 5353, proto=UDP)
        assert uport > 0, why
        v = await tcp_visitor(port)
        st = await a.wait_stream()
        await st.connected()
        await loop.sock_sendall(v, b"x")
        await a.until(lambda: st.rx_total == 1)

        if how == "close":
            await a.close()
        else:
            a.abort()
        t0 = time.monotonic()
        while not connect_refused(port):
            assert time.monotonic() - t0 < 1.0, "public port %d still accepts 1 s after the agent left" % port
            await asyncio.sleep(0.02)
        # The visitor that was connected is closed too.
        _, end = await recv_until_eof(v, 2)
        assert end in ("eof", "reset"), end
        v.close()
        # UDP port released: we can bind it ourselves.
        t0 = time.monotonic()
        while True:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", uport))
                u.close()
                break
            except OSError:
                u.close()
                assert time.monotonic() - t0 < 1.0, "public udp port %d still bound after 1 s" % uport
                await asyncio.sleep(0.02)

        # The agent comes back and exposes the same port again.
        a2 = await native_agent(relay)
        port2, why = await a2.expose_wait(1, 8080, port)
        assert port2 == port, why
        v2 = await tcp_visitor(port)
        st2 = await a2.wait_stream()
        await st2.connected()
        await loop.sock_sendall(v2, b"again")
        await a2.until(lambda: bytes(st2.rx) == b"again")
        await st2.send(b"welcome back")
        assert await recv_n(v2, 12) == b"welcome back"
        v2.close()
        await a2.close()

    run(relay, body())
    relay.proc.wait_line(r"releases tcp port", stream="err", timeout=3)


def test_expose_udp_datagrams(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        start = len(a.log)
        await a.expose(2, 5353, proto=UDP)
        m = await a.wait_msg(lambda m: m.type == EXPOSED, start=start)
        assert (m.proto, m.id, m.payload) == (UDP, 2, b"") and m.port > 0, m
        port = m.port

        sizes = [1, 1400, 65507, 0, 3]
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u1.bind(("127.0.0.1", 0))
        u1.settimeout(3)
        sent = [os.urandom(n) for n in sizes]
        u1.sendto(sent[0], ("127.0.0.1", port))
        st = await a.wait_stream()
        c = a.msgs(lambda m: m.type == CONNECT)[0]
        assert (c.proto, c.port) == (UDP, 5353), c
        await st.connected()
        for d in sent[1:]:
            u1.sendto(d, ("127.0.0.1", port))
            await asyncio.sleep(0.01)
        await a.until(lambda: len(st.datagrams) >= len(sent), what="datagrams at the agent")
        assert st.datagrams == sent, [len(d) for d in st.datagrams]
        assert all(m.proto == UDP for m in a.msgs(lambda m: m.type == DATA))

        # Agent -> visitor: one DATA = one datagram, from the public port to the visitor's address.
        back = [os.urandom(n) for n in (5, 65507, 1200)]
        for d in back:
            await st.send(d)
        for d in back:
            got, addr = await loop.run_in_executor(None, u1.recvfrom, 70000)
            assert got == d and addr == ("127.0.0.1", port), (len(got), len(d), addr)

        # A second visitor address is a second flow (its own id).
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2.bind(("127.0.0.1", 0))
        u2.settimeout(3)
        u2.sendto(b"second", ("127.0.0.1", port))
        st2 = await a.wait_stream(exclude=(st,))
        assert st2.id != st.id and st2.proto == UDP
        await a.until(lambda: st2.datagrams == [b"second"])
        await st2.send(b"to second")
        got, _ = await loop.run_in_executor(None, u2.recvfrom, 70000)
        assert got == b"to second"
        await st.send(b"to first")
        got, _ = await loop.run_in_executor(None, u1.recvfrom, 70000)
        assert got == b"to first"
        u1.close()
        u2.close()
        await a.close()

    run(relay, body())


def test_non_native_expose_is_ignored_but_tunnel_works(culvert):
    """Covered in negotiation too; here: the EXPOSE does not bind anything (no new listener appears)."""
    relay = culvert.relay()

    async def body():
        a = await open_agent(relay.url, CID, native=False)
        await wait_registered(relay, token=None)
        await a.expose(1, 8080)
        await asyncio.sleep(0.5)
        assert types_at_least_8(a) == []
        assert relay.proc.count(r"exposes", stream="err") == 0, relay.proc.dump()
        await a.close()

    run(relay, body())


# --------------------------------------------------------------------------------------------------------
# 4. flow control at the relay
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(60)
def test_flow_visitor_to_agent_bounded_by_credit(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        a.auto_window_default = False
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        v = await tcp_visitor(port)
        total = 4 * MiB
        up = os.urandom(total)
        sender = loop.create_task(loop.sock_sendall(v, up))
        st = await a.wait_stream()
        await st.connected()
        await a.until(lambda: st.rx_total >= WINDOW0, timeout=5, what="the first 256 KiB")
        await asyncio.sleep(1.0)
        assert st.rx_total == WINDOW0, "agent got %d bytes without granting anything (WINDOW0 = %d)" % (
            st.rx_total, WINDOW0)
        assert st.violation is None

        await st.grant(MiB)
        await a.until(lambda: st.rx_total >= WINDOW0 + MiB, timeout=5, what="1 MiB more after WINDOW")
        await asyncio.sleep(0.7)
        assert st.rx_total == WINDOW0 + MiB, st.rx_total
        assert st.violation is None

        # Now consume normally: everything arrives, in order.
        st.auto_window = True
        await st.grant(WINDOW0)
        await a.until(lambda: st.rx_total >= total, timeout=15, what="all 4 MiB")
        assert st.violation is None, st.violation
        assert bytes(st.rx) == up
        await asyncio.wait_for(sender, 5)
        v.close()
        await a.close()

    run(relay, body(), timeout=50)


@pytest.mark.timeout_s(60)
def test_flow_agent_to_visitor_credit_only_as_visitor_reads(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        v = await tcp_visitor(port, rcvbuf=4096)
        st = await a.wait_stream()
        await st.connected()
        sent = await fill_until_stalled(st)
        print("relay accepted %d bytes toward a visitor that reads nothing" % sent)
        assert sent >= WINDOW0, sent
        assert st.tx_credit == 0
        nwin = len(st.windows_in)
        await asyncio.sleep(1.0)
        assert len(st.windows_in) == nwin, "WINDOW while the visitor reads nothing: %r" % st.windows_in[nwin:]
        # Bounded: what the relay accepted is what the kernel socket buffers hold (written = consumed) plus at
        # most one window (<= WINDOW_MAX) queued at the relay.
        kernel = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2]) + 1 * MiB
        assert sent <= npeer.WINDOW_MAX + kernel, "relay accepted %d bytes toward a visitor that reads nothing" % sent

        # The visitor starts reading: credit comes back, the rest flows, nothing is lost.
        extra = 2 * MiB
        reader = asyncio.get_event_loop().create_task(recv_until_eof(v, 20))
        await a.until(lambda: len(st.windows_in) > nwin, timeout=5, what="WINDOW once the visitor reads")
        await st.send(pattern(sent, extra))
        await st.fin()
        data, how = await reader
        assert how == "eof", how
        assert len(data) == sent + extra, (len(data), sent + extra)
        assert data == pattern(0, sent + extra)
        v.close()
        await a.close()

    run(relay, body(), timeout=50)


async def _stalled_stream_and_violation(relay):
    """Stream A stalled (visitor not reading, agent out of credit), stream B live; the agent then sends on A
    beyond its credit. Returns (agent, A, B, visitor A, visitor B, log index before the violation)."""
    a = await native_agent(relay)
    port, why = await a.expose_wait(1, 8080)
    assert port > 0, why
    va = await tcp_visitor(port, rcvbuf=4096)
    sa = await a.wait_stream()
    await sa.connected()
    vb = await tcp_visitor(port)
    sb = await a.wait_stream(exclude=(sa,))
    await sb.connected()
    await fill_until_stalled(sa)
    assert sa.tx_credit == 0
    mark = len(a.log)
    await sa.send(b"v" * 1000, honour_credit=False)
    return a, sa, sb, va, vb, mark


@pytest.mark.timeout_s(60)
def test_flow_violation_aborts_only_that_stream(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a, sa, sb, va, vb, mark = await _stalled_stream_and_violation(relay)
        await a.until(lambda: sa.closed, timeout=3, what="CLOSE for the stream that broke its credit")
        # The visitor of A is closed.
        t0 = time.monotonic()
        while True:
            try:
                d = await asyncio.wait_for(loop.sock_recv(va, 1 << 20), 3)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not d:
                break
            assert time.monotonic() - t0 < 5, "visitor A never closed"
        # B is unaffected, both ways, and the tunnel is still up.
        assert not sb.closed and not a.ended
        payload = os.urandom(512 * 1024)
        await loop.sock_sendall(vb, payload)
        await a.until(lambda: sb.rx_total >= len(payload), what="B visitor -> agent")
        assert bytes(sb.rx) == payload
        await sb.send(payload[::-1])
        assert await recv_n(vb, len(payload)) == payload[::-1]
        va.close()
        vb.close()
        await a.close()

    run(relay, body(), timeout=50)
    relay.proc.wait_line(r"aborted", stream="err", timeout=3)


@pytest.mark.timeout_s(60)
def test_flow_violation_error_text(culvert):
    """PROTOCOL.md §3: a DATA beyond the credit ends that stream with ERROR "flow control violation" and CLOSE."""
    relay = token_relay(culvert)

    async def body():
        a, sa, sb, va, vb, mark = await _stalled_stream_and_violation(relay)
        await a.until(lambda: sa.closed, timeout=3, what="CLOSE")
        ends = a.msgs(lambda m: m.id == sa.id and m.type in (ERROR, CLOSE), start=mark)
        assert [m.type for m in ends] == [ERROR, CLOSE] and ends[0].payload == b"flow control violation", ends
        va.close()
        vb.close()
        await a.close()

    run(relay, body(), timeout=50)


# --------------------------------------------------------------------------------------------------------
# 5. a stalled visitor stops only its own stream
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(90)
def test_stalled_visitor_does_not_stop_other_stream(culvert):
    relay = token_relay(culvert)

    async def body():
        loop = asyncio.get_event_loop()
        a = await native_agent(relay)
        port, why = await a.expose_wait(1, 8080)
        assert port > 0, why
        va = await tcp_visitor(port, rcvbuf=4096)
        sa = await a.wait_stream()
        await sa.connected()
        a_sent = await fill_until_stalled(sa)
        nwin = len(sa.windows_in)

        vb = await tcp_visitor(port)
        sb = await a.wait_stream(exclude=(sa,))
        await sb.connected()
        n = 8 * MiB
        up, down = os.urandom(n), os.urandom(n)
        t0 = time.monotonic()
        up_task = loop.create_task(loop.sock_sendall(vb, up))
        down_rx = loop.create_task(recv_n(vb, n, timeout=40))
        await sb.send(down)
        await a.until(lambda: sb.rx_total >= n, timeout=40, what="8 MiB visitor B -> agent")
        got_down = await down_rx
        dt = time.monotonic() - t0
        await asyncio.wait_for(up_task, 5)
        assert bytes(sb.rx) == up, "B upstream corrupted (%d bytes)" % sb.rx_total
        assert got_down == down, "B downstream: %d of %d bytes, or corrupted" % (len(got_down), n)
        assert sb.violation is None and sa.violation is None
        print("stream B: 8 MiB each way in %.2fs while A was stalled" % dt)

        # A got no credit meanwhile, and still delivers everything once its visitor reads.
        assert len(sa.windows_in) == nwin
        assert not sa.closed
        reader = loop.create_task(recv_until_eof(va, 20))
        await a.until(lambda: len(sa.windows_in) > nwin, timeout=5, what="A's credit after its visitor reads")
        await sa.fin()
        data, how = await reader
        assert how == "eof" and data == pattern(0, a_sent), (how, len(data), a_sent)
        va.close()
        vb.close()
        await a.close()

    run(relay, body(), timeout=80)


# --------------------------------------------------------------------------------------------------------
# 6. native session <-> native agent
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(90)
def test_native_session_to_native_agent_16mib_both_ways(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        s = await open_session(relay.url, CID, 8080, token=TOKEN)
        assert s.native and s.first == "CONNECTED"
        sid = 0x01020304
        sst = await s.connect(sid, 8080)
        ast = await a.wait_stream()
        connects = a.msgs(lambda m: m.type == CONNECT)
        assert len(connects) == 1 and (connects[0].proto, connects[0].port) == (TCP, 8080), connects
        assert ast.id != sid, "the relay should translate the session's id (got %#x)" % ast.id
        await ast.connected()
        await s.until(lambda: sst.got_connected, what="CONNECTED at the session")
        assert s.msgs(lambda m: m.type == 2)[0].id == sid

        n = 16 * MiB
        up, down = os.urandom(n), os.urandom(n)
        for st in (sst, ast):
            st.keep_rx = False
        t0 = time.monotonic()
        await asyncio.gather(sst.send(up), ast.send(down))
        await a.until(lambda: ast.rx_total >= n, timeout=40, what="16 MiB session -> agent")
        await s.until(lambda: sst.rx_total >= n, timeout=40, what="16 MiB agent -> session")
        dt = time.monotonic() - t0
        assert ast.rx_total == n and sst.rx_total == n
        assert ast.rx_hash.digest() == hashlib.sha256(up).digest(), "upstream corrupted"
        assert sst.rx_hash.digest() == hashlib.sha256(down).digest(), "downstream corrupted"
        assert ast.violation is None, "relay exceeded the agent's window: " + ast.violation
        assert sst.violation is None, "relay exceeded the session's window: " + sst.violation
        assert sst.windows_in and ast.windows_in
        # Every message the session got for this stream carries its own id.
        assert {m.id for m in s.log} == {sid}, {m.id for m in s.log}
        print("16 MiB each way in %.2fs" % dt)

        # FIN both ways, in order after the data.
        await sst.fin()
        await a.until(lambda: ast.fin_in, what="session FIN at the agent")
        assert not ast.closed
        await ast.send(b"tail")
        await ast.fin()
        await s.until(lambda: sst.fin_in, what="agent FIN at the session")
        assert sst.rx_total == n + 4 and not sst.closed
        await s.close()
        await a.close()

    run(relay, body(), timeout=80)


def test_native_session_window_flow_is_a_hop(culvert):
    """The relay returns WINDOW to the session only as the agent takes the data: with an agent that grants
    nothing, the session's window is never refilled beyond what the relay can queue."""
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        a.auto_window_default = False
        s = await open_session(relay.url, CID, 8080, token=TOKEN)
        sst = await s.connect(1, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        payload = os.urandom(4 * MiB)
        sender = asyncio.get_event_loop().create_task(sst.send(payload))
        await a.until(lambda: ast.rx_total >= WINDOW0, what="first window at the agent")
        await asyncio.sleep(1.0)
        assert ast.rx_total == WINDOW0
        if sst.tx_total > 3 * WINDOW0:
            sender.cancel()
        # The relay may have taken one window from the session (queued) and granted one more, no more.
        assert sst.tx_total <= 3 * WINDOW0, "session sent %d with the agent granting nothing (relay log: %s)" % (
            sst.tx_total, [l for l in relay.proc.err if "abort" in l])
        ast.auto_window = True
        await ast.grant(WINDOW0)
        await asyncio.wait_for(sender, 15)
        await a.until(lambda: ast.rx_total >= len(payload), timeout=15)
        assert bytes(ast.rx) == payload and ast.violation is None
        await s.close()
        await a.close()

    run(relay, body())


@pytest.mark.timeout_s(90)
def test_native_session_slow_agent_no_loss(culvert):
    """PROTOCOL.md §3: a native stream never loses data. A session that honours its credit sends 32 MiB to an
    agent that consumes slowly for 3 s (256 KiB per 0.2 s), then fast: every byte arrives, the stream stays open."""
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        a.auto_window_default = False
        s = await open_session(relay.url, CID, 8080, token=TOKEN)
        sst = await s.connect(1, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        ast.keep_rx = False
        n = 32 * MiB
        up = os.urandom(n)
        sender = asyncio.get_event_loop().create_task(sst.send(up))
        try:
            await slow_then_fast(a, s, ast, sst, sender, n, up)
        finally:
            sender.cancel()
            if sender.done() and not sender.cancelled():
                sender.exception()
        await s.close()
        await a.close()

    async def slow_then_fast(a, s, ast, sst, sender, n, up):
        for _ in range(15):
            await asyncio.sleep(0.2)
            assert not ast.closed and not sst.closed, "stream aborted during the slow phase (%d bytes at agent)" % (
                ast.rx_total)
            await ast.grant(WINDOW0)
        ast.auto_window = True
        await ast.grant(WINDOW0)
        await a.until(lambda: ast.rx_total >= n or ast.closed or sst.closed, timeout=40, what="32 MiB")
        assert not ast.closed and not sst.closed, "stream aborted: agent got %d of %d bytes, session %r" % (
            ast.rx_total, n, s.log[-3:])
        assert ast.rx_total == n and ast.rx_hash.digest() == hashlib.sha256(up).digest()
        assert ast.violation is None
        await asyncio.wait_for(sender, 5)

    run(relay, body(), timeout=80)


# --------------------------------------------------------------------------------------------------------
# 7. KohakuRiver session <-> native agent
# --------------------------------------------------------------------------------------------------------


def test_plain_session_native_agent_fin_becomes_close(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        s = await open_session(relay.url, CID, 8080, token=TOKEN, native=False)
        assert not s.native and s.first == "CONNECTED"
        sst = await s.connect(5, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        await s.until(lambda: sst.got_connected)
        await sst.send(b"hello agent", honour_credit=False)
        await a.until(lambda: bytes(ast.rx) == b"hello agent")
        await ast.send(b"bye")
        await ast.fin()
        await s.until(lambda: sst.closed, what="CLOSE at the KohakuRiver session")
        assert bytes(sst.rx) == b"bye"
        kinds = [(m.type, m.id, m.len) for m in s.log]
        assert kinds == [(2, 5, 0), (DATA, 5, 3), (CLOSE, 5, 0)], kinds
        await asyncio.sleep(0.2)
        assert not s.msgs(lambda m: m.type == DATA and m.len == 0), "an empty DATA reached a KohakuRiver session"
        await s.close()
        await a.close()

    run(relay, body())


def test_plain_session_close_reaches_native_agent(culvert):
    relay = token_relay(culvert)

    async def body():
        a = await native_agent(relay)
        s = await open_session(relay.url, CID, 8080, token=TOKEN, native=False)
        sst = await s.connect(9, 8080)
        ast = await a.wait_stream()
        await ast.connected()
        await sst.send(b"x", honour_credit=False)
        await sst.close()
        await a.until(lambda: ast.closed, what="CLOSE at the agent")
        assert bytes(ast.rx) == b"x"
        await s.close()
        await a.close()

    run(relay, body())


# --------------------------------------------------------------------------------------------------------
# keepalive (relay side): a native agent that stops answering pings is dropped within two intervals
# --------------------------------------------------------------------------------------------------------


def _mask_frame(opcode, payload):
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _parse_frames(buf):
    out = []
    i = 0
    while i + 2 <= len(buf):
        b0, b1 = buf[i], buf[i + 1]
        n = b1 & 0x7F
        j = i + 2
        if n == 126:
            n = struct.unpack("!H", buf[j:j + 2])[0]
            j += 2
        elif n == 127:
            n = struct.unpack("!Q", buf[j:j + 8])[0]
            j += 8
        if j + n > len(buf):
            break
        out.append((b0 & 0x0F, buf[j:j + n]))
        i = j + n
    return out


@pytest.mark.timeout_s(30)
def test_keepalive_silent_native_agent_dropped_and_port_released(culvert):
    relay = token_relay(culvert, ["--ping-interval", "1", "--ping-timeout", "1"])

    async def body():
        # A live native agent (the library answers pings) on another id, as a control.
        live = await native_agent(relay, cid="kohakuriver-task-live")
        key = base64.b64encode(os.urandom(16)).decode()
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        s.sendall(("GET /ws/tunnel/%s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: culvert.v1\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % (CID, key, TOKEN)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(_mask_frame(0x2, npeer.expose_msg(1, 8080)))
        port = None
        while port is None:
            rest += s.recv(4096)
            for op, p in _parse_frames(rest):
                if op == 0x2 and p[0] == EXPOSED:
                    port = struct.unpack(">H", p[6:8])[0]
        assert port > 0
        await wait_registered(relay)
        t0 = time.monotonic()
        # From now on this agent reads nothing and answers no ping.
        t_gone = await wait_unregistered(relay, timeout=6)
        dt = t_gone - t0
        assert dt <= 3.0, "silent agent dropped after %.1fs with a 1 s ping interval" % dt
        assert connect_refused(port), "public port still open after the tunnel was dropped"
        # The relay closed with 1011 (the close frame follows the unanswered pings).
        s.settimeout(2)
        data = rest
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except (socket.timeout, ConnectionResetError):
            pass
        frames = _parse_frames(data)
        closes = [p for op, p in frames if op == 0x8]
        pings = [p for op, p in frames if op == 0x9]
        assert pings, "no ping from the relay: %r" % frames[:5]
        assert closes and struct.unpack("!H", closes[0][:2])[0] == 1011, frames[-3:]
        s.close()
        # The live agent, which answers pings, is still there.
        assert not live.ended
        await wait_registered(relay, cid="kohakuriver-task-live")
        await live.close()

    run(relay, body())
