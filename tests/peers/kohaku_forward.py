"""Raw forward peer (what opens ``/ws/forward``), written from the spec (§6.2, §6.6): a plain ``websockets``
client that reads the first text frame and then exchanges raw tunnel messages. Tests drive it byte by byte.
"""

import asyncio
import os
import sys

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kohaku_proto as kp  # noqa: E402


class RawForward:
    def __init__(self, ws, first):
        self.ws = ws
        self.first = first  # the first frame the relay sent (text "CONNECTED" or "Error: ...")

    @classmethod
    async def open(cls, relay_url, container_id, port, proto="tcp", timeout=10.0, max_size=64 << 20):
        url = "%s/ws/forward/%s/%d" % (relay_url.rstrip("/"), container_id, port)
        if proto is not None:
            url += "?proto=" + proto
        ws = await asyncio.wait_for(
            websockets.connect(
                url,
                compression=None,
                ping_interval=None,
                max_size=max_size,
                max_queue=None,
                open_timeout=timeout,
            ),
            timeout,
        )
        first = await asyncio.wait_for(ws.recv(), timeout)
        return cls(ws, first)

    async def send(self, data):
        await self.ws.send(data)

    async def recv(self, timeout=5.0):
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def recv_msg(self, timeout=5.0, skip_types=()):
        while True:
            raw = await self.recv(timeout)
            if isinstance(raw, str):
                return raw
            m = kp.decode(raw)
            if m is not None and m.type in skip_types:
                continue
            return m

    async def expect_silence(self, seconds=1.0):
        got = []
        loop = asyncio.get_event_loop()
        end = loop.time() + seconds
        while True:
            left = end - loop.time()
            if left <= 0:
                return got
            try:
                got.append(await asyncio.wait_for(self.ws.recv(), left))
            except asyncio.TimeoutError:
                return got
            except websockets.ConnectionClosed:
                got.append(None)
                return got

    async def connect_tcp(self, cid, port, timeout=5.0):
        """CONNECT and wait for CONNECTED/ERROR for that id; returns the reply Msg."""
        await self.send(kp.encode(kp.CONNECT, kp.TCP, cid, port))
        while True:
            m = await self.recv_msg(timeout)
            if isinstance(m, str):
                raise AssertionError("unexpected text %r" % m)
            if m.id == cid and m.type in (kp.CONNECTED, kp.ERROR, kp.CLOSE):
                return m

    async def read_data(self, cid, nbytes, timeout=10.0):
        """Collect DATA payloads for cid until nbytes arrived (or CLOSE)."""
        buf = bytearray()
        while len(buf) < nbytes:
            m = await self.recv_msg(timeout)
            if isinstance(m, str):
                raise AssertionError("unexpected text %r" % m)
            if m.id != cid:
                continue
            if m.type == kp.DATA:
                buf += m.payload
            elif m.type in (kp.CLOSE, kp.ERROR):
                break
        return bytes(buf)

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
