"""culvert agent (``culvert agent`` and the ``tunnel-client`` symlink)  <->  spec test relay
(tests/peers/kohaku_relay.py). The relay injects raw tunnel messages and records the agent's raw replies, so the
§10 vectors are checked byte for byte.
"""

import asyncio
import base64
import os
import re
import socket
import threading
import time

import pytest

import kohaku_proto as kp
from conftest import TUNNEL_CLIENT, closed_port, recv_exact, run_async
from kohaku_relay import KohakuRelay

CID = "kohakuriver-task-7"
OS_ERROR_RE = re.compile(rb"^.+ \(os error \d+\)$")


async def relay_and_agent(culvert, cid=CID, argv0=None, extra=(), delay=1, ping_interval=20, env=None):
    relay = KohakuRelay(ping_interval=ping_interval, ping_timeout=20)
    await relay.start()
    agent = culvert.agent(relay.url, cid, reconnect_delay=delay, extra=extra, argv0=argv0, wait=False, env=env)
    t = await relay.wait_tunnel(cid, timeout=10)
    return relay, agent, t


async def recv_for(t, cid, timeout=5.0):
    """Next decoded message from the agent for client id cid (others skipped)."""
    loop = asyncio.get_event_loop()
    end = loop.time() + timeout
    while True:
        m = await t.recv_msg(timeout=max(0.01, end - loop.time()))
        if isinstance(m, str):
            raise AssertionError("agent sent text %r" % m)
        if m is not None and m.id == cid:
            return m


async def ping_check(t, cid=0x0A0B0C0D):
    """The tunnel is alive and the agent's reader is responsive: PING -> PONG."""
    await t.send(kp.encode(kp.PING, kp.TCP, cid, 0))
    raw = await t.recv(timeout=5)
    while kp.decode(raw) is None or kp.decode(raw).type != kp.PONG:
        raw = await t.recv(timeout=5)
    assert raw == kp.encode(kp.PONG, kp.TCP, cid, 0)


# --------------------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------------------


