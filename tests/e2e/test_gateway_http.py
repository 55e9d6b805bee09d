"""The gateway's HTTP surface (specs/runner-http.md §2-§12, §15 MUST items) against examples/gateway_native
(the shared test app on native handlers), driven with raw sockets so that bytes, header order and connection
handling are checked exactly. Also `culvert gateway` argument errors.

The example is $CULVERT_BUILD/gateway_native (default build/)."""

import http.client
import json
import os
import re
import signal
import socket
import time

import pytest

from conftest import CULVERT_BIN, REPO

BUILD = os.environ.get("CULVERT_BUILD") or str(REPO / "build")
NATIVE_BIN = os.path.join(BUILD, "gateway_native")
TOKEN = "secret"
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


@pytest.fixture
def gw(procs):
    """Factory: starts gateway_native with flags (default --token secret), returns (proc, port). Every server
    still running at teardown gets SIGTERM and must exit 0 (under ASan: the leak check)."""
    started = []

    def start(*extra, token=True):
        if not os.path.exists(NATIVE_BIN):
            pytest.fail("gateway_native not found at %s (build it, or set CULVERT_BUILD)" % NATIVE_BIN)
        args = [NATIVE_BIN, "--listen", "127.0.0.1:0"] + (["--token", TOKEN] if token else []) + list(extra)
        p = procs.start(args, name="gateway_native")
        m = p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10)
        started.append(p)
        return p, int(m.group(1))

    yield start
    for p in started:
        if p.alive():
            p.p.send_signal(signal.SIGTERM)
            rc = p.wait_exit(15)
            assert rc == 0, "gateway_native exited %s after SIGTERM\n%s" % (rc, p.dump())


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(1 << 16)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def head(self):
        """Returns (status, [(name, value)] in order, raw head bytes)."""
        status_line = self.line()
        status = int(status_line.split(b" ")[1])
        hdrs = []
        raw_lines = [status_line]
        while True:
            ln = self.line()
            if not ln:
                break
            raw_lines.append(ln)
            k, v = ln.split(b":", 1)
            hdrs.append((k.decode(), v.strip().decode()))
        return status, hdrs, b"\r\n".join(raw_lines)

    def response(self):
        """Returns (status, {lower-name: value}, body, ordered headers)."""
        status, hdrs, _ = self.head()
        d = {k.lower(): v for k, v in hdrs}
        if status < 200 or status in (204, 304):
            return status, d, b"", hdrs
        if "content-length" in d:
            return status, d, self.exact(int(d["content-length"])), hdrs
        if d.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    return status, d, b"".join(parts), hdrs
                parts.append(self.exact(size))
                assert self.exact(2) == b"\r\n"
        body = self.buf
        self.buf = b""
        while True:
            x = self.sock.recv(1 << 16)
            if not x:
                return status, d, body, hdrs
            body += x

    def at_eof(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return d == b"" and self.buf == b""


def raw(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s, Reader(s)


def req(method, path, body=b"", headers=None, token=True, extra=b""):
    h = {"Host": "127.0.0.1", "content-type": "application/json; charset=utf-8"}
    if token:
        h["x-runner-token"] = TOKEN
    h.update(headers or {})
    if body is not None and "Transfer-Encoding" not in h:
        h["content-length"] = str(len(body))
    lines = "".join("%s: %s\r\n" % (k, v) for k, v in h.items() if v is not None)
    return ("%s %s HTTP/1.1\r\n%s\r\n" % (method, path, lines)).encode() + (body or b"") + extra


def call(port, method, path, body=b"", headers=None, token=True):
    s, rd = raw(port)
    s.sendall(req(method, path, body, headers, token))
    r = rd.response()
    s.close()
    return r


def post(port, what, body, **kw):
    st, h, b, _ = call(port, "POST", "/__runner/" + what, json.dumps(body).encode() if body is not None else b"",
                       **kw)
    return st, h, b


def env(b):
    return json.loads(b)


def err(code, message, **more):
    e = {"message": message, "code": code}
    e.update(more)
    return json.dumps({"ok": False, "error": e}, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------------------------
# §12 captures: bytes and header order


def test_fetch_capture_exact(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(
        b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nhost: 127.0.0.1:7070\r\nconnection: keep-alive\r\n"
        b"content-type: application/json; charset=utf-8\r\nx-runner-token: secret\r\naccept: */*\r\n"
        b"accept-language: *\r\nsec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\n"
        b"content-length: 23\r\n\r\n{\"input\":{\"a\":5,\"b\":3}}"
    )
    st, hdrs, raw_head = rd.head()
    body = rd.exact(22)
    assert body == b'{"ok":true,"result":8}'
    assert st == 200 and raw_head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    names = [k for k, _ in hdrs]
    assert names == ["x-runner-request-id", "Access-Control-Allow-Origin", "content-type", "content-length",
                     "X-Content-Type-Options", "X-Frame-Options", "Date", "Connection", "Keep-Alive"]
    d = dict(hdrs)
    assert re.match(UUID_RE, d["x-runner-request-id"])
    assert d["Access-Control-Allow-Origin"] == "*"
    assert d["content-type"] == "application/json; charset=utf-8"
    assert d["content-length"] == "22"
    assert (d["X-Content-Type-Options"], d["X-Frame-Options"]) == ("nosniff", "DENY")
    assert re.match(r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$", d["Date"])
    assert (d["Connection"], d["Keep-Alive"]) == ("keep-alive", "timeout=5")
    s.close()


def test_smart_client_chunked_context(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(
        b"POST /__runner/task/app.tasks.whoami HTTP/1.1\r\ncontent-type: application/json; charset=utf-8\r\n"
        b"x-runner-token: secret\r\nx-runner-context: {\"app.ctx.user\":\"{\\\"id\\\":\\\"u2\\\"}\"}\r\n"
        b"Host: 127.0.0.1:7070\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"c\r\n{\"input\":{}}\r\n0\r\n\r\n"
    )
    st, _, body, _ = rd.response()
    assert (st, body) == (200, b'{"ok":true,"result":{"user":{"id":"u2"}}}')
    # No context (or a repeated header): null.
    s.sendall(req("POST", "/__runner/task/app.tasks.whoami", b"{}"))
    assert rd.response()[2] == b'{"ok":true,"result":{"user":null}}'
    s.close()


# ------------------------------------------------------------------------------------------------------------
# Routing (§2)


@pytest.mark.parametrize(
    "path,status,result",
    [
        ("/__runner/task/app.tasks.add", 200, 3),
        ("/__runner//task//app.tasks.add", 200, 3),
        ("/__runner/task/app.tasks.add/", 200, 3),
        ("/__runner/task/app.tasks.add?x=1&y=%zz", 200, 3),
        ("/__runner/task/app%2Etasks.add", 200, 3),
        ("/__runner/x/../task/app.tasks.add", 200, 3),
        ("/__runner/x/%2e%2E/task/./app.tasks.add", 200, 3),
        ("/__runner\\task\\app.tasks.add", 200, 3),
        ("http://example.com/__runner/task/app.tasks.add", 200, 3),
    ],
)
def test_routes_resolve(gw, path, status, result):
    _, port = gw()
    st, h, b, _ = call(port, "POST", path, b'{"input":{"a":1,"b":2}}')
    assert (st, env(b)) == (status, {"ok": True, "result": result})


def test_route_not_found_and_outside_base(gw):
    _, port = gw()
    for path in ("/__runner", "/__runner/", "/__runner/foo", "/__runner/task", "/__runner/task//",
                 "/__runner/task/%zz", "/__runner/task/%ff", "/__runner/Task/app.tasks.add"):
        st, h, b, _ = call(port, "POST", path, b"{}")
        assert (st, b) == (404, err("NOT_FOUND", "Not Found")), path
        assert re.match(UUID_RE, h["x-runner-request-id"]), path
    for path in ("/", "/other", "/__runnerx/task/app.tasks.add", "/__runner/../task/app.tasks.add"):
        st, h, b, hdrs = call(port, "POST", path, b"{}", headers={"x-runner-request-id": "keep-me"})
        assert (st, b) == (404, err("NOT_FOUND", "Not Found")), path
        assert "x-runner-request-id" not in h, "step-0 404 must carry no request id"
        assert h["access-control-allow-origin"] == "*" and h["x-frame-options"] == "DENY"


def test_percent_2f_id(gw):
    _, port = gw()
    st, _, b, _ = call(port, "POST", "/__runner/task/app%2Ftasks.add", b"{}")
    assert (st, b) == (403, err("FORBIDDEN", "Task app/tasks.add not exposed"))
    st, _, b, _ = call(port, "POST", "/__runner/task/app/tasks.add", b"{}")
    assert (st, b) == (403, err("FORBIDDEN", "Task app/tasks.add not exposed"))


# ------------------------------------------------------------------------------------------------------------
# Check order (§3) and auth (§5.1)


def test_check_order(gw):
    _, port = gw("--allow-task", "app.tasks.add", "--allow-task", "app.tasks.ghost", "--allow-event",
                 "app.events.notify")
    mna = err("METHOD_NOT_ALLOWED", "Method Not Allowed")
    # 405 before 401
    assert call(port, "GET", "/__runner/task/app.tasks.add", None, token=False)[::2] == (405, mna)
    assert call(port, "PUT", "/__runner/event/app.events.notify", b"{}", token=False)[::2] == (405, mna)
    # 401 before 403 and 404
    una = err("UNAUTHORIZED", "Unauthorized")
    assert call(port, "POST", "/__runner/task/app.tasks.hidden", b"{}", token=False)[::2] == (401, una)
    assert call(port, "POST", "/__runner/task/app.tasks.nope", b"{}",
                headers={"x-runner-token": "wrong"}, token=False)[::2] == (401, una)
    # 403 before 404 (hidden has a handler; nope has none)
    assert call(port, "POST", "/__runner/task/app.tasks.hidden", b"{}")[::2] == (
        403, err("FORBIDDEN", "Task app.tasks.hidden not exposed"))
    assert call(port, "POST", "/__runner/task/app.tasks.nope", b"{}")[::2] == (
        403, err("FORBIDDEN", "Task app.tasks.nope not exposed"))
    assert call(port, "POST", "/__runner/event/app.events.par", b"{}")[::2] == (
        403, err("FORBIDDEN", "Event app.events.par not exposed"))
    # allow-listed without backend: 404
    assert call(port, "POST", "/__runner/task/app.tasks.ghost", b"{}")[::2] == (
        404, err("NOT_FOUND", "Task app.tasks.ghost not found"))
    # body checked last: bad JSON on a refused call is never looked at
    assert call(port, "POST", "/__runner/task/app.tasks.hidden", b"{bad")[0] == 403
    assert call(port, "POST", "/__runner/task/app.tasks.add", b"{bad")[::2] == (
        400, err("INVALID_JSON", "Invalid JSON body"))


def test_auth_header_rules(gw):
    _, port = gw("--token", "other")
    una = err("UNAUTHORIZED", "Unauthorized")
    # token rotation: both tokens pass
    for t in (TOKEN, "other"):
        assert call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-runner-token": t},
                    token=False)[0] == 200
    # case-insensitive header name
    assert call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"X-Runner-Token": TOKEN},
                token=False)[0] == 200
    # repeated header: 401 even if both match
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.noop HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\n"
              b"x-runner-token: secret\r\ncontent-length: 0\r\n\r\n")
    assert rd.response()[::2] == (401, una)
    s.close()
    assert call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-runner-token": "secre"},
                token=False)[::2] == (401, una)
    assert call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-runner-token": ""},
                token=False)[::2] == (401, una)


def test_auth_not_configured(gw):
    p, port = gw(token=False)
    body = err("AUTH_NOT_CONFIGURED", "Authentication not configured.")
    assert call(port, "POST", "/__runner/task/app.tasks.add", b"{}", token=False)[::2] == (500, body)
    assert call(port, "GET", "/__runner/discovery", None, token=False)[::2] == (500, body)
    assert call(port, "POST", "/__runner/event/app.events.notify", b"{}", token=False)[::2] == (500, body)
    assert p.count("AUTH_NOT_CONFIGURED", stream="err") >= 1
    # preflight still works
    assert call(port, "OPTIONS", "/__runner/task/app.tasks.add", None, token=False)[0] == 204
    _, port2 = gw("--allow-anonymous", token=False)
    assert call(port2, "POST", "/__runner/task/app.tasks.add", b'{"a":2,"b":2}', token=False)[::2] == (
        200, b'{"ok":true,"result":4}')


def test_expect_continue_only_after_checks(gw):
    _, port = gw()
    # refused: a final 401, never a 100
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"content-length: 23\r\n\r\n")
    st, h, b, _ = rd.response()
    assert (st, b) == (401, err("UNAUTHORIZED", "Unauthorized"))
    assert h["connection"] == "close"  # the client may or may not send the body now
    s.close()
    # admitted: 100 Continue, then the answer
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"x-runner-token: secret\r\ncontent-length: 23\r\n\r\n")
    assert rd.line() == b"HTTP/1.1 100 Continue"
    assert rd.line() == b""
    s.sendall(b'{"input":{"a":5,"b":3}}')
    assert rd.response()[::2] == (200, b'{"ok":true,"result":8}')
    s.close()


