#!/usr/bin/python3
"""Test agent written from the KohakuRiver tunnel spec (§2, §5, §7), standing in for the reference Rust
``tunnel-client``. Nobody here wrote it against culvert's C code; it follows the spec only.

Behaviour:
  * dials ``{runner_url minus trailing /}/ws/tunnel/{container_id}`` with a plain ``websockets`` client
    (no compression, no User-Agent, no subprotocol), answers WS pings (the library does), sends no pings;
  * CONNECT -> TCP/UDP to 127.0.0.1:port; CONNECTED(proto,id,0) or ERROR(00,id,0,"<strerror> (os error N)");
  * the id enters the table before connecting, so early DATA is queued and written afterwards;
  * DATA for unknown ids dropped; CLOSE for known ids flushes and shuts the write side; unknown CLOSE ignored;
  * duplicate CONNECT -> ERROR "Duplicate client id" (culvert behaviour §11.13);
  * PING -> PONG(00,id,0) (no PONG for a bad proto); everything odd ignored (<8 bytes, bad type/proto, text);
  * a WS ending clears the table and the agent reconnects after a fixed delay.

Extra, for tests: every message received from the relay is recorded (``agent.rx``, an asyncio.Queue of raw
bytes/str, and ``agent.log``, a list), and ``send_raw()`` injects arbitrary messages.

Library use (inside a running asyncio loop)::

    agent = KohakuAgent("ws://127.0.0.1:8001", "kohakuriver-task-1", reconnect_delay=0.5)
    await agent.start()
    await agent.wait_established()
    ...
    await agent.stop()

CLI: ``kohaku_agent.py --runner-url URL --container-id ID [--reconnect-delay S] [--max-reconnect N]``;
prints ``tunnel established`` on stdout each time the tunnel comes up.
"""

import argparse
import asyncio
import errno as errno_mod
import os
import socket
import sys

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kohaku_proto as kp  # noqa: E402


class _TcpConn:
    def __init__(self, cid):
        self.id = cid
        self.proto = kp.TCP
        self.pending = []  # DATA that arrived before the connect completed
        self.writer = None
        self.close_requested = False
        self.task = None


class _UdpConn:
    def __init__(self, cid):
        self.id = cid
        self.proto = kp.UDP
        self.sock = None