def test_connect_connected_same_id_port_zero(culvert, tcp_echo):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await t.recv() == kp.VECTORS[2]
            await t.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"hello"))
            assert await t.recv() == kp.h("03 00 00000001 0000 68656c6c6f")
            # big-endian id, max-ish values
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 0xFFFFFFFF, tcp_echo.port))
            assert await t.recv() == kp.h("02 00 ffffffff 0000")
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 305419896, tcp_echo.port))
            assert await t.recv() == kp.h("02 00 12345678 0000")
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_vectors_3_4_8_through_agent(culvert, tcp_echo, udp_echo):
    """Vector 3 (DATA id 42 hello) echoes byte-exact; vector 8 (CONNECT UDP max id/port) -> CONNECTED;
    vector 4 (CLOSE UDP id 7) ends that flow: later DATA for id 7 is dropped."""

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 42, tcp_echo.port))
            assert await t.recv() == kp.h("02 00 0000002a 0000")
            await t.send(kp.VECTORS[3])
            assert await t.recv() == kp.VECTORS[3]
            await t.send(kp.VECTORS[8])
            assert await t.recv() == kp.h("02 01 ffffffff 0000")
            await t.send(kp.encode(kp.CONNECT, kp.UDP, 7, udp_echo.port))
            assert await t.recv() == kp.h("02 01 00000007 0000")
            await t.send(kp.encode(kp.DATA, kp.UDP, 7, 0, b"u7"))
            assert await t.recv() == kp.encode(kp.DATA, kp.UDP, 7, 0, b"u7")
            n = len(udp_echo.received)
            await t.send(kp.VECTORS[4])
            await t.send(kp.encode(kp.DATA, kp.UDP, 7, 0, b"after close"))
            got = [kp.decode(m) for m in await t.expect_silence(0.7)]
            assert [m for m in got if m is None or m.id == 7] == [], got
            assert len(udp_echo.received) == n, "datagram sent after CLOSE"
            await ping_check(t)
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_udp_closed_port_flow_closes_after_first_datagram(culvert):
    """§5.1/5.2: UDP CONNECT to a closed port still gets CONNECTED; the ICMP error then closes the flow."""

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            port = closed_port()
            await t.send(kp.encode(kp.CONNECT, kp.UDP, 11, port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.UDP, 11, 0)
            await t.send(kp.encode(kp.DATA, kp.UDP, 11, 0, b"anyone"))
            assert await t.recv() == kp.encode(kp.CLOSE, kp.UDP, 11, 0)
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_vector1_literal_gives_vector2_or_os_error(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.VECTORS[1])
            raw = await t.recv()
            if raw != kp.VECTORS[2]:
                assert raw[:8] == kp.h("05 00 00000001 0000"), raw
                assert OS_ERROR_RE.match(raw[8:]), raw
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_refused_port_error_vector5(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 2, closed_port()))
            assert await t.recv() == kp.VECTORS[5]
            # §11.3: the id is forgotten with the ERROR, so a retried CONNECT with the same id is served.
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 2, closed_port()))
            assert await t.recv() == kp.VECTORS[5]
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_ping_pong_vectors(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.VECTORS[7])
            assert await t.recv() == kp.h("07 00 00000000 0000")
            await t.send(kp.h("06 00 01020304 0000"))
            assert await t.recv() == kp.VECTORS[6]
            # PONG is always proto 0, port 0, the PING's id; PING payload ignored
            await t.send(kp.h("06 01 01020304 1f90 deadbeef"))
            assert await t.recv() == kp.VECTORS[6]
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_unknown_close_and_negative_vectors_ignored(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.h("04 00 000000ff 0000"))
            assert await t.expect_silence(1.0) == []
            for neg in kp.NEGATIVE_VECTORS:
                await t.send(neg)
            # also: PING with a bad proto gets no PONG; relay-side types are ignored; text is ignored
            await t.send(kp.h("06 02 01020304 0000"))
            await t.send(kp.VECTORS[2])
            await t.send(kp.VECTORS[5])
            await t.send(kp.VECTORS[6])
            await t.send(kp.h("03 00 00000063 0000 6869"))  # DATA for unknown id 99
            await t.send("text to the agent")
            await t.send(b"")
            assert await t.expect_silence(1.0) == []
            assert t.is_open, "agent closed the tunnel"
            await ping_check(t)
            assert len(relay.history) == 1, "agent reconnected"
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_duplicate_connect_error_keeps_existing(culvert, tcp_echo):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await t.recv() == kp.VECTORS[2]
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await t.recv() == kp.encode(kp.ERROR, kp.TCP, 1, 0, b"Duplicate client id")
            await t.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"still mine"))
            assert await t.recv() == kp.encode(kp.DATA, kp.TCP, 1, 0, b"still mine")
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_udp_connect_and_datagrams(culvert, udp_echo):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.UDP, 3, udp_echo.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.UDP, 3, 0)
            for size in (1, 0, 1400, 65000):
                payload = os.urandom(size)
                await t.send(kp.encode(kp.DATA, kp.UDP, 3, 0, payload))
                assert await t.recv() == kp.encode(kp.DATA, kp.UDP, 3, 0, payload), "size %d" % size
            assert udp_echo.received[1] == b"", "empty DATA was not sent as an empty datagram"
            await t.send(kp.VECTORS[9])
            assert await t.recv() == kp.VECTORS[9]
            # vector 10 form: big-endian id
            await t.send(kp.encode(kp.CONNECT, kp.UDP, 305419896, udp_echo.port))
            assert await t.recv() == kp.VECTORS[10]
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_data_before_connected_is_queued_then_close_gives_fin(culvert, tcp_service):
    got = {}
    done = threading.Event()

    def record(c):
        buf = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            buf += d
        got["data"] = buf
        done.set()

    svc = tcp_service(record)

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            # CONNECT, DATA, DATA back to back: nothing waits for CONNECTED.
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 5, svc.port))
            await t.send(kp.encode(kp.DATA, kp.TCP, 5, 0, b"early-"))
            await t.send(kp.encode(kp.DATA, kp.TCP, 5, 0, b"bird"))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.TCP, 5, 0)
            await t.send(kp.encode(kp.CLOSE, kp.TCP, 5, 0))
            ok = await asyncio.get_event_loop().run_in_executor(None, done.wait, 5)
            assert ok, "service never saw EOF after CLOSE"
            assert got["data"] == b"early-bird"
            # §11.11: nothing more for that id after the relay's CLOSE
            more = [kp.decode(m) for m in await t.expect_silence(1.0)]
            assert [m for m in more if m is not None and m.id == 5] == []
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_connect_data_close_back_to_back(culvert, tcp_service):
    """CONNECT, DATA, CLOSE before the connect completes: the service still gets the data, then EOF.
    (Whether CONNECTED is still sent for an id the relay already closed is left open by the spec.)"""
    got = {}
    done = threading.Event()

    def record(c):
        buf = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            buf += d
        got["data"] = buf
        done.set()

    svc = tcp_service(record)

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 5, svc.port))
            await t.send(kp.encode(kp.DATA, kp.TCP, 5, 0, b"early-"))
            await t.send(kp.encode(kp.DATA, kp.TCP, 5, 0, b"bird"))
            await t.send(kp.encode(kp.CLOSE, kp.TCP, 5, 0))
            ok = await asyncio.get_event_loop().run_in_executor(None, done.wait, 5)
            assert ok, "service never saw EOF after CLOSE"
            assert got["data"] == b"early-bird"
            more = [kp.decode(m) for m in await t.expect_silence(0.5)]
            assert [m for m in more if m is None or m.type not in (kp.CONNECTED,)] == [], more
            await ping_check(t)
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_local_eof_sends_close(culvert, tcp_service):
    svc = tcp_service(lambda c: c.sendall(b"bye"))

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 6, svc.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.TCP, 6, 0)
            assert await t.recv() == kp.encode(kp.DATA, kp.TCP, 6, 0, b"bye")
            assert await t.recv() == kp.encode(kp.CLOSE, kp.TCP, 6, 0)
            # redundant CLOSE from the relay (reference runners send them) is tolerated
            await t.send(kp.encode(kp.CLOSE, kp.TCP, 6, 0))
            await t.send(kp.encode(kp.CLOSE, kp.TCP, 6, 0))
            assert await t.expect_silence(0.5) == []
            await ping_check(t)
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_large_echo_chunks_within_limit(culvert, tcp_echo):
    """4 MiB through one connection: DATA payloads <= 65536, byte-exact content, port 0, proto 0."""
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 9, tcp_echo.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.TCP, 9, 0)
            data = os.urandom(4 << 20)
            for i in range(0, len(data), 60000):
                await t.send(kp.encode(kp.DATA, kp.TCP, 9, 0, data[i : i + 60000]))
            buf = bytearray()
            while len(buf) < len(data):
                m = await t.recv_msg(timeout=10)
                assert m.raw[:8] == kp.encode(kp.DATA, kp.TCP, 9, 0), m
                assert len(m.payload) <= kp.MAX_DATA
                buf += m.payload
            assert bytes(buf) == data
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