# ------------------------------------------------------------------------------------------------------------
# Request id, CORS, preflight (§5)


def test_request_id(gw):
    _, port = gw()
    for sent, want in (("abc-1.2_3:4", "abc-1.2_3:4"), ("  padded  ", "padded"), ("a" * 128, "a" * 128)):
        st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-runner-request-id": sent})
        assert (st, h["x-runner-request-id"]) == (200, want)
    for bad in ("a b", "a" * 129, "x/y", "é"):
        st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.noop", b"",
                           headers={"x-runner-request-id": bad.encode().decode("latin-1")})
        assert re.match(UUID_RE, h["x-runner-request-id"]), bad
    # repeated: generated
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.noop HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\n"
              b"x-runner-request-id: a\r\nx-runner-request-id: b\r\ncontent-length: 0\r\n\r\n")
    assert re.match(UUID_RE, rd.response()[1]["x-runner-request-id"])
    s.close()
    # errors carry it too
    st, h, _, _ = call(port, "POST", "/__runner/task/app.tasks.add", b"{x", headers={"x-runner-request-id": "r1"})
    assert (st, h["x-runner-request-id"]) == (400, "r1")
    ids = {call(port, "POST", "/__runner/task/app.tasks.noop", b"")[1]["x-runner-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_preflight_exact(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(b"OPTIONS /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\n"
              b"Access-Control-Request-Headers: content-type, x-runner-token\r\n\r\n")
    st, hdrs, _ = rd.head()
    assert st == 204
    assert [k for k, _ in hdrs] == ["Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                                    "Access-Control-Allow-Headers", "content-length", "Date", "Connection",
                                    "Keep-Alive"]
    d = dict(hdrs)
    assert d["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS"
    assert d["Access-Control-Allow-Headers"] == "content-type, x-runner-token"
    assert d["content-length"] == "0"
    # no request headers asked: no Allow-Headers; any path under base, no auth
    s.sendall(b"OPTIONS /__runner/whatever/else HTTP/1.1\r\nHost: x\r\n\r\n")
    st, hdrs, _ = rd.head()
    assert st == 204 and "Access-Control-Allow-Headers" not in dict(hdrs)
    s.close()
    # outside base: the step-0 404
    assert call(port, "OPTIONS", "/elsewhere", None)[0] == 404


def test_cors_options(gw):
    _, port = gw("--cors-origin", "https://app.example", "--cors-credentials", "true", "--cors-expose",
                 "x-a, x-b", "--cors-max-age", "600")
    st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"Origin": "https://x"})
    names = [k for k, _ in hdrs]
    assert names[:4] == ["x-runner-request-id", "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
                         "Access-Control-Expose-Headers"]
    assert (h["access-control-allow-origin"], h["access-control-allow-credentials"],
            h["access-control-expose-headers"]) == ("https://app.example", "true", "x-a, x-b")
    assert "vary" not in h
    st, h, b, hdrs = call(port, "OPTIONS", "/__runner/task/app.tasks.noop", None)
    assert (st, h["access-control-allow-origin"], h["access-control-allow-credentials"],
            h["access-control-max-age"]) == (204, "https://app.example", "true", "600")
    # credentials without an origin: no ACAO, Vary: Origin (fail-safe)
    _, port2 = gw("--cors-credentials", "true")
    st, h, b, _ = call(port2, "POST", "/__runner/task/app.tasks.noop", b"", headers={"Origin": "https://x"})
    assert "access-control-allow-origin" not in h and h["vary"] == "Origin"


# ------------------------------------------------------------------------------------------------------------
# Framing, keep-alive, limits (§6)


