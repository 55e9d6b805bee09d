"""Self-test of the spec test peers against each other (no culvert binary involved): if these fail, the peers
are wrong, not culvert."""

import os

import kohaku_proto as kp
from conftest import closed_port, run_async
from kohaku_agent import KohakuAgent
from kohaku_forward import RawForward
from kohaku_relay import KohakuRelay


def test_spec_agent_vectors_against_spec_relay(tcp_echo, udp_echo):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        agent = KohakuAgent(relay.url, "c", reconnect_delay=0.2)
        await agent.start()
        try:
            t = await relay.wait_tunnel("c")
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await t.recv() == kp.VECTORS[2]
            await t.send(kp.encode(kp.CONNECT, kp.TCP, 2, closed_port()))
            assert await t.recv() == kp.VECTORS[5]
            await t.send(kp.h("06 00 01020304 0000"))
            assert await t.recv() == kp.VECTORS[6]
            await t.send(kp.h("04 00 000000ff 0000"))
            for neg in kp.NEGATIVE_VECTORS:
                await t.send(neg)
            assert await t.expect_silence(0.3) == []
            await t.send(kp.encode(kp.CONNECT, kp.UDP, 3, udp_echo.port))
            assert await t.recv() == kp.encode(kp.CONNECTED, kp.UDP, 3, 0)
            await t.send(kp.VECTORS[9])
            assert await t.recv() == kp.VECTORS[9]
            big = os.urandom(65000)
            await t.send(kp.encode(kp.DATA, kp.UDP, 3, 0, big))
            assert await t.recv() == kp.encode(kp.DATA, kp.UDP, 3, 0, big)
        finally:
            await agent.stop()
            await relay.stop()

    run_async(body())


def test_spec_relay_forward_path(tcp_echo):
    async def body():
        relay = KohakuRelay()
        await relay.start()
        agent = KohakuAgent(relay.url, "c", reconnect_delay=0.2)
        await agent.start()
        try:
            f0 = await RawForward.open(relay.url, "other", 1)
            assert f0.first == "Error: Container tunnel not connected (container=other)"
            await relay.wait_tunnel("c")
            f = await RawForward.open(relay.url, "c", tcp_echo.port)
            assert f.first == "CONNECTED"
            await f.send(kp.encode(kp.CONNECT, kp.TCP, 1, tcp_echo.port))
            assert await f.recv() == kp.VECTORS[2]
            await f.send(kp.h("03 00 00000001 0000 68656c6c6f"))
            assert await f.recv() == kp.h("03 00 00000001 0000 68656c6c6f")
            await f.close()
        finally:
            await agent.stop()
            await relay.stop()

    run_async(body())