@pytest.mark.timeout_s(60)
def test_stalled_service_does_not_block_reader(culvert, tcp_echo, tcp_service):
    """A service that never reads: 24 MiB of DATA to it must not stop PONGs nor another connection (§11.4)."""
    stop = threading.Event()

    def never_reads(c):
        stop.wait(30)

    sink = tcp_service(never_reads)

    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, sink.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.TCP, 1, 0)
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 2, tcp_echo.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.TCP, 2, 0)
            chunk = b"z" * 65536
            for _ in range(24 * 16):
                await t.send(kp.encode(kp.DATA, kp.TCP, 1, 0, chunk))
            t0 = time.monotonic()
            await t.send(kp.encode(kp.PING, kp.TCP, 77, 0))
            await t.send(kp.encode(kp.DATA, kp.TCP, 2, 0, b"other conn"))
            seen_pong = seen_echo = False
            while not (seen_pong and seen_echo):
                m = await t.recv_msg(timeout=5)
                if m.type == kp.PONG:
                    assert m.raw == kp.encode(kp.PONG, kp.TCP, 77, 0)
                    seen_pong = True
                elif m.id == 2 and m.type == kp.DATA:
                    assert m.payload == b"other conn"
                    seen_echo = True
            assert time.monotonic() - t0 < 5
            assert t.is_open
        finally:
            stop.set()
            agent.kill()
            await relay.stop()

    run_async(body(), 55)


def test_agent_answers_ws_pings(culvert):
    """Relay pings every 0.3 s with a 1 s timeout; the agent must keep answering."""
    async def body():
        relay = KohakuRelay(ping_interval=0.3, ping_timeout=1)
        await relay.start()
        agent = culvert.agent(relay.url, CID, wait=False)
        try:
            t = await relay.wait_tunnel(CID, timeout=10)
            await asyncio.sleep(3)
            assert t.is_open, "relay dropped the agent (close %r): pongs missing" % t.close_code
            assert len(relay.history) == 1
            await ping_check(t)
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_agent_ignores_text_from_relay(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert)
        try:
            await t.send("CONNECTED")
            await t.send("Error: whatever")
            assert await t.expect_silence(0.5) == []
            await ping_check(t)
            assert len(relay.history) == 1
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


def test_reconnect_after_close_and_nothing_resumes(culvert, tcp_service):
    eof = threading.Event()

    def hold(c):
        c.settimeout(10)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        eof.set()

    svc = tcp_service(hold)

    async def body():
        relay, agent, t = await relay_and_agent(culvert, delay=1)
        try:
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, svc.port))
            assert await t.recv() == kp.VECTORS[2]
            t0 = time.monotonic()
            await t.ws.close(1000)
            t2 = await relay.wait_tunnel(CID, generation=2, timeout=8)
            took = time.monotonic() - t0
            assert took < 1 + 1.5, "re-registered after %.1fs with --reconnect-delay 1" % took
            ok = await asyncio.get_event_loop().run_in_executor(None, eof.wait, 5)
            assert ok, "local connection not closed when the tunnel ended"
            # empty table: DATA for the old id is dropped, a new CONNECT with id 1 is fine
            await t2.send(kp.encode(kp.DATA, kp.TCP, 1, 0, b"x"))
            await t2.send(kp.encode(kp.CONNECT, kp.TCP, 1, svc.port))
            assert await t2.recv() == kp.VECTORS[2]
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())