def test_pipelined_in_order_and_keepalive(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.add", b'{"input":{"a":1,"b":1}}')
              + req("POST", "/__runner/task/app.tasks.slow", b'{"ms":100}')
              + req("POST", "/__runner/task/app.tasks.echo", b'"x"')
              + req("GET", "/__runner/discovery", None)
              + req("POST", "/__runner/task/app.tasks.noop", b""))
    assert rd.response()[2] == b'{"ok":true,"result":2}'
    assert rd.response()[2] == b'{"ok":true,"result":"done"}'
    assert rd.response()[2] == b'{"ok":true,"result":"x"}'
    assert env(rd.response()[2])["result"]["allowList"]["enabled"] is True
    st, h, b, _ = rd.response()
    assert (st, b, h["connection"]) == (200, b'{"ok":true,"result":{"__type":"Undefined","value":null}}',
                                        "keep-alive")
    s.close()
    # http.client reuses the connection
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    sock = c.sock
    for i in range(10):
        c.request("POST", "/__runner/task/app.tasks.add", body=json.dumps({"a": i, "b": 1}),
                  headers={"x-runner-token": TOKEN})
        r = c.getresponse()
        assert env(r.read()) == {"ok": True, "result": i + 1}
    assert c.sock is sock
    c.close()


@pytest.mark.timeout_s(20)
def test_keepalive_idle_5s(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.noop", b""))
    rd.response()
    t0 = time.monotonic()
    assert rd.at_eof(timeout=10)
    assert 4.0 < time.monotonic() - t0 < 7.0
    s.close()


@pytest.mark.parametrize(
    "data,status",
    [
        (b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /__runner/discovery HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    ],
    ids=["cl-and-te", "te-gzip", "two-lengths", "garbage", "header-flood"],
)
def test_framing_errors_bare(gw, data, status):
    _, port = gw()
    s, rd = raw(port)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    want = b"HTTP/1.1 %d " % status
    got = b""
    s.settimeout(5)
    while True:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    assert got.startswith(want) and got.endswith(b"\r\nConnection: close\r\n\r\n"), got
    assert got.count(b"\r\n") == 3, "a bare response: status line and Connection only"
    s.close()


def test_bad_chunk_mid_body_400(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    st, h, b, _ = rd.response()
    assert (st, b, h["connection"]) == (400, b"", "close")
    s.close()


def test_16k_head_accepted(gw):
    _, port = gw()
    st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-pad": "p" * 16000})
    assert st == 200


def test_json_limit_2mib(gw):
    _, port = gw()
    tl = err("PAYLOAD_TOO_LARGE", "Payload too large")
    big = json.dumps({"input": "x" * (2 * 1024 * 1024 - 12)}, separators=(",", ":")).encode()
    assert len(big) == 2 * 1024 * 1024
    st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.echo", big)
    assert st == 200 and len(env(b)["result"]) == 2 * 1024 * 1024 - 12
    # declared oversize: refused unread, connection closed (more than 64 KiB left)
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.echo", None, headers={"content-length": str(len(big) + 1)}))
    st, h, b, _ = rd.response()
    assert (st, b, h["connection"]) == (413, tl, "close")
    s.close()
    # chunked over the limit
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.echo", None, headers={"Transfer-Encoding": "chunked"}))
    chunk = b"x" * 65536
    try:
        for _ in range(40):
            s.sendall(b"10000\r\n" + chunk + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert rd.response()[::2] == (413, tl)
    s.close()


def test_early_reply_keeps_connection_for_small_bodies(gw):
    _, port = gw()
    s, rd = raw(port)
    # 401 with a 1000-byte body unread: dropped, connection kept
    s.sendall(req("POST", "/__runner/task/app.tasks.add", b"x" * 1000, token=False))
    st, h, b, _ = rd.response()
    assert (st, h["connection"]) == (401, "keep-alive")
    s.sendall(req("POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":1}'))
    assert rd.response()[2] == b'{"ok":true,"result":2}'
    # 200 KiB unread: Connection: close, and the reply still arrives whole
    s.sendall(req("POST", "/__runner/task/app.tasks.add", None, headers={"content-length": "204800"}, token=False))
    s.sendall(b"y" * 100000)
    st, h, b, _ = rd.response()
    assert (st, h["connection"], b) == (401, "close", err("UNAUTHORIZED", "Unauthorized"))
    s.close()


def test_empty_body_is_undefined_and_bare_values(gw):
    _, port = gw()
    undef = {"__type": "Undefined", "value": None}
    assert env(post(port, "task/app.tasks.echo", None)[2]) == {"ok": True, "result": undef}
    assert env(post(port, "task/app.tasks.echo", 5)[2]) == {"ok": True, "result": 5}
    assert env(post(port, "task/app.tasks.echo", {"input": None})[2]) == {"ok": True, "result": None}
    assert env(post(port, "task/app.tasks.echo", {"a": 1})[2]) == {"ok": True, "result": {"a": 1}}
    assert env(post(port, "task/app.tasks.noop", {})[2]) == {"ok": True, "result": undef}


def test_unknown_type_400(gw):
    _, port = gw()
    st, h, b = post(port, "task/app.tasks.echo", {"input": {"__type": "Nope", "value": 1}})
    assert (st, b) == (400, err("INVALID_JSON", "Invalid JSON body"))
    st, h, b = post(port, "task/app.tasks.echo", {"input": {"d": {"__type": "Date", "value": "1970-01-01T00:00:00.005Z"}}})
    assert st == 200 and env(b)["result"]["d"]["__type"] == "Date"
    assert call(port, "POST", "/__runner/task/app.tasks.echo", b" ")[::2] == (400, err("INVALID_JSON", "Invalid JSON body"))


# ------------------------------------------------------------------------------------------------------------
# Envelopes and errors (§4)


def test_typed_error_exact(gw):
    _, port = gw()
    st, h, b = post(port, "task/app.tasks.fail", {})
    assert st == 409
    assert b == (b'{"ok":false,"error":{"message":"{\\"code\\":\\"X1\\",\\"why\\":\\"dup\\"}","code":"INTERNAL_ERROR",'
                 b'"id":"app.errors.AppError","data":{"code":"X1","why":"dup"},"httpCode":409}}')


def test_untyped_error_sanitised(gw):
    p, port = gw()
    st, h, b = post(port, "task/app.tasks.boom", {}, headers={"x-runner-request-id": "boom-1"})
    assert (st, b) == (500, err("INTERNAL_ERROR", "Internal Error"))
    p.wait_line(r"boom.*boom-1", stream="err", timeout=5)


def test_events(gw):
    _, port = gw()
    assert post(port, "event/app.events.notify",
                {"payload": {"message": "hi", "at": {"__type": "Date", "value": "1970-01-01T00:00:00.000Z"}}})[::2] \
        == (200, b'{"ok":true}')
    st, h, b = post(port, "event/app.events.notify", {"payload": {"message": "hi2"}, "returnPayload": True})
    assert (st, b) == (200, b'{"ok":true,"result":{"message":"hi2","touched":true}}')
    # returnPayload by JS truthiness; no payload -> undefined
    assert post(port, "event/app.events.notify", {"payload": {"m": 1}, "returnPayload": 0})[2] == b'{"ok":true}'
    st, h, b = post(port, "event/app.events.notify", {"x": 1, "returnPayload": "yes"})
    assert env(b) == {"ok": True, "result": {"__type": "Undefined", "value": None}}
    # parallel + returnPayload
    st, h, b = post(port, "event/app.events.par", {"payload": 1, "returnPayload": True})
    assert (st, b) == (400, err("PARALLEL_EVENT_RETURN_UNSUPPORTED",
                                "Event app.events.par is marked parallel; returning a payload is not supported."))
    assert post(port, "event/app.events.par", {"payload": 1})[::2] == (200, b'{"ok":true}')
    # a multipart body to an event is JSON: invalid
    st, _, b, _ = call(port, "POST", "/__runner/event/app.events.notify", b"--b\r\n",
                       headers={"content-type": "multipart/form-data; boundary=b"})
    assert (st, b) == (400, err("INVALID_JSON", "Invalid JSON body"))


def test_discovery(gw):
    _, port = gw("--allow-task", "app.tasks.whoami", "--allow-task", "app.tasks.add", "--allow-event",
                 "app.events.notify", "--allow-event", "app.events.par")
    st, h, b, _ = call(port, "GET", "/__runner/discovery", None)
    assert (st, b) == (200, b'{"ok":true,"result":{"allowList":{"enabled":true,"tasks":["app.tasks.whoami",'
                            b'"app.tasks.add"],"events":["app.events.notify","app.events.par"]}}}')
    assert call(port, "POST", "/__runner/discovery", b"{}")[::2] == (405, err("METHOD_NOT_ALLOWED", "Method Not Allowed"))
    assert call(port, "GET", "/__runner/discovery", None, token=False)[0] == 401
    assert call(port, "GET", "/__runner//discovery?x", None)[0] == 200


# ------------------------------------------------------------------------------------------------------------
# Deadlines, aborts, timeouts (§11)


def test_deadline_504(gw):
    p, port = gw("--deadline", "300")
    t0 = time.monotonic()
    st, h, b = post(port, "task/app.tasks.slow", {"ms": 5000})
    assert (st, b) == (504, err("TASK_TIMEOUT", "Task timed out"))
    assert time.monotonic() - t0 < 2.0
    assert post(port, "task/app.tasks.slow", {"ms": 10})[::2] == (200, b'{"ok":true,"result":"done"}')


@pytest.mark.timeout_s(60)
def test_client_disconnect_and_half_close_abort(gw):
    p, port = gw()
    post(port, "task/app.tasks.noop", None)
    time.sleep(0.2)
    fds = p.fd_count()
    for i in range(50):
        s, rd = raw(port)
        s.sendall(req("POST", "/__runner/task/app.tasks.slow", b'{"ms":3000}'))
        if i % 2:
            s.shutdown(socket.SHUT_WR)  # half-close is an abort too
            assert rd.at_eof(timeout=3), "half-closed request was not aborted"
        s.close()
    # mid-body disconnects
    for _ in range(10):
        s, rd = raw(port)
        s.sendall(req("POST", "/__runner/task/app.tasks.echo", None, headers={"content-length": "100000"}) + b"x" * 500)
        s.close()
    assert post(port, "task/app.tasks.add", {"a": 1, "b": 2})[::2] == (200, b'{"ok":true,"result":3}')
    deadline = time.monotonic() + 5
    while p.fd_count() > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.fd_count() <= fds, "fd leak: %d -> %d" % (fds, p.fd_count())
    assert p.alive()


@pytest.mark.timeout_s(30)
def test_slowloris_head_silent_close(gw):
    _, port = gw()
    s, rd = raw(port, timeout=20)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    s.settimeout(15)
    try:
        d = s.recv(100)
    except ConnectionResetError:
        d = b""
    assert d == b"", "head timeout must close silently, got %r" % d
    assert 8.0 < time.monotonic() - t0 < 13.0
    s.close()


# ------------------------------------------------------------------------------------------------------------
# Octet, streams, duplex (§8.4, §8.5)


def test_octet_chunked_1000(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.octet", None,
                  headers={"content-type": "application/octet-stream", "Transfer-Encoding": "chunked"}))
    s.sendall(b"1f4\r\n" + b"a" * 500 + b"\r\n1f4\r\n" + b"b" * 500 + b"\r\n0\r\n\r\n")
    assert rd.response()[::2] == (200, b'{"ok":true,"result":{"receivedBytes":1000}}')
    # big body with Content-Length, flow-controlled
    n = 5 * 1024 * 1024
    s.sendall(req("POST", "/__runner/task/app.tasks.octet", b"z" * n,
                  headers={"content-type": "application/octet-stream"}))
    assert env(rd.response()[2]) == {"ok": True, "result": {"receivedBytes": n}}
    s.close()


def test_octet_cap(gw):
    _, port = gw("--max-octet", "1000")
    st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.octet", b"q" * 1001,
                       headers={"content-type": "application/octet-stream"})
    assert (st, b) == (413, err("PAYLOAD_TOO_LARGE", "Payload too large"))
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.octet", None,
                  headers={"content-type": "application/octet-stream", "Transfer-Encoding": "chunked"}))
    s.sendall(b"3e8\r\n" + b"a" * 1000 + b"\r\n1\r\nb\r\n0\r\n\r\n")
    assert rd.response()[::2] == (413, err("PAYLOAD_TOO_LARGE", "Payload too large"))
    s.close()


def test_stream_response(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.stream", b"", headers={"content-type": "application/octet-stream",
                                                                         "x-runner-request-id": "st-1"}))
    st, h, b, hdrs = rd.response()
    assert (st, b) == (200, b"chunk1\nchunk2\n")
    assert [k for k, _ in hdrs] == ["x-runner-request-id", "Access-Control-Allow-Origin", "content-type",
                                    "X-Content-Type-Options", "X-Frame-Options", "Date", "Connection", "Keep-Alive",
                                    "Transfer-Encoding"]
    assert (h["x-runner-request-id"], h["content-type"], h["transfer-encoding"]) == (
        "st-1", "application/octet-stream", "chunked")
    s.close()


