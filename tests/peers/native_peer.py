"""Native-mode (``culvert.v1``) test peer, written from docs/PROTOCOL.md: an agent (``/ws/tunnel/ID``) or a
forward session (``/ws/forward/ID/PORT``) on a plain ``websockets`` client, with per-stream credit flow control.

Nothing here is culvert's C code; tests drive the peer message by message:

    peer = await open_agent(relay_url, "cid", token="s3cret")       # native unless native=False
    await peer.expose(1, 8080)                                       # EXPOSE(proto 0, num 1, port 0, u16 8080)
    m = await peer.wait_msg(lambda m: m.type == EXPOSED)
    st = await peer.wait_stream(lambda s: s.proto == TCP)            # a CONNECT from the relay made a Stream
    await st.connected()                                             # CONNECTED(tid)
    await st.send(b"..." )                                           # DATA within credit (waits for WINDOW)
    await st.fin()                                                   # empty DATA = FIN

Per stream the peer tracks:
  * ``tx_credit``: WINDOW0 at CONNECT plus every WINDOW received, minus DATA sent (``send`` waits for it);
  * ``rx_granted``: WINDOW0 plus every WINDOW the peer sent; ``rx_total`` above it is recorded in ``violation``;
  * with ``auto_window`` (default) received bytes count as consumed at once and are returned with
    ``WINDOW(consumed)`` once they reach half of WINDOW0 (the window never grows: growth is optional);
    ``auto_window = False`` lets the test withhold credit and grant it by hand (``grant``).

Every message received is appended to ``peer.log`` (DATA payloads cut to 64 bytes there; the full stream is in
``Stream.rx``).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kohaku_proto as kp  # noqa: E402
from kohaku_proto import CLOSE, CONNECT, CONNECTED, DATA, ERROR, TCP, UDP  # noqa: E402,F401

SUBPROTOCOL = "culvert.v1"
WINDOW = 0x08
EXPOSE = 0x09
EXPOSED = 0x0A
WINDOW0 = 256 * 1024
WINDOW_MAX = 16 * 1024 * 1024
MAX_DATA = 65536

NAMES = dict(kp.TYPE_NAMES)
NAMES.update({WINDOW: "WINDOW", EXPOSE: "EXPOSE", EXPOSED: "EXPOSED"})


def window_msg(sid, inc, proto=TCP):
    return kp.encode(WINDOW, proto, sid, 0, struct.pack(">I", inc))


def expose_msg(num, local_port, public_port=0, proto=TCP):
    return kp.encode(EXPOSE, proto, num, public_port, struct.pack(">H", local_port))


# ------------------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------------------


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(secret, exp=None, agents=None, no_agents=False, alg="HS256", extra=None):
    """HS256 JWT signed with ``secret``; ``exp`` defaults to now + 1 h; ``agents`` a list (absent if no_agents)."""
    header = {"alg": alg, "typ": "JWT"}
    claims = {"exp": int(time.time()) + 3600 if exp is None else exp}
    if not no_agents:
        claims["agents"] = list(agents or [])
    if extra:
        claims.update(extra)
    signing = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


# ------------------------------------------------------------------------------------------------------
# Peer
# ------------------------------------------------------------------------------------------------------


class Rec:
    """One received message as logged: full header, payload (DATA: first 64 bytes), payload length."""

    __slots__ = ("type", "proto", "id", "port", "payload", "len", "t")

    def __init__(self, m):
        self.type, self.proto, self.id, self.port = m.type, m.proto, m.id, m.port
        self.len = len(m.payload)
        self.payload = m.payload if m.type != DATA else m.payload[:64]
        self.t = time.monotonic()

    def __repr__(self):
        return "%s(proto=%d id=%d port=%d len=%d %r)" % (
            NAMES.get(self.type, "type%d" % self.type), self.proto, self.id, self.port, self.len, self.payload[:40])


class Stream:
    def __init__(self, peer, sid, proto, port=0):
        self.peer = peer
        self.id = sid
        self.proto = proto
        self.port = port  # the CONNECT's port (agent side)
        self.tx_credit = WINDOW0
        self.tx_total = 0
        self.rx = bytearray()
        self.rx_total = 0
        self.rx_granted = WINDOW0
        self.rx_unacked = 0
        self.auto_window = True
        self.keep_rx = True
        self.rx_hash = hashlib.sha256()
        self.datagrams = []  # UDP: one payload per DATA
        self.windows_in = []  # increments received
        self.got_connected = False
        self.fin_in = False
        self.fin_out = False
        self.closed = False  # CLOSE received
        self.error = None  # ERROR text received
        self.violation = None

    def __repr__(self):
        return "Stream(id=%d proto=%d rx=%d tx=%d credit=%d fin_in=%s closed=%s)" % (
            self.id, self.proto, self.rx_total, self.tx_total, self.tx_credit, self.fin_in, self.closed)

    # -- sending --
    async def connected(self):
        await self.peer.send(kp.encode(CONNECTED, self.proto, self.id, 0))

    async def send(self, data, chunk=MAX_DATA, honour_credit=True):
        """DATA within credit (waits for WINDOW). UDP: one datagram, no credit."""
        data = bytes(data)
        if self.proto == UDP:
            await self.peer.send(kp.encode(DATA, UDP, self.id, 0, data))
            return
        off = 0
        while off < len(data):
            if honour_credit:
                await self.peer.until(lambda: self.tx_credit > 0 or self.closed or self.peer.ended, timeout=None)
                if self.closed or self.peer.ended:
                    raise ConnectionError("stream %d closed while sending (%d of %d sent)" % (self.id, off, len(data)))
                n = min(chunk, self.tx_credit, len(data) - off)
            else:
                n = min(chunk, len(data) - off)
            self.tx_credit -= n
            self.tx_total += n
            await self.peer.send(kp.encode(DATA, self.proto, self.id, 0, data[off:off + n]))
            off += n

    async def fin(self):
        self.fin_out = True
        await self.peer.send(kp.encode(DATA, self.proto, self.id, 0))

    async def close(self):
        await self.peer.send(kp.encode(CLOSE, self.proto, self.id, 0))

    async def grant(self, n):
        self.rx_granted += n
        await self.peer.send(window_msg(self.id, n, self.proto))

    # -- receiving (called by the peer's reader) --
    async def _on_data(self, payload):
        if self.proto == UDP:
            self.datagrams.append(payload)
            self.rx_total += len(payload)
            return
        if not payload:
            self.fin_in = True
            return
        n = len(payload)
        self.rx_total += n
        if self.keep_rx:
            self.rx += payload
        self.rx_hash.update(payload)
        if self.rx_total > self.rx_granted and self.violation is None:
            self.violation = "received %d bytes with only %d granted" % (self.rx_total, self.rx_granted)
        if self.auto_window:
            self.rx_unacked += n
            if self.rx_unacked >= WINDOW0 // 2:
                inc, self.rx_unacked = self.rx_unacked, 0
                await self.grant(inc)


class NativePeer:
    def __init__(self, ws, first=None, role="agent"):
        self.ws = ws
        self.first = first
        self.role = role
        self.native = ws.subprotocol == SUBPROTOCOL
        self.log = []
        self.texts = []
        self.streams = {}
        self.stream_order = []
        self.auto_window_default = True  # for streams created by a CONNECT from the relay
        self.ended = False
        self.close_code = None
        self.close_reason = None
        self._cond = asyncio.Condition()
        self._task = asyncio.get_event_loop().create_task(self._reader())

    # -- plumbing --
    async def send(self, data):
        await self.ws.send(data)

    async def _notify(self):
        async with self._cond:
            self._cond.notify_all()

    async def until(self, pred, timeout=10.0, what=None):
        """Wait until pred() is true (re-checked after every received message)."""

        async def w():
            async with self._cond:
                await self._cond.wait_for(pred)

        if pred():
            return
        try:
            await asyncio.wait_for(w(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("timed out after %ss waiting for %s; last messages: %r"
                                 % (timeout, what or "condition", self.log[-8:]))

    async def _reader(self):
        try:
            async for raw in self.ws:
                if isinstance(raw, str):
                    self.texts.append(raw)
                    await self._notify()
                    continue
                m = kp.decode(raw)
                if m is None:
                    continue
                self.log.append(Rec(m))
                await self._dispatch(m)
                await self._notify()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # keep the evidence
            self.texts.append("reader error: %r" % e)
        finally:
            self.ended = True
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            await self._notify()

    async def _dispatch(self, m):
        st = self.streams.get(m.id)
        if m.type == CONNECT:
            if st is None or st.closed:
                st = Stream(self, m.id, m.proto, m.port)
                st.auto_window = self.auto_window_default
                self.streams[m.id] = st
                self.stream_order.append(st)
            return
        if st is None:
            return
        if m.type == CONNECTED:
            st.got_connected = True
        elif m.type == DATA:
            await st._on_data(m.payload)
        elif m.type == WINDOW and len(m.payload) == 4:
            inc = struct.unpack(">I", m.payload)[0]
            st.windows_in.append(inc)
            st.tx_credit += inc
        elif m.type == CLOSE:
            st.closed = True
        elif m.type == ERROR:
            st.error = m.payload.decode("utf-8", "replace")

    # -- queries --
    def msgs(self, pred=lambda m: True, start=0):
        return [m for m in self.log[start:] if pred(m)]

    async def wait_msg(self, pred, timeout=5.0, start=0, what=None):
        found = []

        def p():
            for m in self.log[start:]:
                if pred(m):
                    found.append(m)
                    return True
            return False

        await self.until(p, timeout, what or "a matching message")
        return found[0]

    async def wait_stream(self, pred=lambda s: True, timeout=5.0, exclude=()):
        found = []

        def p():
            for s in self.stream_order:
                if s not in exclude and pred(s):
                    found.append(s)
                    return True
            return False

        await self.until(p, timeout, "a CONNECT from the relay")
        return found[0]

    # -- session side --
    def open_stream(self, sid, proto=TCP, port=0):
        st = Stream(self, sid, proto, port)
        self.streams[sid] = st
        self.stream_order.append(st)
        return st

    async def connect(self, sid, port, proto=TCP):
        st = self.open_stream(sid, proto, port)
        await self.send(kp.encode(CONNECT, proto, sid, port))
        return st

    # -- agent side --
    async def expose(self, num, local_port, public_port=0, proto=TCP):
        await self.send(expose_msg(num, local_port, public_port, proto))

    async def expose_wait(self, num, local_port, public_port=0, proto=TCP, timeout=5.0):
        """EXPOSE and return (bound port, reason) from the EXPOSED for that number."""
        start = len(self.log)
        await self.expose(num, local_port, public_port, proto)
        m = await self.wait_msg(lambda m: m.type == EXPOSED and m.id == num, timeout, start=start,
                                what="EXPOSED %d" % num)
        return m.port, m.payload.decode("utf-8", "replace")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    def abort(self):
        """Drop the TCP connection without a close handshake."""
        self.ws.transport.abort()


def _ws_kwargs(token, native, headers, timeout):
    kw = dict(compression=None, ping_interval=None, max_size=32 << 20, max_queue=None, open_timeout=timeout)
    if native:
        kw["subprotocols"] = [SUBPROTOCOL]
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    if hdrs:
        kw["extra_headers"] = hdrs
    return kw


async def open_agent(relay_url, cid, token=None, native=True, prefix="", headers=None, timeout=5.0):
    url = "%s%s/ws/tunnel/%s" % (relay_url.rstrip("/"), prefix, cid)
    ws = await asyncio.wait_for(websockets.connect(url, **_ws_kwargs(token, native, headers, timeout)), timeout)
    return NativePeer(ws, role="agent")


async def open_session(relay_url, cid, port, token=None, native=True, proto="tcp", prefix="", headers=None,
                       timeout=5.0):
    url = "%s%s/ws/forward/%s/%d" % (relay_url.rstrip("/"), prefix, cid, port)
    if proto is not None:
        url += "?proto=" + proto
    ws = await asyncio.wait_for(websockets.connect(url, **_ws_kwargs(token, native, headers, timeout)), timeout)
    first = await asyncio.wait_for(ws.recv(), timeout)
    return NativePeer(ws, first=first, role="session")
