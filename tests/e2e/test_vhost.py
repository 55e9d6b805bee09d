"""HTTP virtual hosts on the relay (issue 4): ``culvert relay --domain BASE --http-listen`` and agents'
``--expose http:LOCAL:NAME`` (docs/PROTOCOL.md §6).

A real relay and real agents; behind each agent a small raw HTTP/1.1 service (threads, keep-alive,
Content-Length and chunked bodies both ways) that answers with what it received, so the tests see the
exact request bytes the relay forwarded.
"""

import asyncio
import hashlib
import json
import os
import re
import socket
import threading
import time

import pytest

from conftest import recv_exact, run_async

BASE = "test.local"
SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"


# ---------------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 origin
# ---------------------------------------------------------------------------------------------------------


def block(i):
    """Block i of the deterministic download stream (64 KiB, unique per index)."""
    seed = hashlib.sha256(b"vhost-%d" % i).digest()
    return (seed * 2048)[:65536]


def stream_sha(n):
    h = hashlib.sha256()
    i = 0
    while n > 0:
        b = block(i)[:n]
        h.update(b)
        n -= len(b)
        i += 1
    return h.hexdigest()


def read_head(f):
    """One request head from a file over a socket, or None at end of stream."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline(65536)
        if not line:
            return None
        head += line
    return head


class Origin:
    """HTTP/1.1 origin: GET /head echoes the raw request head, POST /upload hashes the body, GET
    /download?n=N[&chunked=1] streams N bytes, anything else answers 'NAME PATH'."""

    def __init__(self, name):
        self.name = name
        self.heads = []
        self.conns = 0
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        try:
            self.ls.shutdown(socket.SHUT_RDWR)  # wakes the accept thread; the port then refuses
        except OSError:
            pass
        self.ls.close()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                head = read_head(f)
                if head is None:
                    return
                self.heads.append(head)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hdrs = {}
                for ln in lines[1:]:
                    if ln:
                        k, v = ln.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                body = hashlib.sha256()
                blen = 0
                if hdrs.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        if size == 0:
                            while f.readline() not in (b"\r\n", b""):
                                pass
                            break
                        left = size
                        while left:
                            d = f.read(min(left, 1 << 20))
                            body.update(d)
                            left -= len(d)
                        blen += size
                        f.readline()
                elif "content-length" in hdrs:
                    left = int(hdrs["content-length"])
                    while left:
                        d = f.read(min(left, 1 << 20))
                        if not d:
                            return
                        body.update(d)
                        blen += len(d)
                        left -= len(d)
                if hdrs.get("upgrade", "").lower() == "websocket":
                    return  # not this server's job
                close = hdrs.get("connection", "").lower() == "close"
                path = target.split("?")[0]
                if path == "/head":
                    self._reply(c, head, close)
                elif path == "/upload":
                    self._reply(c, json.dumps({"len": blen, "sha256": body.hexdigest()}).encode(), close)
                elif path == "/download":
                    q = dict(kv.split("=") for kv in target.split("?", 1)[1].split("&"))
                    self._download(c, int(q["n"]), q.get("chunked") == "1")
                else:
                    self._reply(c, ("%s %s" % (self.name, target)).encode(), close)
                if close:
                    c.close()
                    return
        except (OSError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _reply(self, c, body, close=False):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"") + body)

    def _download(self, c, n, chunked):
        if chunked:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        i = 0
        while n > 0:
            b = block(i)[:n]
            c.sendall(b"%x\r\n%s\r\n" % (len(b), b) if chunked else b)
            n -= len(b)
            i += 1
        if chunked:
            c.sendall(b"0\r\n\r\n")


@pytest.fixture
def origins():
    made = []

    def make(name):
        o = Origin(name)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def vhost_relay(culvert, extra=()):
    relay = culvert.relay(extra=["--domain", BASE, "--http-listen", "127.0.0.1:0"] + list(extra))
    m = relay.proc.wait_line(r"HTTP virtual hosts http://NAME\.test\.local on 127\.0\.0\.1:(\d+)", timeout=5)
    relay.http_port = int(m.group(1))
    return relay


def expose(culvert, relay, cid, port, name, extra=()):
    agent = culvert.agent(relay.url, cid, extra=["--expose", "http:%d:%s" % (port, name)] + list(extra))
    agent.wait_line(r"exposed http 127\.0\.0\.1:%d at http://%s\.test\.local:%d/" % (port, name, relay.http_port),
                    timeout=5)
    return agent


def connect(relay):
    return socket.create_connection(("127.0.0.1", relay.http_port), timeout=10)


def read_response(s, buf=b""):
    """Reads one response (Content-Length, chunked or until close). Returns (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise AssertionError("connection closed before a response head: %r" % buf)
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for ln in lines[1:]:
        k, v = ln.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while len(buf) < n:
            d = s.recv(1 << 20)
            if not d:
                raise AssertionError("short body")
            buf += d
        return status, hdrs, buf[:n], buf[n:]
    if hdrs.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(1 << 20)
            line, buf = buf.split(b"\r\n", 1)
            size = int(line, 16)
            while len(buf) < size + 2:
                buf += s.recv(1 << 20)
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                return status, hdrs, body, buf
    while True:
        d = s.recv(65536)
        if not d:
            return status, hdrs, buf, b""
        buf += d


def request(relay, host, path="/", method="GET", body=None, headers=()):
    s = connect(relay)
    hs = "".join("%s: %s\r\n" % h for h in headers)
    data = ("%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (method, path, host, hs)).encode()
    if body is not None:
        data += b"Content-Length: %d\r\n" % len(body)
    s.sendall(data + b"\r\n" + (body or b""))
    r = read_response(s)
    s.close()
    return r


def eventually(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------


def test_routing_by_host_for_two_agents(culvert, origins):
    relay = vhost_relay(culvert)
    a, b = origins("alpha"), origins("beta")
    expose(culvert, relay, "agent-a", a.port, "alpha")
    expose(culvert, relay, "agent-b", b.port, "beta")
    assert request(relay, "alpha.test.local", "/x")[2] == b"alpha /x"
    assert request(relay, "beta.test.local:%d" % relay.http_port, "/y?z=1")[2] == b"beta /y?z=1"
    # Case-insensitive, port ignored, trailing dot accepted.
    assert request(relay, "ALPHA.Test.Local.:1234", "/")[2] == b"alpha /"
    # Absolute-form target wins over Host (RFC 9112 §3.2.2).
    st, _, body, _ = request(relay, "alpha.test.local", "http://beta.test.local/abs")
    assert st == 200 and body == b"beta http://beta.test.local/abs"


def test_keep_alive_several_requests_on_one_connection(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("ka")
    expose(culvert, relay, "agent-ka", o.port, "ka")
    s = connect(relay)
    rest = b""
    for i in range(20):
        s.sendall(b"GET /r%d HTTP/1.1\r\nHost: ka.test.local\r\n\r\n" % i)
        st, _, body, rest = read_response(s, rest)
        assert (st, body) == (200, b"ka /r%d" % i)
    # Pipelined: three requests in one write, answers in order.
    s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: ka.test.local\r\n\r\n" % i for i in range(3)))
    for i in range(3):
        st, _, body, rest = read_response(s, rest)
        assert body == b"ka /p%d" % i
    # A POST with a body in between, then another GET: the framing tracker found the next head.
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: ka.test.local\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\n"
              b"Host: ka.test.local\r\n\r\n")
    st, _, body, rest = read_response(s, rest)
    assert json.loads(body) == {"len": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    st, _, body, rest = read_response(s, rest)
    assert body == b"ka /after"
    s.close()
    assert o.conns == 1  # one visitor connection, one backend connection


def test_x_forwarded_headers_exact(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("fw")
    expose(culvert, relay, "agent-fw", o.port, "fw")
    s = connect(relay)
    s.sendall(b"GET /head HTTP/1.1\r\nHost: fw.test.local:%d\r\nAccept: */*\r\nX-Custom:  spaced  \r\n\r\n" % relay.http_port)
    st, _, body, _ = read_response(s)
    assert body == (b"GET /head HTTP/1.1\r\nHost: fw.test.local:%d\r\nAccept: */*\r\nX-Custom:  spaced  \r\n"
                    b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                    b"X-Forwarded-Host: fw.test.local:%d\r\n\r\n" % (relay.http_port, relay.http_port))
    # An existing X-Forwarded-For is appended to; forged -Proto and -Host are replaced.
    s.sendall(b"GET /head HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\nHost: fw.test.local\r\n"
              b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n")
    st, _, body, _ = read_response(s)
    assert body == (b"GET /head HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nHost: fw.test.local\r\n"
                    b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: fw.test.local\r\n\r\n")
    s.close()


def test_chunked_upload_and_download(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("ch")
    expose(culvert, relay, "agent-ch", o.port, "ch")
    s = connect(relay)
    parts = [os.urandom(n) for n in (1, 1000, 70000, 3)]
    data = b"POST /upload HTTP/1.1\r\nHost: ch.test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nTrailer-X: y\r\n\r\n"
    # Sent in small pieces, so chunk framing straddles reads.
    for i in range(0, len(data), 777):
        s.sendall(data[i:i + 777])
    st, _, body, rest = read_response(s)
    whole = b"".join(parts)
    assert json.loads(body) == {"len": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    s.sendall(b"GET /download?n=300000&chunked=1 HTTP/1.1\r\nHost: ch.test.local\r\n\r\n")
    st, hdrs, body, rest = read_response(s, rest)
    assert hdrs["transfer-encoding"] == "chunked"
    assert hashlib.sha256(body).hexdigest() == stream_sha(300000)
    s.close()


@pytest.mark.timeout_s(120)
def test_64mib_upload_and_download_streamed(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("big")
    expose(culvert, relay, "agent-big", o.port, "big")
    size = 64 << 20
    s = connect(relay)
    s.settimeout(60)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: big.test.local\r\nContent-Length: %d\r\n\r\n" % size)
    h = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    peak = 0
    for i in range(64):
        piece = bytes([i]) + chunk[1:]
        h.update(piece)
        s.sendall(piece)
        if i % 8 == 0:
            peak = max(peak, relay.proc.rss_kib())
    st, _, body, rest = read_response(s)
    assert json.loads(body) == {"len": size, "sha256": h.hexdigest()}

    s.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: big.test.local\r\n\r\n" % size)
    buf = rest
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b"Content-Length: %d" % size in head
    d = hashlib.sha256(buf)
    got = len(buf)
    n = 0
    while got < size:
        b = s.recv(1 << 20)
        assert b, "download cut short at %d" % got
        d.update(b)
        got += len(b)
        n += 1
        if n % 64 == 0:
            peak = max(peak, relay.proc.rss_kib())
    assert d.hexdigest() == stream_sha(size)
    s.close()
    if not SANITIZED:
        # Streamed with credit flow control: nowhere near the 64 MiB body in memory.
        assert peak < 40 * 1024, "relay RSS peaked at %d KiB" % peak


def test_websocket_upgrade_pass_through(culvert):
    import websockets

    relay = vhost_relay(culvert)

    async def body():
        seen = {}

        async def handler(ws, path):
            seen["xff"] = ws.request_headers.get("X-Forwarded-For")
            seen["xfh"] = ws.request_headers.get("X-Forwarded-Host")
            async for msg in ws:
                await ws.send(msg[::-1] if isinstance(msg, str) else msg + b"!")

        server = await websockets.serve(handler, "127.0.0.1", 0, max_size=None)
        port = server.sockets[0].getsockname()[1]
        agent = culvert.agent(relay.url, "agent-ws", extra=["--expose", "http:%d:ws" % port])
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: agent.wait_line(r"exposed http .* at http://ws\.test\.local", timeout=5))
        async with websockets.connect("ws://ws.test.local:%d/chat" % relay.http_port, host="127.0.0.1",
                                      port=relay.http_port, max_size=None) as c:
            await c.send("hello")
            assert await c.recv() == "olleh"
            big = os.urandom(1 << 20)
            await c.send(big)
            assert await c.recv() == big + b"!"
        assert seen == {"xff": "127.0.0.1", "xfh": "ws.test.local:%d" % relay.http_port}
        server.close()
        await server.wait_closed()

    run_async(body())


def test_404_for_unknown_hosts(culvert, origins):
    relay = vhost_relay(culvert)
    st, hdrs, body, _ = request(relay, "nobody.test.local")
    assert st == 404 and hdrs["connection"] == "close"
    assert b"nobody.test.local" in body and b"NAME.test.local" in body
    st, _, body, _ = request(relay, "www.example.org")
    assert st == 404 and b"unknown host www.example.org" in body and b"NAME.test.local" in body
    st, _, body, _ = request(relay, "a.b.test.local")
    assert st == 404


def test_502_when_agent_gone_or_service_down(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("gone")
    agent = expose(culvert, relay, "agent-gone", o.port, "gone")
    assert request(relay, "gone.test.local")[2] == b"gone /"
    # The service behind the agent stops: its refusal is the page's reason.
    o.close()
    st, _, body, _ = request(relay, "gone.test.local")
    assert st == 502 and b"agent-gone" in body and b"refused" in body.lower(), body
    # The agent exits: the name is released but remembered as gone.
    agent.kill()
    def gone():
        st, _, body, _ = request(relay, "gone.test.local")
        assert st == 502 and b"not connected" in body, body
        return body
    body = eventually(gone)
    assert b"gone.test.local" in body and b"agent-gone" in body


def test_502_when_agent_leaves_mid_request(culvert):
    """A backend that never answers; the agent dies while the visitor waits."""
    relay = vhost_relay(culvert)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    agent = expose(culvert, relay, "agent-mid", ls.getsockname()[1], "mid")
    s = connect(relay)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: mid.test.local\r\n\r\n")
    c, _ = ls.accept()
    c.settimeout(5)
    assert c.recv(4096).startswith(b"GET /slow")
    agent.kill()
    st, _, body, _ = read_response(s)
    assert st == 502 and b"disconnected" in body
    c.close()
    ls.close()


def test_name_conflict_release_and_reclaim(culvert, origins):
    relay = vhost_relay(culvert, extra=["--admin", "127.0.0.1:0"])
    m = relay.proc.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/", timeout=5)
    admin = "http://127.0.0.1:%s" % m.group(1)
    a, b = origins("first"), origins("second")
    first = expose(culvert, relay, "agent-1", a.port, "shared", extra=["--admin", "127.0.0.1:0"])
    second = culvert.agent(relay.url, "agent-2", extra=["--expose", "http:%d:shared" % b.port])
    second.wait_line(r"expose http:%d:shared refused by the relay: name in use by agent agent-1" % b.port, timeout=5)
    assert request(relay, "shared.test.local")[2] == b"first /"

    from conftest import http_get
    agents = {x["id"]: x for x in json.loads(http_get(admin + "/api/agents")[1])["agents"]}
    assert {"proto": "http", "local_port": a.port, "name": "shared",
            "url": "http://shared.test.local:%d/" % relay.http_port} in agents["agent-1"]["exposures"]
    assert agents["agent-2"]["exposures"] == []
    am = first.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/", timeout=5)
    st = json.loads(http_get("http://127.0.0.1:%s/api/status" % am.group(1))[1])
    assert st["exposures"] == [{"proto": "http", "local_port": a.port, "name": "shared", "state": "exposed",
                                "url": "http://shared.test.local:%d/" % relay.http_port}]

    # A visitor connection is one stream through the agent, listed while it is open.
    v = connect(relay)
    v.sendall(b"GET /s HTTP/1.1\r\nHost: shared.test.local\r\n\r\n")
    assert read_response(v)[2] == b"first /s"
    streams = json.loads(http_get(admin + "/api/streams")[1])["streams"]
    assert [x["front"] for x in streams] == ["http-vhost"] and streams[0]["agent"] == "agent-1"
    v.close()
    st, body = http_get(admin + "/metrics")
    text = body.decode()
    assert "culvert_relay_names 1\n" in text
    assert "culvert_relay_vhost_requests_total 2\n" in text
    assert 'culvert_relay_vhost_answers_total{status="404"} 0\n' in text
    request(relay, "unknown.test.local")
    assert 'culvert_relay_vhost_answers_total{status="404"} 1\n' in http_get(admin + "/metrics")[1].decode()

    # The holder goes: the name is free at once; the second agent's next claim (after its reconnect) wins.
    first.kill()
    second.kill()
    second = expose(culvert, relay, "agent-2", b.port, "shared")
    assert request(relay, "shared.test.local")[2] == b"second /"
    # ... and the first agent, back, is refused while the second holds it; once it goes, it reclaims.
    again = culvert.agent(relay.url, "agent-1", extra=["--expose", "http:%d:shared" % a.port])
    again.wait_line(r"refused by the relay: name in use by agent agent-2", timeout=5)
    second.kill()
    again.kill()
    expose(culvert, relay, "agent-1", a.port, "shared")
    assert request(relay, "shared.test.local")[2] == b"first /"


def test_agent_restart_reclaims_its_name(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("rs")
    agent = expose(culvert, relay, "agent-rs", o.port, "rs")
    assert request(relay, "rs.test.local")[2] == b"rs /"
    agent.kill()
    eventually(lambda: (lambda r: (r[0] == 502) or (_ for _ in ()).throw(AssertionError(r)))(request(relay, "rs.test.local")))
    expose(culvert, relay, "agent-rs", o.port, "rs")
    assert request(relay, "rs.test.local")[2] == b"rs /"


def test_misdirected_second_host_gets_421_after_current_response(culvert, origins):
    relay = vhost_relay(culvert)
    a, b = origins("one"), origins("two")
    expose(culvert, relay, "agent-one", a.port, "one")
    expose(culvert, relay, "agent-two", b.port, "two")
    s = connect(relay)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: one.test.local\r\n\r\nGET /b HTTP/1.1\r\nHost: two.test.local\r\n\r\n")
    st, _, body, rest = read_response(s)
    assert (st, body) == (200, b"one /a")
    st, hdrs, body, rest = read_response(s, rest)
    assert st == 421 and b"one.test.local" in body and b"two.test.local" in body
    assert s.recv(100) == b""
    s.close()


def test_bad_requests(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("bad")
    expose(culvert, relay, "agent-bad", o.port, "bad")

    def raw(data):
        s = connect(relay)
        s.sendall(data)
        r = read_response(s)
        s.close()
        return r

    assert raw(b"GET / HTTP/1.1\r\n\r\n")[0] == 400  # no Host
    assert raw(b"GET / HTTP/1.1\r\nHost: bad.test.local\r\nHost: x.test.local\r\n\r\n")[0] == 400
    assert raw(b"GET / HTTP/1.1\r\nHost: bad.test.local\nX: y\r\n\r\n")[0] == 400  # bare LF
    assert raw(b"GET / HTTP/1.1\r\nHost: bad.test.local\r\nX: " + b"a" * 20000 + b"\r\n\r\n")[0] == 431
    assert raw(b"POST / HTTP/1.1\r\nHost: bad.test.local\r\nTransfer-Encoding: gzip\r\n\r\n")[0] == 400
    assert raw(b"POST / HTTP/1.0\r\nHost: bad.test.local\r\nTransfer-Encoding: chunked\r\n\r\n")[0] == 400
    assert raw(b"POST / HTTP/1.1\r\nHost: bad.test.local\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")[0] == 400
    assert raw(b"CONNECT bad.test.local:443 HTTP/1.1\r\nHost: bad.test.local:443\r\n\r\n")[0] == 405
    # A malformed request after a good one: the good one is answered, then 400.
    s = connect(relay)
    s.sendall(b"GET /ok HTTP/1.1\r\nHost: bad.test.local\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n")
    st, _, body, rest = read_response(s)
    assert body == b"bad /ok"
    assert read_response(s, rest)[0] == 400
    s.close()


def test_slow_head_times_out(culvert):
    relay = vhost_relay(culvert, extra=["--handshake-timeout", "1"])
    s = connect(relay)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x.test")
    t0 = time.monotonic()
    st, _, body, _ = read_response(s)
    assert st == 408 and 0.9 < time.monotonic() - t0 < 4
    # Saying nothing at all is cut off too.
    s = connect(relay)
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(4096).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 4


def test_rate_limit(culvert):
    relay = vhost_relay(culvert, extra=["--conn-rate", "1/3"])
    codes = [request(relay, "x.test.local")[0] for _ in range(6)]
    assert codes[:3] == [404, 404, 404] and 429 in codes[3:], codes


def test_bad_expose_values(culvert):
    for v in ["http:80", "http:80:", "http:0:app", "http:x:app", "http:80:App", "http:80:-app", "http:80:app-",
              "http:80:a.b", "http:80:" + "a" * 64, "tls:443", "https:80:app", "http::app"]:
        rc, out, err = culvert.run(["agent", "-r", "ws://127.0.0.1:1", "-c", "x", "--expose", v])
        assert rc == 2 and "invalid value" in err and "http|tls:LOCAL:NAME" in err, (v, err)


def test_relay_flag_errors(culvert):
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--domain", "test.local"])
    assert rc == 2 and "--domain was given alone" in err and "--http-listen" in err
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--http-listen", "127.0.0.1:0"])
    assert rc == 2 and "--http-listen was given alone" in err
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--domain", "bad_domain", "--http-listen", "127.0.0.1:0"])
    assert rc == 2 and "--domain wants a domain name" in err
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--domain", "a.b", "--http-listen", "localhost:80"])
    assert rc == 2 and "--http-listen wants HOST:PORT" in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--listen", "127.0.0.1:0", "--domain", "a.b",
                                "--http-listen", "127.0.0.1:%d" % busy.getsockname()[1]])
    assert rc == 1 and "address already in use" in err.lower(), err
    busy.close()


def test_relay_without_domain_refuses_http_names(culvert):
    relay = culvert.relay()
    agent = culvert.agent(relay.url, "agent-nd", extra=["--expose", "http:8080:app", "--expose", "tls:8443:app"])
    agent.wait_line(r"expose http:8080:app refused by the relay: this relay serves no HTTP virtual hosts", timeout=5)
    agent.wait_line(r"expose tls:8443:app refused by the relay: this relay routes no tls names", timeout=5)


def test_half_closed_visitor_still_gets_its_response(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("hc")
    expose(culvert, relay, "agent-hc", o.port, "hc")
    s = connect(relay)
    s.sendall(b"GET /half HTTP/1.1\r\nHost: hc.test.local\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    st, _, body, _ = read_response(s)
    assert (st, body) == (200, b"hc /half")
    s.close()


@pytest.mark.timeout_s(60)
def test_stalled_reader_is_held_back_not_buffered(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("slow")
    expose(culvert, relay, "agent-slow", o.port, "slow")
    size = 64 << 20
    s = connect(relay)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: slow.test.local\r\n\r\n" % size)
    time.sleep(2)  # not reading: credit stops the agent, nothing piles up at the relay
    if not SANITIZED:
        assert relay.proc.rss_kib() < 40 * 1024
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    h = hashlib.sha256(buf)
    got = len(buf)
    s.settimeout(30)
    while got < size:
        d = s.recv(1 << 20)
        assert d
        h.update(d)
        got += len(d)
    assert h.hexdigest() == stream_sha(size)
    s.close()


def test_concurrent_visitors_on_two_names(culvert, origins):
    relay = vhost_relay(culvert)
    a, b = origins("ca"), origins("cb")
    expose(culvert, relay, "agent-ca", a.port, "ca")
    expose(culvert, relay, "agent-cb", b.port, "cb")
    errors = []

    def client(i):
        try:
            name = "ca" if i % 2 else "cb"
            s = connect(relay)
            rest = b""
            for j in range(10):
                body = os.urandom(i * 100 + j)
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: %s.test.local\r\nContent-Length: %d\r\n\r\n%s"
                          % (name.encode(), len(body), body))
                st, _, got, rest = read_response(s, rest)
                assert json.loads(got)["sha256"] == hashlib.sha256(body).hexdigest()
                s.sendall(b"GET /n%d HTTP/1.1\r\nHost: %s.test.local\r\n\r\n" % (j, name.encode()))
                st, _, got, rest = read_response(s, rest)
                assert got == b"%s /n%d" % (name.encode(), j)
            s.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert errors == []


def refusing_origin(c):
    """An origin that refuses upgrades and keeps the connection: 400 to a request with Upgrade, 200 echoing
    the head to anything else, all on one keep-alive connection."""
    f = c.makefile("rb")
    while True:
        head = read_head(f)
        if head is None:
            return
        if b"\r\nupgrade:" in head.lower():
            body = b"no upgrade here"
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))


def read_final(s, buf=b""):
    """read_response after the interim 1xx heads (checked to be 100 Continue)."""
    while True:
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            assert d, "closed before a response head"
            buf += d
        if not buf.startswith(b"HTTP/1.1 1"):
            return read_response(s, buf)
        assert buf.startswith(b"HTTP/1.1 100 ")
        buf = buf.split(b"\r\n\r\n", 1)[1]


def test_upgrade_refused_by_service_goes_back_to_http(culvert, tcp_service):
    """The service answers an Upgrade request with something other than 101: the connection is not raw
    pass-through, the next request on it is parsed, routed and rewritten as usual."""
    relay = vhost_relay(culvert)
    svc = tcp_service(refusing_origin)
    expose(culvert, relay, "agent-ref", svc.port, "ref")
    s = connect(relay)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: ref.test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    st, _, body, rest = read_final(s)
    assert st == 400 and body == b"no upgrade here" and rest == b""
    s.sendall(b"GET /head HTTP/1.1\r\nHost: ref.test.local\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n")
    st, _, body, _ = read_response(s)
    lines = body.decode("latin-1").split("\r\n")
    assert st == 200 and lines[0] == "GET /head HTTP/1.1"
    assert "X-Forwarded-For: 10.1.2.3, 127.0.0.1" in lines and "X-Forwarded-Proto: http" in lines
    # A request for another host on it is not forwarded (it would be in raw mode).
    s.sendall(b"GET / HTTP/1.1\r\nHost: other.test.local\r\n\r\n")
    st, _, body, _ = read_response(s)
    assert st == 421
    s.close()


def test_head_trickled_byte_by_byte(culvert, origins):
    relay = vhost_relay(culvert)
    o = origins("tr")
    expose(culvert, relay, "agent-tr", o.port, "tr")
    s = connect(relay)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"GET /trickle HTTP/1.1\r\nHost: tr.test.local\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    for i in range(len(req)):
        s.send(req[i:i + 1])
        if i % 50 == 0:
            time.sleep(0.005)
    st, _, body, _ = read_response(s)
    assert (st, body) == (200, b"tr /trickle")
    # Keep-alive: the next head, also in pieces, on the same connection.
    for piece in (b"GET /second HTTP/1.1\r", b"\nHost: tr.test.local\r\n", b"\r", b"\n"):
        s.send(piece)
        time.sleep(0.01)
    st, _, body, _ = read_response(s)
    assert body == b"tr /second"
    s.close()