def test_duplex(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.duplex", None,
                  headers={"content-type": "application/octet-stream", "Transfer-Encoding": "chunked"}))
    s.sendall(b"3\r\nabc\r\n")
    st, hdrs, _ = rd.head()
    d = dict(hdrs)
    assert st == 200 and d["Transfer-Encoding"] == "chunked" and "x-runner-request-id" in d
    assert rd.line() == b"3" and rd.exact(5) == b"ABC\r\n"  # before the request ended
    s.sendall(b"3\r\ndef\r\n0\r\n\r\n")
    assert rd.line() == b"3" and rd.exact(5) == b"DEF\r\n"
    assert rd.line() == b"0" and rd.line() == b""
    # the connection is reusable
    s.sendall(req("POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":1}'))
    assert rd.response()[2] == b'{"ok":true,"result":2}'
    s.close()


# ------------------------------------------------------------------------------------------------------------
# `culvert gateway` arguments


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--bogus"], "unknown option"),
        (["--listen", "nohost"], "--listen"),
        (["--workers", "0"], "--workers"),
        (["--worker-protocol", "v9"], "--worker-protocol"),
        (["--deadline", "abc"], "--deadline"),
        (["--worker", "'unbalanced"], "unbalanced"),
        (["--token", ""], "empty token"),
        (["--token-file", "/nonexistent/x"], "--token-file"),
        (["--base-path", "/a b"], "base path"),
        (["extra"], "unexpected argument"),
    ],
)
def test_cli_errors(culvert, args, msg):
    rc, out, errt = culvert.run(["gateway"] + args, timeout=10)
    assert rc == 2, (rc, out, errt)
    assert msg in errt


def test_cli_help_and_usage(culvert):
    rc, out, _ = culvert.run(["gateway", "--help"])
    assert rc == 0 and "--worker" in out and "--allow-task" in out
    rc, out, errt = culvert.run(["--help"])
    assert "gateway" in out


def test_cli_serves_and_drains(culvert):
    p = culvert.procs.start([CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN,
                             "--allow-task", "app.tasks.add"], name="gateway")
    m = p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10)
    port = int(m.group(1))
    st, h, b = post(port, "task/app.tasks.add", {"a": 1, "b": 2})
    assert (st, b) == (404, err("NOT_FOUND", "Task app.tasks.add not found"))
    assert post(port, "task/app.tasks.x", {})[0] == 403
    p.p.send_signal(signal.SIGTERM)
    assert p.wait_exit(15) == 0


# ------------------------------------------------------------------------------------------------------------
# Multipart (§8.3)

import hashlib  # noqa: E402

BND = "runner-mwrb32ry-sns37gtvjio"


def mp_field(name, data, filename=None, ctype=None):
    h = 'Content-Disposition: form-data; name="%s"' % name
    if filename is not None:
        h += '; filename="%s"' % filename
    h += "\r\n"
    if ctype:
        h += "Content-Type: %s\r\n" % ctype
    return ("--%s\r\n%s\r\n" % (BND, h)).encode() + data + b"\r\n"


def mp_body(*parts, close=True):
    return b"".join(parts) + (("--%s--\r\n" % BND).encode() if close else b"")


def sentinel(fid="F1", **meta):
    return {"$runnerFile": "File", "id": fid, "meta": meta}


def manifest(inp):
    return mp_field("__manifest", json.dumps({"input": inp}).encode())


def upload(port, body, task="app.tasks.upload", chunked=False):
    s, rd = raw(port)
    hdrs = {"content-type": "multipart/form-data; boundary=%s" % BND}
    if chunked:
        hdrs["Transfer-Encoding"] = "chunked"
        s.sendall(req("POST", "/__runner/task/" + task, None, headers=hdrs))
        step = 7
        for i in range(0, len(body), step):
            piece = body[i:i + step]
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        s.sendall(b"0\r\n\r\n")
    else:
        s.sendall(req("POST", "/__runner/task/" + task, body, headers=hdrs))
    r = rd.response()
    s.close()
    return r


