#!/usr/bin/python3
"""Test relay written from the KohakuRiver tunnel spec (§6.1, §6.2), standing in for the reference runner
(``tunnel_server.py``). It follows the spec's description of the reference, not culvert's C code.

Endpoints (``websockets`` server, max message 16 MiB like the reference runner):
  * ``GET /healthz`` -> 200; any other non-WebSocket path -> 404;
  * ``/ws/tunnel/{container_id}``: any id registers (a newcomer replaces the entry);
  * ``/ws/forward/{container_id}/{port}?proto=tcp|udp``: text ``CONNECTED`` (or
    ``Error: Container tunnel not connected (container=ID)`` + close 1011), then the reference routing:
    ids are NOT translated (the shared per-tunnel map of the reference), CONNECT/DATA/CLOSE as §6.2 step 4,
    other types relayed verbatim, at session end a CLOSE(session proto, id, 0) per id in the session set.

Extra, for tests: each tunnel is a ``TunnelHandle`` that records every raw message from the agent
(``handle.rx`` queue and ``handle.log``) and lets a test inject raw messages (``await handle.send(raw)``).
Recording does not change routing.

Library use::

    relay = KohakuRelay(ping_interval=20, ping_timeout=20)
    await relay.start()            # relay.port, relay.url
    t = await relay.wait_tunnel("cid")
    await t.send(bytes.fromhex("0100000000011f90"))
    reply = await t.recv()

CLI: ``kohaku_relay.py --listen 127.0.0.1:0`` prints ``listening on 127.0.0.1:PORT``.
"""

import argparse
import asyncio
import http
import os
import re
import sys
from urllib.parse import parse_qs, urlsplit

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kohaku_proto as kp  # noqa: E402

TUNNEL_RE = re.compile(r"^/ws/tunnel/([^/]+)$")
FORWARD_RE = re.compile(r"^/ws/forward/([^/]+)/(\d+)$")


class TunnelHandle:
    def __init__(self, relay, container_id, ws, generation):
        self.relay = relay
        self.container_id = container_id
        self.ws = ws
        self.generation = generation
        self.rx = asyncio.Queue()
        self.log = []
        self.id_map = {}  # client_id -> ForwardSession (shared by all sessions, as the reference)
        self.done = asyncio.get_event_loop().create_future()
        self.close_code = None

    async def send(self, data):
        await self.ws.send(data)

    async def recv(self, timeout=5.0):
        """Next raw message (bytes, or str for text) the agent sent."""
        return await asyncio.wait_for(self.rx.get(), timeout)

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
        """Return the list of messages received within ``seconds`` (tests assert it is empty)."""
        got = []
        loop = asyncio.get_event_loop()
        end = loop.time() + seconds
        while True:
            left = end - loop.time()
            if left <= 0:
                return got
            try:
                got.append(await asyncio.wait_for(self.rx.get(), left))
            except asyncio.TimeoutError:
                return got

    @property
    def is_open(self):
        return not self.done.done()


class ForwardSession:
    def __init__(self, ws, proto):
        self.ws = ws
        self.proto = proto
        self.ids = set()


