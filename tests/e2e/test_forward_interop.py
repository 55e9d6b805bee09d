"""culvert forward  <->  spec test relay (reference runner behaviour: ids relayed verbatim) + spec test agent.
Checks what forward puts on the wire: ids per session from 1 without reuse, CONNECT with the session proto and
REMOTE_PORT, DATA <= 65536, one UDP datagram per DATA, one id per UDP source address."""

import asyncio
import os
import re
import socket
import time

import kohaku_proto as kp
from conftest import FORWARD_RE, run_async
from kohaku_agent import KohakuAgent
from kohaku_relay import KohakuRelay

CID = "kohakuriver-task-5"


async def wait_line(p, pattern, timeout=10):
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(p.out):
            m = rx.search(line)
            if m:
                return m
        if not p.alive():
            break
        await asyncio.sleep(0.05)
    raise AssertionError("no %r\n%s" % (pattern, p.dump()))


async def connects_seen(agent, n, timeout=5):
    out = []
    loop = asyncio.get_event_loop()
    end = loop.time() + timeout
    while len(out) < n:
        m = await agent.recv_msg(timeout=max(0.01, end - loop.time()))
        if m.type == kp.CONNECT:
            out.append(m)
    return out


def test_forward_tcp_ids_and_connect_against_reference_relay(culvert, tcp_echo):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        agent = KohakuAgent(relay.url, CID, reconnect_delay=0.3)
        await agent.start()
        await relay.wait_tunnel(CID)
        p = culvert.forward(relay.url, CID, tcp_echo.port, wait=False)
        try:
            m = await wait_line(p, FORWARD_RE)
            port = int(m.group(3))
            loop = asyncio.get_event_loop()
            for i in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                payload = os.urandom(200000) + b"%d" % i
                w.write(payload)
                got = await asyncio.wait_for(r.readexactly(len(payload)), 10)
                assert got == payload
                w.close()
            cs = await connects_seen(agent, 3)
            assert [c.id for c in cs] == [1, 2, 3]
            for c in cs:
                assert c.raw == kp.encode(kp.CONNECT, kp.TCP, c.id, tcp_echo.port)
            # every DATA forward sent was <= 65536 bytes and carried a known id
            datas = [kp.decode(x) for x in agent.log if not isinstance(x, str)]
            datas = [d for d in datas if d and d.type == kp.DATA]
            assert datas and all(len(d.payload) <= kp.MAX_DATA and d.id in (1, 2, 3) for d in datas)
        finally:
            p.kill()
            await agent.stop()
            await relay.stop()

    run_async(body())


def test_forward_udp_one_id_per_source_against_reference_relay(culvert, udp_echo):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        agent = KohakuAgent(relay.url, CID, reconnect_delay=0.3)
        await agent.start()
        await relay.wait_tunnel(CID)
        p = culvert.forward(relay.url, CID, udp_echo.port, proto="udp", wait=False)
        try:
            m = await wait_line(p, FORWARD_RE)
            port = int(m.group(3))
            loop = asyncio.get_event_loop()
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for s in (a, b):
                s.settimeout(3)
                s.connect(("127.0.0.1", port))
            for s, msg in ((a, b"from a"), (b, b"from b"), (a, b"a again"), (a, b"")):
                s.send(msg)
                got = await loop.run_in_executor(None, s.recv, 65536)
                assert got == msg
            cs = await connects_seen(agent, 2)
            assert [c.raw for c in cs] == [
                kp.encode(kp.CONNECT, kp.UDP, 1, udp_echo.port),
                kp.encode(kp.CONNECT, kp.UDP, 2, udp_echo.port),
            ]
            a.close()
            b.close()
        finally:
            p.kill()
            await agent.stop()
            await relay.stop()

    run_async(body())