def up_result(name, typ, data):
    return {"ok": True, "result": {"name": name, "type": typ, "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}}


def test_multipart_capture_smart_client(gw):
    _, port = gw()
    s, rd = raw(port)
    s.sendall(
        b"POST /__runner/task/app.tasks.upload HTTP/1.1\r\n"
        b"content-type: multipart/form-data; boundary=runner-mwrb32ry-sns37gtvjio\r\nx-runner-token: secret\r\n"
        b"Host: 127.0.0.1:7070\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"54\r\n--runner-mwrb32ry-sns37gtvjio\r\nContent-Disposition: form-data; name=\"__manifest\"\r\n\r\n\r\n"
        b"92\r\n{\"input\":{\"note\":{\"when\":{}},\"file\":{\"$runnerFile\":\"File\",\"id\":\"F1\",\"meta\":{\"name\":"
        b"\"hello.txt\",\"type\":\"text/plain\",\"size\":11,\"extra\":{\"tag\":1}}}}}\r\n"
        b"2\r\n\r\n\r\n"
        b"81\r\n--runner-mwrb32ry-sns37gtvjio\r\nContent-Disposition: form-data; name=\"file:F1\"; "
        b"filename=\"hello.txt\"\r\nContent-Type: text/plain\r\n\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n2\r\n\r\n\r\n"
        b"21\r\n--runner-mwrb32ry-sns37gtvjio--\r\n\r\n0\r\n\r\n"
    )
    st, h, b, _ = rd.response()
    assert (st, env(b)) == (200, up_result("hello.txt", "text/plain", b"hello world"))
    s.close()


def test_multipart_ejson_sentinel(gw):
    # Clients before 2026 tagged files {"$ejson":"File",...} (spec §8.3: MAY accept): same handling; a missing
    # part for such a sentinel is reported like any other.
    _, port = gw()
    data = os.urandom(5000)
    legacy = {"$ejson": "File", "id": "F1", "meta": {"name": "old.txt", "type": "text/plain"}}
    st, h, b, _ = upload(port, mp_body(manifest({"file": legacy}),
                                       mp_field("file:F1", data, filename="old.txt", ctype="text/plain")))
    assert (st, env(b)) == (200, up_result("old.txt", "text/plain", data))
    st, h, b, _ = upload(port, mp_body(manifest({"file": dict(legacy, id="F7")})))
    assert (st, env(b)["error"]["code"]) == (400, "MISSING_FILE_PART")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked-7"])
def test_multipart_file_before_manifest_and_meta_gaps(gw, chunked):
    _, port = gw()
    data = os.urandom(100000)
    body = mp_body(mp_field("other", b"ignored"),
                   mp_field("file:F1", data, filename="pic.png", ctype="image/png"),
                   manifest({"note": "n", "file": sentinel(size=3)}))
    st, h, b, _ = upload(port, body, chunked=chunked)
    assert (st, env(b)) == (200, up_result("pic.png", "image/png", data))


def test_multipart_big_file_streams(gw):
    _, port = gw()
    data = os.urandom(6 << 20)
    body = mp_body(manifest({"file": sentinel(name="big.bin", type="application/x-big")}),
                   mp_field("file:F1", data, filename="ignored.bin", ctype="text/plain"))
    st, h, b, _ = upload(port, body)
    assert (st, env(b)) == (200, up_result("big.bin", "application/x-big", data))


@pytest.mark.parametrize(
    "body,status,code,msg",
    [
        (mp_body(mp_field("file:F1", b"x", filename="a")), 400, "MISSING_MANIFEST", "Missing manifest"),
        (mp_body(mp_field("__manifest", b"[1,2]")), 400, "MISSING_MANIFEST", "Missing manifest"),
        (mp_body(mp_field("__manifest", b"{bad")), 400, "INVALID_MULTIPART", "Invalid manifest"),
        (mp_body(manifest({"file": sentinel("F9")})), 400, "MISSING_FILE_PART", "Missing file part for id F9"),
        (mp_body(manifest({"file": sentinel()}), mp_field("file:F1", b"abc", filename="a"), close=False), 400,
         "INVALID_MULTIPART", "Invalid multipart payload"),
        (b"garbage without any delimiter", 400, "INVALID_MULTIPART", "Invalid multipart payload"),
        (mp_body(manifest({"files": [sentinel("F%d" % i) for i in range(11)]})), 413, "PAYLOAD_TOO_LARGE",
         "Files limit exceeded"),
        (mp_body(mp_field("__manifest", b" " * (1024 * 1024 + 1))), 413, "PAYLOAD_TOO_LARGE",
         "Field limit exceeded"),
    ],
    ids=["no-manifest", "manifest-not-object", "manifest-bad-json", "missing-file-part", "truncated", "garbage",
         "too-many-sentinels", "manifest-too-big"],
)
def test_multipart_errors(gw, body, status, code, msg):
    _, port = gw()
    st, h, b, _ = upload(port, body)
    assert (st, b) == (status, err(code, msg))


def test_multipart_bad_boundary(gw):
    _, port = gw()
    st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.upload", b"--x--\r\n",
                       headers={"content-type": "multipart/form-data"})
    assert (st, b) == (400, err("INVALID_MULTIPART", "Invalid multipart payload"))


@pytest.mark.timeout_s(60)
def test_multipart_file_size_limit(gw):
    _, port = gw()
    data = b"z" * (20 * 1024 * 1024 + 1)
    body = mp_body(manifest({"file": sentinel()}), mp_field("file:F1", data, filename="big"))
    st, h, b, _ = upload(port, body)
    assert (st, b) == (413, err("PAYLOAD_TOO_LARGE", "File size limit exceeded"))


# File parts before the manifest are spooled: past 256 KiB per request they go to an unnamed temporary file in
# --spool-dir and are read back in chunks once the call starts, so the gateway's memory does not grow with them.

SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s" % key)


def spool_fds(pid, spool_dir):
    """The process's descriptors open on files of spool_dir (O_TMPFILE and unlinked files: '/dir/#N (deleted)')."""
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith(str(spool_dir) + "/"):
            out.append(target)
    return out


@pytest.mark.timeout_s(120)
def test_multipart_big_file_before_manifest_is_spooled(gw, tmp_path):
    p, port = gw("--max-file-size", str(64 << 20), "--spool-dir", str(tmp_path))
    # warm up (first-use allocations), then the peak RSS so far
    st, h, b, _ = upload(port, mp_body(mp_field("file:F1", b"w", filename="w"), manifest({"file": sentinel()})))
    assert st == 200, b
    hwm0 = status_kib(p.pid, "VmHWM")
    data = os.urandom(40 << 20)
    body = mp_body(mp_field("file:F1", data, filename="big.bin", ctype="application/x-big"),
                   manifest({"file": sentinel()}))
    st, h, b, _ = upload(port, body)
    assert (st, env(b)) == (200, up_result("big.bin", "application/x-big", data))
    grown = status_kib(p.pid, "VmHWM") - hwm0
    if not SANITIZED:
        print("spool: peak RSS grew by %d KiB for a 40 MiB early part" % grown)
        assert grown < 20 * 1024, "peak RSS grew by %d KiB for a 40 MiB early part" % grown
    assert spool_fds(p.pid, tmp_path) == []
    assert os.listdir(tmp_path) == []  # unnamed files only


def upload_until_spooled(p, port, spool_dir, size):
    """Sends all but the last KiB of a `size`-byte file part that comes before the manifest; returns (socket,
    reader) once the gateway holds a file open in spool_dir."""
    s, rd = raw(port)
    part = mp_field("file:F1", b"d" * size, filename="x")
    body = mp_body(part, manifest({"file": sentinel()}))
    s.sendall(req("POST", "/__runner/task/app.tasks.upload", None, extra=body[:len(part) - 1024],
                  headers={"content-type": "multipart/form-data; boundary=%s" % BND, "content-length": str(len(body))}))
    deadline = time.monotonic() + 10
    while not spool_fds(p.pid, spool_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool_fds(p.pid, spool_dir), "no spool file open during the upload"
    return s, rd


@pytest.mark.timeout_s(60)
def test_multipart_spool_file_closed_on_disconnect(gw, tmp_path):
    p, port = gw("--spool-dir", str(tmp_path))
    # mid-upload: past the memory budget, the part is in a file of the spool directory
    s, rd = upload_until_spooled(p, port, tmp_path, 6 << 20)
    s.close()
    deadline = time.monotonic() + 10
    while spool_fds(p.pid, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool_fds(p.pid, tmp_path) == []
    st, h, b, _ = upload(port, mp_body(manifest({"file": sentinel()}), mp_field("file:F1", b"ok", filename="a")))
    assert st == 200, b


@pytest.mark.timeout_s(60)
def test_multipart_spool_at_shutdown(gw, tmp_path):
    # SIGTERM while a spooled upload is open: the grace period (10 s) ends, the request is cut, the gateway exits 0
    # (under ASan: nothing leaked).
    p, port = gw("--spool-dir", str(tmp_path))
    s, rd = upload_until_spooled(p, port, tmp_path, 2 << 20)
    p.p.send_signal(signal.SIGTERM)
    assert p.wait_exit(30) == 0
    assert rd.at_eof(5)
    s.close()


@pytest.mark.timeout_s(60)
def test_multipart_spool_write_failure(procs, tmp_path):
    # RLIMIT_FSIZE (with SIGXFSZ ignored) makes writes past 1 MiB fail with EFBIG, as a full disk would.
    wrap = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); os.execv(sys.argv[1], sys.argv[1:])")
    p = procs.start(["/usr/bin/python3", "-c", wrap, NATIVE_BIN, "--listen", "127.0.0.1:0", "--token", TOKEN,
                     "--spool-dir", str(tmp_path)], name="gateway_native")
    port = int(p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
    fds0 = p.fd_count()
    body = mp_body(mp_field("file:F1", b"e" * (3 << 20), filename="x"), manifest({"file": sentinel()}))
    st, h, b, _ = call(port, "POST", "/__runner/task/app.tasks.upload", body,
                       headers={"content-type": "multipart/form-data; boundary=%s" % BND,
                                "x-runner-request-id": "spool-fail-1"})
    assert (st, b) == (500, err("INTERNAL_ERROR", "Internal Error"))
    p.wait_line(r"writing a spooled file part failed: .*\(rid spool-fail-1\)", timeout=5, stream="err")
    # other requests are unaffected, below the memory budget and past it (within the file size limit)
    data = os.urandom(200 * 1024)
    st, h, b, _ = upload(port, mp_body(mp_field("file:F1", data, filename="s"), manifest({"file": sentinel()})))
    assert (st, env(b)) == (200, up_result("s", "text/plain", data))
    data = os.urandom(900 * 1024)
    st, h, b, _ = upload(port, mp_body(mp_field("file:F1", data, filename="m"), manifest({"file": sentinel()})))
    assert (st, env(b)) == (200, up_result("m", "text/plain", data))
    deadline = time.monotonic() + 10
    while p.fd_count() != fds0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.fd_count() == fds0 and spool_fds(p.pid, tmp_path) == []
    p.p.send_signal(signal.SIGTERM)
    assert p.wait_exit(15) == 0


def test_spool_dir_checked_at_start(culvert, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for d, why in (("/nonexistent/spool", "No such file or directory"), (str(f), "Not a directory")):
        rc, out, errt = culvert.run(["gateway", "--allow-anonymous", "--listen", "127.0.0.1:0", "--spool-dir", d],
                                    timeout=10)
        assert rc == 2, (rc, out, errt)
        assert "spool directory '%s' is not a writable directory: %s" % (d, why) in errt, errt
    rc, out, errt = culvert.run(["gateway", "--spool-dir", ""], timeout=10)
    assert rc == 2 and "--spool-dir wants a directory" in errt, errt


def test_multipart_stream_reply(gw):
    _, port = gw()
    st, h, b, _ = upload(port, mp_body(manifest({"x": 1})), task="app.tasks.stream")
    assert (st, b, h["content-type"]) == (200, b"chunk1\nchunk2\n", "application/octet-stream")
    st, h, b, _ = upload(port, mp_body(manifest({"a": 2, "b": 5})), task="app.tasks.add")
    assert (st, b) == (200, b'{"ok":true,"result":7}')


# ------------------------------------------------------------------------------------------------------------
# Shutdown


def test_sigterm_drains_in_flight_calls(gw):
    p, port = gw()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.slow", b'{"ms":800}'))
    time.sleep(0.2)
    p.p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    # no new connections once draining
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    st, h, b, _ = rd.response()
    assert (st, b) == (200, b'{"ok":true,"result":"done"}')
    assert p.wait_exit(10) == 0
    s.close()


def test_graph_body_native(gw):
    _, port = gw()
    graph = {"__graph": True, "version": 1, "root": {"__ref": "obj_1"},
             "nodes": {"obj_1": {"kind": "object", "value": {"input": {"__ref": "obj_2"}}},
                       "obj_2": {"kind": "object", "value": {"n": 1, "tags": {"__ref": "arr_1"}}},
                       "arr_1": {"kind": "array", "value": [1, 2]}}}
    st, h, b = post(port, "task/app.tasks.echo", graph)
    assert (st, env(b)) == (200, {"ok": True, "result": {"n": 1, "tags": [1, 2]}})


def event_graph(payload_ref=True, ret=True):
    root = {"payload": {"__ref": "obj_2"}} if payload_ref else {"x": 1}
    if ret:
        root["returnPayload"] = True
    return {"__graph": True, "version": 1, "root": {"__ref": "obj_1"},
            "nodes": {"obj_1": {"kind": "object", "value": root},
                      "obj_2": {"kind": "object", "value": {"n": 1, "when": {"__ref": "d_1"}, "a": {"__ref": "arr_1"},
                                                            "b": {"__ref": "arr_1"}}},
                      "arr_1": {"kind": "array", "value": [1, 2]},
                      "d_1": {"kind": "type", "type": "Date", "value": "2020-01-02T03:04:05.006Z"}}}


def test_graph_body_event_native(gw):
    _, port = gw()
    st, h, b = post(port, "event/app.events.notify", event_graph())
    assert (st, env(b)) == (200, {"ok": True, "result": {
        "n": 1, "when": {"__type": "Date", "value": "2020-01-02T03:04:05.006Z"}, "a": [1, 2], "b": [1, 2],
        "touched": True}})
    # returnPayload comes from the resolved root too; a root without payload emits undefined
    assert post(port, "event/app.events.notify", event_graph(ret=False))[::2] == (200, b'{"ok":true}')
    st, h, b = post(port, "event/app.events.notify", event_graph(payload_ref=False))
    assert (st, b) == (200, b'{"ok":true,"result":{"__type":"Undefined","value":null}}')
    # parallel + returnPayload inside the graph: 400 as for a tree body
    st, h, b = post(port, "event/app.events.par", event_graph())
    assert (st, env(b)["error"]["code"]) == (400, "PARALLEL_EVENT_RETURN_UNSUPPORTED")
    # a cycle, a dangling ref, an unknown type: 400 INVALID_JSON
    bad = [{"__graph": True, "version": 1, "root": {"__ref": "o"},
            "nodes": {"o": {"kind": "object", "value": {"payload": {"__ref": "o"}}}}},
           {"__graph": True, "version": 1, "root": {"__ref": "o"}, "nodes": {}},
           {"__graph": True, "version": 1, "root": {"__ref": "o"},
            "nodes": {"o": {"kind": "type", "type": "Nope", "value": 1}}}]
    for g in bad:
        assert post(port, "event/app.events.notify", g)[::2] == (400, err("INVALID_JSON", "Invalid JSON body")), g


def test_graph_body_event_pool(cli_gw):
    port = cli_gw("--allow-event", "app.events.notify")
    st, h, b = post(port, "event/app.events.notify", event_graph())
    assert (st, env(b)) == (200, {"ok": True, "result": {
        "n": 1, "when": {"__type": "Date", "value": "2020-01-02T03:04:05.006Z"}, "a": [1, 2], "b": [1, 2]}})


def test_cli_nothing_exposed(culvert):
    p = culvert.procs.start([CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN], name="gateway")
    port = int(p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
    st, h, b, _ = call(port, "GET", "/__runner/discovery", None)
    assert (st, b) == (200, b'{"ok":true,"result":{"allowList":{"enabled":false,"tasks":[],"events":[]}}}')
    assert post(port, "task/app.tasks.add", {})[::2] == (403, err("FORBIDDEN", "Exposure not enabled"))
    _, port2 = None, None
    p.p.send_signal(signal.SIGINT)
    assert p.wait_exit(15) == 0
    q = culvert.procs.start([CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN,
                             "--no-discovery", "--base-path", "/api/"], name="gateway2")
    port2 = int(q.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
    assert call(port2, "GET", "/api/discovery", None)[::2] == (404, err("NOT_FOUND", "Not Found"))
    assert "x-runner-request-id" not in call(port2, "GET", "/__runner/discovery", None)[1]
    q.p.send_signal(signal.SIGTERM)
    assert q.wait_exit(15) == 0


# ------------------------------------------------------------------------------------------------------------
# Streams from a worker pool through the core: truncation and the stream-idle timer

STREAM_WORKER = r'''
import base64, json, sys
def out(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
out({"type": "hello", "protocol": "cwp/1", "pid": 1, "tasks": ["s.ok", "s.trunc", "s.stall"], "events": [],
     "features": ["streams", "cancel"]})
for line in sys.stdin:
    m = json.loads(line)
    t, i = m.get("type"), m.get("id")
    if t == "task":
        out({"id": i, "ok": True, "stream": {"status": 201, "contentType": "text/csv",
                                              "headers": {"x-custom": "yes", "set-cookie": "a=b", "Connection": "x"}}})
        out({"type": "data", "id": i, "stream": "out", "b64": base64.b64encode(b"a,b\n").decode()})
        if m["taskId"] == "s.ok":
            out({"type": "end", "id": i, "stream": "out"})
        elif m["taskId"] == "s.trunc":
            out({"type": "end", "id": i, "stream": "out", "error": {"message": "x", "code": "STREAM_ERROR"}})
    elif t in ("ping", "shutdown"):
        out({"id": i, "ok": True})
        if t == "shutdown":
            break
'''


def test_pool_stream_truncation_and_idle(culvert, tmp_path):
    w = tmp_path / "w.py"
    w.write_text(STREAM_WORKER)
    p = culvert.procs.start([CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN, "--allow-task",
                             "s.ok", "--allow-task", "s.trunc", "--allow-task", "s.stall", "--stream-idle", "500",
                             "--worker", "/usr/bin/python3 '%s'" % w, "--workers", "1"], name="gateway")
    port = int(p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
    p.wait_line(r"worker 0 ready", stream="err", timeout=10)
    octet = {"content-type": "application/octet-stream"}
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/s.ok", b"", headers=octet))
    st, h, b, hdrs = rd.response()
    assert (st, b, h["content-type"], h["x-custom"]) == (201, b"a,b\n", "text/csv", "yes")
    assert "set-cookie" not in h and h["connection"] == "keep-alive"
    assert [k for k, _ in hdrs][:3] == ["x-runner-request-id", "Access-Control-Allow-Origin", "content-type"]
    # an error after the head: the chunked body ends without its last chunk
    s.sendall(req("POST", "/__runner/task/s.trunc", b"", headers=octet))
    st, hdrs, _ = rd.head()
    assert st == 201
    assert rd.line() == b"4" and rd.exact(6) == b"a,b\n\r\n"
    assert rd.at_eof(timeout=5)
    s.close()
    # silent stream: cut after the idle time
    s, rd = raw(port)
    t0 = time.monotonic()
    s.sendall(req("POST", "/__runner/task/s.stall", b"", headers=octet))
    assert rd.head()[0] == 201
    assert rd.line() == b"4" and rd.exact(6) == b"a,b\n\r\n"
    assert rd.at_eof(timeout=5)
    assert 0.4 < time.monotonic() - t0 < 3
    s.close()
    p.wait_line(r"stream idle", stream="err", timeout=5)
    p.p.send_signal(signal.SIGTERM)
    assert p.wait_exit(20) == 0


def test_status_lines_as_node(gw):
    _, port = gw()
    for body, hdrs, line in ((None, {"content-length": "3000000"}, b"HTTP/1.1 413 Payload Too Large"),
                             (b"{}", {}, b"HTTP/1.1 200 OK")):
        s, rd = raw(port)
        s.sendall(req("POST", "/__runner/task/app.tasks.noop", body, headers=hdrs))
        assert rd.line() == line
        s.close()
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.fail", b"{}"))
    assert rd.line() == b"HTTP/1.1 409 Conflict"
    s.close()


CONTEXT_WORKER = r'''
import json, sys
def out(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
out({"type": "hello", "protocol": "cwp/1", "pid": 1, "tasks": ["ctx"], "events": []})
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "task":
        out({"id": m["id"], "ok": True, "result": {"context": m["context"], "input": m["input"], "rid": m["rid"]}})
    elif m.get("type") in ("ping", "shutdown"):
        out({"id": m["id"], "ok": True})
        if m["type"] == "shutdown":
            break
'''


def test_pool_context_object(culvert, tmp_path):
    w = tmp_path / "w.py"
    w.write_text(CONTEXT_WORKER)
    p = culvert.procs.start([CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN, "--allow-task",
                             "ctx", "--worker", "/usr/bin/python3 %s" % w, "--workers", "1"], name="gateway")
    port = int(p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
    p.wait_line(r"worker 0 ready", stream="err", timeout=10)
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/ctx?q=1&a+b=c%20d&q=2 HTTP/1.1\r\nHost: h:1\r\nx-runner-token: secret\r\n"
              b"X-Multi: a\r\nx-multi: b\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
              b"x-runner-request-id: ctx-1\r\nx-runner-context: {\"k\":\"v\"}\r\n\r\n"
              b"11\r\n{\"input\": [1, 2]}\r\n0\r\n\r\n")
    st, h, b, _ = rd.response()
    s.close()
    r = env(b)["result"]
    ctx = r["context"]
    assert (st, r["input"], r["rid"]) == (200, [1, 2], "ctx-1")
    assert (ctx["method"], ctx["path"], ctx["requestId"], ctx["remote"]) == ("POST", "/__runner/task/ctx", "ctx-1",
                                                                              "127.0.0.1")
    assert ctx["query"] == {"q": "2", "a b": "c d"}
    assert ctx["headers"] == {"host": "h:1", "x-multi": "a, b", "x-runner-request-id": "ctx-1",
                              "x-runner-context": '{"k":"v"}'}
    assert ctx["runnerContext"] == '{"k":"v"}'
    p.p.send_signal(signal.SIGTERM)
    assert p.wait_exit(20) == 0


def test_duplex_octet_cap_truncates(gw):
    _, port = gw("--max-octet", "5")
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.duplex", None,
                  headers={"content-type": "application/octet-stream", "Transfer-Encoding": "chunked"}))
    s.sendall(b"3\r\nabc\r\n")
    assert rd.head()[0] == 200
    assert rd.line() == b"3" and rd.exact(5) == b"ABC\r\n"
    s.sendall(b"3\r\ndef\r\n")  # over the cap after the head: the stream is cut
    assert rd.at_eof(timeout=5)
    s.close()


# ------------------------------------------------------------------------------------------------------------
# CORS, the §5.5 table, on `culvert gateway` (with the fake worker tests/tools/gw_worker.py for 200s and
# streams). Header order as Runner 5.5.0's server writes it (tests/gateway/cors.test.mjs compares the two).

GW_WORKER = str(REPO / "tests" / "tools" / "gw_worker.py")


@pytest.fixture
def cli_gw(culvert, tmp_path):
    """Factory: `culvert gateway` with the fake worker and the given flags; returns the port. Stopped with
    SIGTERM at teardown (must exit 0)."""
    started = []

    def start(*flags, worker=True):
        args = [CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN,
                "--allow-task", "app.tasks.add", "--allow-task", "app.tasks.stream", "--allow-task",
                "app.tasks.whoami"]
        if worker:
            args += ["--worker", "/usr/bin/python3 %s" % GW_WORKER, "--workers", "1"]
        p = culvert.procs.start(args + list(flags), env={"GW_WORKER_LOG": str(tmp_path / "w.log")},
                                name="gateway")
        port = int(p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10).group(1))
        if worker:
            p.wait_line(r"worker 0 ready", stream="err", timeout=15)
        started.append(p)
        return port

    yield start
    for p in started:
        if p.alive():
            p.p.send_signal(signal.SIGTERM)
            assert p.wait_exit(20) == 0, p.dump()


def cors_lines(hdrs):
    return [(k, v) for k, v in hdrs if k.lower() == "vary" or k.lower().startswith("access-control-")]


def preflight_lines(port, origin=None, asked=None):
    h = {"Host": "x"}
    if origin is not None:
        h["Origin"] = origin
    if asked is not None:
        h["Access-Control-Request-Headers"] = asked
    s, rd = raw(port)
    s.sendall(("OPTIONS /__runner/task/app.tasks.add HTTP/1.1\r\n%s\r\n" %
               "".join("%s: %s\r\n" % kv for kv in h.items())).encode())
    st, hdrs, _ = rd.head()
    s.close()
    assert st == 204
    return hdrs


def test_cors_origin_list(cli_gw):
    port = cli_gw("--cors-origin", "https://a.example", "--cors-origin", "https://b.example")
    for origin in ("https://a.example", "https://b.example"):
        st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":2}',
                              headers={"Origin": origin})
        assert (st, b) == (200, b'{"ok":true,"result":3}')
        assert [k for k, _ in hdrs][:3] == ["x-runner-request-id", "Vary", "Access-Control-Allow-Origin"]
        assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Origin", origin)]
    # not listed, absent, a case variant: no ACAO, still Vary
    for origin in ("https://evil.example", None, "https://A.example"):
        st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":2}',
                              headers={"Origin": origin})
        assert st == 200 and cors_lines(hdrs) == [("Vary", "Origin")], origin
    # errors (401, 403, 404 under base) and the step-0 404 outside base too
    for path, token, want in (("/__runner/task/app.tasks.add", False, 401), ("/__runner/task/app.tasks.x", True, 403),
                              ("/__runner/nope", True, 404), ("/elsewhere", True, 404)):
        st, h, b, hdrs = call(port, "POST", path, b"{}", headers={"Origin": "https://b.example"}, token=token)
        assert st == want
        assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Origin", "https://b.example")], path
    # preflight: Vary, ACAO, Methods, Headers, in this order
    hdrs = preflight_lines(port, "https://a.example", "content-type")
    assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Origin", "https://a.example"),
                                ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
                                ("Access-Control-Allow-Headers", "content-type")]
    assert cors_lines(preflight_lines(port, "https://c.example")) == [
        ("Vary", "Origin"), ("Access-Control-Allow-Methods", "POST, GET, OPTIONS")]
    # repeated Origin headers are joined (as Node does): no list entry matches
    s, rd = raw(port)
    s.sendall(b"OPTIONS /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
              b"Origin: https://b.example\r\n\r\n")
    assert cors_lines(rd.head()[1]) == [("Vary", "Origin"), ("Access-Control-Allow-Methods", "POST, GET, OPTIONS")]
    s.close()


def test_cors_regex_stream_and_everything_else(cli_gw):
    port = cli_gw("--cors-origin-regex", r"^https://[a-z]+\.dev$", "--cors-credentials", "--cors-expose",
                  " x-a ,x-b,, ", "--cors-max-age", "600", "--cors-methods", "POST,PUT", "--cors-allowed-headers",
                  "content-type,  x-runner-token")
    ok = "https://app.dev"
    st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":2}', headers={"Origin": ok})
    assert st == 200
    assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Origin", ok),
                                ("Access-Control-Allow-Credentials", "true"),
                                ("Access-Control-Expose-Headers", "x-a, x-b")]
    # the regex is unanchored only where the user leaves it so
    for bad in ("https://app.dev.evil.com", "xhttps://app.dev", "https://APP.dev"):
        st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":2}', headers={"Origin": bad})
        assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Credentials", "true"),
                                    ("Access-Control-Expose-Headers", "x-a, x-b")], bad
    # a streamed response carries them too
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.stream", b"", headers={"content-type": "application/octet-stream",
                                                                           "Origin": ok}))
    st, h, b, hdrs = rd.response()
    s.close()
    assert st == 201 and b == b"000001111122222"
    assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Origin", ok),
                                ("Access-Control-Allow-Credentials", "true"),
                                ("Access-Control-Expose-Headers", "x-a, x-b")]
    # preflight: configured methods and headers replace the defaults and the echo
    assert cors_lines(preflight_lines(port, ok, "x-other")) == [
        ("Vary", "Origin"), ("Access-Control-Allow-Origin", ok), ("Access-Control-Allow-Methods", "POST, PUT"),
        ("Access-Control-Allow-Headers", "content-type, x-runner-token"),
        ("Access-Control-Allow-Credentials", "true"), ("Access-Control-Max-Age", "600")]