# --------------------------------------------------------------------------------------------------------
# Handshake, tunnel-client, env
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tunnel-client", "compat", "native"])
def test_handshake_bare_headers_and_path_prefix(culvert, mode):
    """§2: GET {prefix}/ws/tunnel/{id}, trailing / stripped; Host/Connection/Upgrade/Version/Key only.

    As tunnel-client (or with --compat) the handshake is exactly the reference one; `culvert
    agent` adds only the native-mode offer `Sec-WebSocket-Protocol: culvert.v1`
    (docs/PROTOCOL.md §1), which a reference runner ignores."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    url = "ws://127.0.0.1:%d/pre/fix/" % port
    if mode == "tunnel-client":
        agent = culvert.agent(url, "kohakuriver-vps-3", argv0=TUNNEL_CLIENT, wait=False)
    else:
        agent = culvert.agent(url, "kohakuriver-vps-3", wait=False,
                              extra=["--compat"] if mode == "compat" else [])
    try:
        c, _ = srv.accept()
        c.settimeout(5)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            assert d
            buf += d
        lines = buf.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert lines[0] == "GET /pre/fix/ws/tunnel/kohakuriver-vps-3 HTTP/1.1", lines[0]
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        assert hdrs.get("host") == "127.0.0.1:%d" % port
        assert hdrs.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in hdrs.get("connection", "").lower()
        assert hdrs.get("sec-websocket-version") == "13"
        assert len(base64.b64decode(hdrs["sec-websocket-key"])) == 16
        forbidden = ["origin", "sec-websocket-extensions", "authorization"]
        if mode == "native":
            assert hdrs.get("sec-websocket-protocol") == "culvert.v1", hdrs
            assert len(hdrs) == 6, hdrs
        else:
            forbidden.append("sec-websocket-protocol")
            assert len(hdrs) == 5, hdrs
        for name in forbidden:
            assert name not in hdrs, "agent sent %s" % name
        c.close()
    finally:
        srv.close()
        agent.kill()


def test_tunnel_client_symlink_drop_in(culvert, tcp_echo):
    assert os.path.islink(TUNNEL_CLIENT) or os.path.exists(TUNNEL_CLIENT), "no %s" % TUNNEL_CLIENT

    async def body():
        relay = KohakuRelay()
        await relay.start()
        p = culvert.procs.start(
            [TUNNEL_CLIENT, "--runner-url", relay.url, "--container-id", CID, "--log-level", "info"],
            name="tunnel-client",
        )
        try:
            t = await relay.wait_tunnel(CID, timeout=10)
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await t.recv() == kp.VECTORS[2]
            await ping_check(t)
        finally:
            p.kill()
            await relay.stop()

    run_async(body())


def test_env_vars_runner_url_container_id(culvert):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        p = culvert.procs.start(
            [culvert.bin, "agent"],
            env={"RUNNER_URL": relay.url, "CONTAINER_ID": "kohakuriver-task-env", "RECONNECT_DELAY": "1"},
            name="agent-env",
        )
        try:
            t = await relay.wait_tunnel("kohakuriver-task-env", timeout=10)
            await ping_check(t)
        finally:
            p.kill()
            await relay.stop()

    run_async(body())


def test_flag_overrides_env(culvert):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        p = culvert.procs.start(
            [TUNNEL_CLIENT, "-r", relay.url, "-c", "from-flag"],
            env={"RUNNER_URL": "ws://127.0.0.1:1", "CONTAINER_ID": "from-env"},
            name="tunnel-client",
        )
        try:
            t = await relay.wait_tunnel("from-flag", timeout=10)
            assert "from-env" not in relay.tunnels
            await ping_check(t)
        finally:
            p.kill()
            await relay.stop()

    run_async(body())


def test_tunnel_established_line_each_time(culvert):
    async def body():
        relay, agent, t = await relay_and_agent(culvert, delay=1)
        try:
            agent.wait_line("tunnel established", timeout=5)
            await t.ws.close(1000)
            await relay.wait_tunnel(CID, generation=2, timeout=8)
            deadline = time.monotonic() + 5
            while agent.count("tunnel established") < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert agent.count("tunnel established") == 2, agent.dump()
        finally:
            agent.kill()
            await relay.stop()

    run_async(body())