class KohakuAgent:
    def __init__(
        self,
        runner_url,
        container_id,
        reconnect_delay=1.0,
        max_reconnect=0,
        dial_host="127.0.0.1",
        record=True,
        verbose=False,
        ssl=None,
    ):
        self.url = runner_url.rstrip("/") + "/ws/tunnel/" + container_id
        self.container_id = container_id
        self.reconnect_delay = reconnect_delay
        self.max_reconnect = max_reconnect
        self.dial_host = dial_host
        self.record = record
        self.verbose = verbose
        self.ssl = ssl  # an ssl.SSLContext for wss:// (None: websockets' default)
        self.ws = None
        self.table = {}
        self.rx = asyncio.Queue()
        self.log = []
        self.established = 0
        self.ended = 0
        self.gave_up = False
        self._established_cond = asyncio.Condition()
        self._task = None
        self._stopping = False

    # ---- public -------------------------------------------------------------------------------

    async def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self):
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        self._drop_all()

    async def wait_established(self, count=None, timeout=10):
        """Wait until the tunnel has been established ``count`` times in total (default: once more than
        currently, if not connected now, else return immediately)."""
        if count is None:
            count = self.established if self.ws is not None else self.established + 1

        async def _w():
            async with self._established_cond:
                await self._established_cond.wait_for(lambda: self.established >= count)

        await asyncio.wait_for(_w(), timeout)
        return self.ws

    async def send_raw(self, data):
        ws = self.ws
        if ws is None:
            raise RuntimeError("agent tunnel not up")
        await ws.send(data)

    async def recv_raw(self, timeout=5.0):
        return await asyncio.wait_for(self.rx.get(), timeout)

    async def recv_msg(self, timeout=5.0, skip_types=()):
        """Next binary message from the relay, decoded, skipping types in skip_types."""
        while True:
            raw = await self.recv_raw(timeout)
            if isinstance(raw, str):
                continue
            m = kp.decode(raw)
            if m is None or m.type in skip_types:
                continue
            return m

    # ---- internals ----------------------------------------------------------------------------

    def _say(self, *a):
        if self.verbose:
            print("[kohaku_agent]", *a, flush=True)

    async def _run(self):
        attempt = 0
        while not self._stopping:
            attempt += 1
            if self.max_reconnect > 0 and attempt > self.max_reconnect:
                self.gave_up = True
                return
            try:
                ws = await websockets.connect(
                    self.url,
                    compression=None,
                    user_agent_header=None,
                    max_size=64 * 1024 * 1024,
                    ping_interval=None,
                    open_timeout=10,
                    max_queue=None,
                    **({"ssl": self.ssl} if self.ssl is not None else {}),
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # handshake failure: counts as an attempt
                self._say("handshake failed:", e)
                ws = None
            if ws is not None:
                attempt = 0
                self.ws = ws
                async with self._established_cond:
                    self.established += 1
                    self._established_cond.notify_all()
                if self.verbose:
                    print("tunnel established", flush=True)
                try:
                    await self._serve(ws)
                except asyncio.CancelledError:
                    await ws.close()
                    raise
                except Exception as e:
                    self._say("tunnel ended:", e)
                finally:
                    self.ws = None
                    self.ended += 1
                    self._drop_all()
            await asyncio.sleep(self.reconnect_delay)

    def _drop_all(self):
        for c in list(self.table.values()):
            self._close_local(c)
        self.table.clear()

    def _close_local(self, c):
        if isinstance(c, _TcpConn):
            if c.task:
                c.task.cancel()
            if c.writer:
                try:
                    c.writer.close()
                except Exception:
                    pass
        else:
            if c.sock is not None:
                try:
                    asyncio.get_event_loop().remove_reader(c.sock.fileno())
                except Exception:
                    pass
                c.sock.close()
                c.sock = None

    async def _send(self, ws, data):
        try:
            await ws.send(data)
        except Exception:
            pass

    async def _serve(self, ws):
        async for raw in ws:
            if self.record:
                self.log.append(raw)
                self.rx.put_nowait(raw)
            if isinstance(raw, str):
                continue  # the reference agent ignores text
            m = kp.decode(raw)
            if m is None:
                continue
            if m.proto not in (kp.TCP, kp.UDP):
                continue
            if m.type == kp.CONNECT:
                self._on_connect(ws, m)
            elif m.type == kp.DATA:
                self._on_data(m)
            elif m.type == kp.CLOSE:
                self._on_close(m)
            elif m.type == kp.PING:
                await self._send(ws, kp.encode(kp.PONG, kp.TCP, m.id, 0))
            # CONNECTED / ERROR / PONG / unknown: ignored

    def _on_connect(self, ws, m):
        if m.id in self.table:
            asyncio.ensure_future(
                self._send(ws, kp.encode(kp.ERROR, m.proto, m.id, 0, b"Duplicate client id"))
            )
            return
        if m.proto == kp.TCP:
            c = _TcpConn(m.id)
            self.table[m.id] = c
            c.task = asyncio.ensure_future(self._tcp_conn(ws, c, m.port))
        else:
            c = _UdpConn(m.id)
            self.table[m.id] = c
            self._udp_open(ws, c, m.port)

    def _on_data(self, m):
        c = self.table.get(m.id)
        if c is None:
            return
        if isinstance(c, _TcpConn):
            if c.writer is None:
                c.pending.append(m.payload)
            elif m.payload:
                c.writer.write(m.payload)
        else:
            if c.sock is not None:
                try:
                    c.sock.send(m.payload)
                except OSError:
                    pass

    def _on_close(self, m):
        c = self.table.pop(m.id, None)
        if c is None:
            return
        if isinstance(c, _TcpConn):
            if c.writer is None:
                c.close_requested = True  # connect in progress: shut down once it completes
            else:
                try:
                    c.writer.write_eof()
                except Exception:
                    pass
        else:
            self._close_local(c)

    async def _tcp_conn(self, ws, c, port):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.dial_host, port), 10
            )
        except asyncio.TimeoutError:
            e = errno_mod.ETIMEDOUT
            if self.table.get(c.id) is c:
                del self.table[c.id]
            await self._send(ws, kp.encode(kp.ERROR, kp.TCP, c.id, 0, kp.os_error_text(e)))
            return
        except OSError as ex:
            e = ex.errno or errno_mod.ECONNREFUSED
            if self.table.get(c.id) is c:
                del self.table[c.id]
            await self._send(ws, kp.encode(kp.ERROR, kp.TCP, c.id, 0, kp.os_error_text(e)))
            return
        c.writer = writer
        await self._send(ws, kp.encode(kp.CONNECTED, kp.TCP, c.id, 0))
        for chunk in c.pending:
            if chunk:
                writer.write(chunk)
        c.pending = []
        if c.close_requested:
            try:
                writer.write_eof()
            except Exception:
                pass
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await ws.send(kp.encode(kp.DATA, kp.TCP, c.id, 0, data))
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:
            pass
        if self.table.get(c.id) is c:
            del self.table[c.id]
        # Local EOF/error -> CLOSE(00,id,0), as the reference does (also after the relay's own CLOSE).
        if self.ws is ws:
            await self._send(ws, kp.encode(kp.CLOSE, kp.TCP, c.id, 0))
        writer.close()

    def _udp_open(self, ws, c, port):
        loop = asyncio.get_event_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.bind((self.dial_host, 0))
            s.connect((self.dial_host, port))
        except OSError as ex:
            s.close()
            del self.table[c.id]
            asyncio.ensure_future(
                self._send(ws, kp.encode(kp.ERROR, kp.UDP, c.id, 0, kp.os_error_text(ex.errno)))
            )
            return
        c.sock = s

        def readable():
            try:
                d = s.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                if self.table.get(c.id) is c:
                    del self.table[c.id]
                self._close_local(c)
                asyncio.ensure_future(self._send(ws, kp.encode(kp.CLOSE, kp.UDP, c.id, 0)))
                return
            asyncio.ensure_future(self._send(ws, kp.encode(kp.DATA, kp.UDP, c.id, 0, d)))

        loop.add_reader(s.fileno(), readable)
        asyncio.ensure_future(self._send(ws, kp.encode(kp.CONNECTED, kp.UDP, c.id, 0)))