def test_cors_no_vary_and_credentials_without_origin(cli_gw):
    port = cli_gw("--cors-origin", "https://a.example", "--cors-origin", "https://b.example", "--cors-no-vary")
    st, h, b, hdrs = call(port, "POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":2}',
                          headers={"Origin": "https://a.example"})
    assert cors_lines(hdrs) == [("Access-Control-Allow-Origin", "https://a.example")]
    assert cors_lines(preflight_lines(port, "https://x.example")) == [
        ("Access-Control-Allow-Methods", "POST, GET, OPTIONS")]
    # origin unset + credentials: no ACAO, Vary: Origin (fail-safe); --cors-no-vary drops the Vary
    port2 = cli_gw("--cors-credentials", worker=False)
    st, h, b, hdrs = call(port2, "POST", "/__runner/task/app.tasks.add", b"{}", headers={"Origin": "https://a.example"})
    assert cors_lines(hdrs) == [("Vary", "Origin"), ("Access-Control-Allow-Credentials", "true")]
    assert cors_lines(preflight_lines(port2, "https://a.example")) == [
        ("Vary", "Origin"), ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
        ("Access-Control-Allow-Credentials", "true")]
    port3 = cli_gw("--cors-credentials", "--cors-no-vary", worker=False)
    st, h, b, hdrs = call(port3, "POST", "/__runner/task/app.tasks.add", b"{}", headers={"Origin": "https://a.example"})
    assert cors_lines(hdrs) == [("Access-Control-Allow-Credentials", "true")]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--cors-origin-regex", "("], "--cors-origin-regex '(': "),
        (["--cors-origin", ""], "empty CORS origin"),
        (["--queue-max", "0"], "--queue-max"),
        (["--max-inflight", "x"], "--max-inflight"),
        (["--max-requests", "-1"], "--max-requests"),
        (["--deadline-for", "app.tasks.add"], "--deadline-for"),
        (["--deadline-for", "=5"], "--deadline-for"),
        (["--deadline-for", "a=0"], "--deadline-for"),
        (["--auth-worker"], "--auth-worker needs --worker"),
        (["--auth-worker", "--worker", "x", "--worker-protocol", "runner-ipc-v1"], "runner-ipc-v1"),
        (["--max-files", "0"], "--max-files"),
        (["--max-file-size", "z"], "--max-file-size"),
    ],
)
def test_cli_errors_new_flags(culvert, args, msg):
    rc, out, errt = culvert.run(["gateway"] + args, timeout=10)
    assert rc == 2, (rc, out, errt)
    assert msg in errt