class KohakuRelay:
    def __init__(
        self,
        host="127.0.0.1",
        port=0,
        ping_interval=20.0,
        ping_timeout=20.0,
        max_size=kp.RELAY_MAX_MESSAGE,
        record=True,
        verbose=False,
    ):
        self.host = host
        self.port = port
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self.record = record
        self.verbose = verbose
        self.tunnels = {}  # container_id -> current TunnelHandle
        self.history = []  # every TunnelHandle ever registered
        self._cond = None
        self._server = None

    @property
    def url(self):
        return "ws://%s:%d" % (self.host, self.port)

    def _say(self, *a):
        if self.verbose:
            print("[kohaku_relay]", *a, flush=True)

    async def start(self):
        self._cond = asyncio.Condition()
        self._server = await websockets.serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.max_size,
            max_queue=None,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_tunnel(self, container_id, generation=None, timeout=10.0):
        """Wait for a registration of container_id. generation: wait for the n-th registration of any id
        (1-based, counted over the relay's lifetime); default: the current one, or the next."""

        def pred():
            t = self.tunnels.get(container_id)
            if t is None:
                return False
            if generation is not None and t.generation < generation:
                return False
            return t.is_open

        async def _w():
            async with self._cond:
                await self._cond.wait_for(pred)

        await asyncio.wait_for(_w(), timeout)
        return self.tunnels[container_id]

    async def _process_request(self, path, headers):
        p = urlsplit(path).path
        if p == "/healthz":
            return http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"ok\n"
        if TUNNEL_RE.match(p) or FORWARD_RE.match(p):
            return None
        return http.HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain")], b"not found\n"

    async def _handler(self, ws, path=None):
        path = ws.path
        p = urlsplit(path)
        m = TUNNEL_RE.match(p.path)
        if m:
            return await self._tunnel(ws, m.group(1))
        m = FORWARD_RE.match(p.path)
        if m:
            q = parse_qs(p.query)
            proto = kp.UDP if q.get("proto", [""])[0].lower() == "udp" else kp.TCP
            return await self._forward(ws, m.group(1), int(m.group(2)), proto)
        await ws.close(1008, "bad path")

    async def _tunnel(self, ws, cid):
        t = TunnelHandle(self, cid, ws, len(self.history) + 1)
        self.history.append(t)
        async with self._cond:
            self.tunnels[cid] = t  # newcomer replaces the entry, old WS not closed
            self._cond.notify_all()
        self._say("tunnel registered", cid)
        try:
            async for raw in ws:
                if self.record:
                    t.log.append(raw)
                    t.rx.put_nowait(raw)
                if isinstance(raw, str):
                    continue  # (the reference kills the tunnel on text; we only record it)
                msg = kp.decode(raw)
                if msg is None:
                    continue
                if msg.type in (kp.CONNECTED, kp.DATA):
                    s = t.id_map.get(msg.id)
                    if s is not None:
                        await self._safe_send(s.ws, raw)
                elif msg.type in (kp.CLOSE, kp.ERROR):
                    s = t.id_map.pop(msg.id, None)
                    if s is not None:
                        s.ids.discard(msg.id)
                        await self._safe_send(s.ws, raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            t.close_code = ws.close_code
            if not t.done.done():
                t.done.set_result(ws.close_code)
            async with self._cond:
                # Reference bug §11.2 would delete by id; here only if it is still this tunnel, so tests of
                # the agent are not confused by it.
                if self.tunnels.get(cid) is t:
                    del self.tunnels[cid]
                self._cond.notify_all()
            self._say("tunnel ended", cid, ws.close_code)

    @staticmethod
    async def _safe_send(ws, data):
        try:
            await ws.send(data)
        except Exception:
            pass

    async def _forward(self, ws, cid, port, proto):
        t = self.tunnels.get(cid)
        if t is None or not t.is_open:
            await ws.send("Error: Container tunnel not connected (container=%s)" % cid)
            await ws.close(1011, "Container tunnel not connected")
            return
        await ws.send("CONNECTED")
        s = ForwardSession(ws, proto)
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    break  # text ends the session
                msg = kp.decode(raw)
                if msg is None:
                    continue
                if msg.type == kp.CONNECT:
                    s.ids.add(msg.id)
                    try:
                        await t.ws.send(raw)
                    except Exception:
                        await self._safe_send(
                            ws, kp.encode(kp.ERROR, proto, msg.id, 0, b"Tunnel send failed")
                        )
                        continue
                    t.id_map[msg.id] = s
                elif msg.type == kp.DATA:
                    if msg.id in s.ids:
                        await self._safe_send(t.ws, raw)
                elif msg.type == kp.CLOSE:
                    s.ids.discard(msg.id)
                    t.id_map.pop(msg.id, None)
                    await self._safe_send(t.ws, raw)
                else:
                    await self._safe_send(t.ws, raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            for i in list(s.ids):
                await self._safe_send(t.ws, kp.encode(kp.CLOSE, proto, i, 0))
                t.id_map.pop(i, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description="KohakuRiver spec test relay")
    ap.add_argument("--listen", default="127.0.0.1:8001")
    ap.add_argument("--ping-interval", type=float, default=20.0)
    ap.add_argument("--ping-timeout", type=float, default=20.0)
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")

    async def run():
        relay = KohakuRelay(
            host, int(port), a.ping_interval, a.ping_timeout, record=False, verbose=True
        )
        await relay.start()
        print("listening on %s:%d" % (relay.host, relay.port), flush=True)
        await asyncio.Future()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