def main(argv=None):
    ap = argparse.ArgumentParser(description="KohakuRiver spec test agent")
    ap.add_argument("-r", "--runner-url", default=os.environ.get("RUNNER_URL"))
    ap.add_argument("-c", "--container-id", default=os.environ.get("CONTAINER_ID"))
    ap.add_argument("--reconnect-delay", type=float, default=float(os.environ.get("RECONNECT_DELAY", 5)))
    ap.add_argument("--max-reconnect", type=int, default=int(os.environ.get("MAX_RECONNECT", 0)))
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--ca-file", help="wss://: trust the CA certificates in this PEM file")
    a = ap.parse_args(argv)
    if not a.runner_url or not a.container_id:
        ap.error("--runner-url and --container-id are required")

    async def run():
        agent = KohakuAgent(
            a.runner_url,
            a.container_id,
            reconnect_delay=a.reconnect_delay,
            max_reconnect=a.max_reconnect,
            record=False,
            verbose=True,
            ssl=__import__("ssl").create_default_context(cafile=a.ca_file) if a.ca_file else None,
        )
        await agent.start()
        await agent._task
        return 1 if agent.gave_up else 0

    try:
        rc = asyncio.run(run())
    except KeyboardInterrupt:
        rc = 130
    if rc == 1:
        print("Error: Max reconnection attempts exceeded", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