def test_cli_help_lists_new_flags(culvert):
    rc, out, _ = culvert.run(["gateway", "--help"])
    for flag in ("--cors-origin-regex", "POSIX extended", "--cors-methods", "--cors-allowed-headers", "--cors-no-vary",
                 "--queue-max", "--max-inflight", "--max-requests", "--auth-worker", "--deadline-for",
                 "--no-async-context", "--max-file-size", "--max-files", "--max-fields", "--max-field-size",
                 "--max-parts", "--spool-dir"):
        assert flag in out, flag


# ------------------------------------------------------------------------------------------------------------
# Delegated auth with a native callback (cv_gateway_set_auth; gateway_native --auth-key)


def test_native_auth_callback(gw):
    _, port = gw("--auth-key", "k1")
    # a token still passes without asking
    assert post(port, "task/app.tasks.add", {"a": 1, "b": 2})[::2] == (200, b'{"ok":true,"result":3}')
    for key in ("k1", "k1-later"):
        st, h, b = post(port, "task/app.tasks.add", {"a": 2, "b": 2}, token=False, headers={"x-api-key": key})
        assert (st, b) == (200, b'{"ok":true,"result":4}'), key
        assert "x-runner-request-id" in h
    # an empty body that ends while auth runs; discovery
    assert call(port, "POST", "/__runner/task/app.tasks.noop", b"", headers={"x-api-key": "k1-later"},
                token=False)[0] == 200
    assert call(port, "GET", "/__runner/discovery", None, headers={"x-api-key": "k1"}, token=False)[0] == 200
    for key in ("k2", None):
        st, h, b = post(port, "task/app.tasks.add", {"a": 2, "b": 2}, token=False, headers={"x-api-key": key})
        assert (st, b) == (401, err("UNAUTHORIZED", "Unauthorized")), key


def test_native_auth_runs_before_the_body(gw):
    _, port = gw("--auth-key", "k1")
    # refused: no 100 Continue, the body is never asked for
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nx-api-key: nope\r\n"
              b"content-type: application/json\r\ncontent-length: 13\r\nExpect: 100-continue\r\n\r\n")
    st, h, b, _ = rd.response()
    assert (st, b) == (401, err("UNAUTHORIZED", "Unauthorized"))
    s.close()
    # admitted later: 100 Continue only then, and the call runs
    s, rd = raw(port)
    s.sendall(b"POST /__runner/task/app.tasks.add HTTP/1.1\r\nHost: x\r\nx-api-key: k1-later\r\n"
              b"content-type: application/json\r\ncontent-length: 13\r\nExpect: 100-continue\r\n\r\n")
    assert rd.line() == b"HTTP/1.1 100 Continue"
    assert rd.line() == b""
    s.sendall(b'{"a":5,"b":3}')
    assert rd.response()[::2] == (200, b'{"ok":true,"result":8}')
    s.close()


def test_native_auth_timeout_fails_closed(gw):
    p, port = gw("--auth-key", "k1")
    st, h, b = post(port, "task/app.tasks.add", {"a": 2, "b": 2}, token=False, headers={"x-api-key": "never"})
    assert (st, b) == (401, err("UNAUTHORIZED", "Unauthorized"))
    p.wait_line(r"delegated auth for app.tasks.add timed out", stream="err", timeout=5)
    # a client that leaves while auth runs: no crash, the gateway goes on
    s, rd = raw(port)
    s.sendall(req("POST", "/__runner/task/app.tasks.add", b'{"a":1,"b":1}', token=False,
                  headers={"x-api-key": "never"}))
    s.close()
    assert post(port, "task/app.tasks.add", {"a": 1, "b": 2})[0] == 200
