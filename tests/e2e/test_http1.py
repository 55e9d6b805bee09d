"""net/http1.c end to end: tests/tools/http1_echo on loopback, driven by the stdlib (http.client, raw sockets)
and curl. Keep-alive, pipelining, Content-Length and chunked uploads, Expect: 100-continue, HTTP/1.0, limits
(431, 400, 413), slowloris (408), idle keep-alive timeout, clients that vanish mid-upload.

The tool is $CULVERT_BUILD/http1_echo (default build/)."""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import zlib

import pytest

from conftest import REPO

BUILD = os.environ.get("CULVERT_BUILD") or str(REPO / "build")
ECHO_BIN = os.path.join(BUILD, "http1_echo")


@pytest.fixture
def h1(procs):
    """Factory: starts http1_echo with extra flags, returns (proc, port). At teardown every server still running
    gets SIGTERM and must exit 0: under ASan that is also the leak check of whatever the test did."""
    started = []

    def start(*extra):
        if not os.path.exists(ECHO_BIN):
            pytest.fail("http1_echo not found at %s (build it, or set CULVERT_BUILD)" % ECHO_BIN)
        p = procs.start([ECHO_BIN, "--listen", "127.0.0.1:0"] + list(extra), name="http1_echo")
        m = p.wait_line(r"listening on 127\.0\.0\.1:(\d+)", timeout=10)
        started.append(p)
        return p, int(m.group(1))

    yield start
    for p in started:
        if p.alive():
            p.p.send_signal(signal.SIGTERM)
            rc = p.wait_exit(10)
            assert rc == 0, "http1_echo exited %s after SIGTERM\n%s" % (rc, p.dump())


def pattern(n, off=0):
    base = bytes(range(ord("a"), ord("a") + 26))
    reps = base * ((n + off) // 26 + 2)
    return reps[off % 26 : off % 26 + n]


class Reader:
    """Reads HTTP/1.1 responses from a raw socket (our own framing parser, so the test sees the exact bytes)."""

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
        parts = [self.buf[:n]]
        have = len(parts[0])
        self.buf = self.buf[n:]
        while have < n:
            d = self.sock.recv(min(1 << 20, n - have))
            if not d:
                raise EOFError("connection closed")
            parts.append(d)
            have += len(d)
        return b"".join(parts)

    def response(self, head_only=False):
        """Returns (status, {lower-name: value}, body)."""
        status = int(self.line().split(b" ")[1])
        hdrs = {}
        while True:
            ln = self.line()
            if not ln:
                break
            k, v = ln.split(b":", 1)
            hdrs[k.decode().lower()] = v.strip().decode()
        if head_only or status < 200 or status in (204, 304):
            return status, hdrs, b""
        if "content-length" in hdrs:
            return status, hdrs, self.exact(int(hdrs["content-length"]))
        if hdrs.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    return status, hdrs, b"".join(parts)
                parts.append(self.exact(size))
                assert self.exact(2) == b"\r\n"
        body = self.buf
        self.buf = b""
        while True:
            d = self.sock.recv(1 << 16)
            if not d:
                return status, hdrs, body
            body += d

    def at_eof(self, timeout=5.0):
        """True if the peer closes (EOF or reset) within timeout with no further bytes."""
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


def post_crc(port, body, chunked=False, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if chunked:
        step = 1 << 16
        it = (body[i : i + step] for i in range(0, len(body), step)) if body else iter([b""])
        c.request("POST", "/crc", body=it, encode_chunked=True)
    else:
        c.request("POST", "/crc", body=body)
    r = c.getresponse()
    data = r.read()
    c.close()
    assert r.status == 200, data
    return data


def crc_line(body):
    return b"%d %08x\n" % (len(body), zlib.crc32(body))


# ------------------------------------------------------------------------------------------------------------
# Persistent connections and pipelining


def test_keepalive_reuses_connection(h1):
    _, port = h1()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    sock = c.sock
    for i in range(5):
        c.request("GET", "/hello")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"hello\n")
        assert r.getheader("Content-Length") == "6"
        body = b"x" * (i * 1000 + 1)
        c.request("POST", "/echo", body=body)
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
        assert r.read() == body
        c.request("GET", "/nope")
        r = c.getresponse()
        assert (r.status, r.read()) == (404, b"not found\n")
    assert c.sock is sock, "http.client had to reconnect: the server closed a keep-alive connection"
    c.close()


def test_pipelined_requests_answered_in_order(h1):
    _, port = h1()
    s, rd = raw(port)
    s.sendall(
        b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n"
        b"GET /big?n=100000 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert rd.response() == (200, {"content-type": "text/plain", "content-length": "6"}, b"hello\n")
    st, h, body = rd.response()
    assert (st, body, h["transfer-encoding"]) == (200, b"abc", "chunked")
    assert rd.response()[2] == b"def"
    st, h, body = rd.response()
    assert (st, h["content-length"], body) == (200, "100000", pattern(100000))
    st, h, body = rd.response()
    assert (st, h["connection"], body) == (200, "close", b"hello\n")
    assert rd.at_eof()
    s.close()


def test_pipelined_garbage_after_good_request_keeps_first_response(h1):
    _, port = h1()
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nBAD REQUEST LINE\r\n\r\n")
    assert rd.response()[2] == b"hello\n"
    st, h, _ = rd.response()
    assert (st, h["connection"]) == (400, "close")
    assert rd.at_eof()
    s.close()


def test_http10_closes_unless_keepalive(h1):
    _, port = h1()
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
    st, h, body = rd.response()
    assert (st, h.get("connection"), body) == (200, "close", b"hello\n")
    assert rd.at_eof()
    s.close()
    # HTTP/1.0 with Connection: keep-alive stays open; a response without a length is close-delimited.
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    st, h, body = rd.response()
    assert (st, h.get("connection"), body) == (200, "keep-alive", b"hello\n")
    s.sendall(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello")
    st, h, body = rd.response()
    assert (st, h.get("connection"), "transfer-encoding" in h, body) == (200, "close", False, b"hello")
    s.close()


def test_idle_keepalive_timeout_closes(h1):
    _, port = h1("--idle-timeout-ms", "300")
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rd.response()[2] == b"hello\n"
    t0 = time.monotonic()
    assert rd.at_eof(timeout=5)
    assert time.monotonic() - t0 < 4
    s.close()


def test_deadlines_move_later_and_earlier(h1):
    """Deadlines are timestamps checked when the timer fires: a kept-alive connection whose idle deadline
    is later than the head deadline it had (0.3 s) must outlive the head deadline, then close at the idle one (2.5 s);
    a head started afterwards gets the short deadline back (408)."""
    _, port = h1("--head-timeout-ms", "300", "--idle-timeout-ms", "2500")
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rd.response()[2] == b"hello\n"
    time.sleep(0.8)  # past the head deadline, inside the idle one
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rd.response()[2] == b"hello\n"
    t0 = time.monotonic()
    assert rd.at_eof(timeout=6)
    assert 2.0 < time.monotonic() - t0 < 5
    s.close()
    s, rd = raw(port)
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rd.response()[2] == b"hello\n"
    time.sleep(0.5)
    s.sendall(b"GET /hello HTTP/1.1\r\n")  # a head begun while the timer is set for the idle deadline
    t0 = time.monotonic()
    st = rd.response()[0]
    assert st == 408 and time.monotonic() - t0 < 1.0
    s.close()


# ------------------------------------------------------------------------------------------------------------
# Request bodies


@pytest.mark.parametrize("size", [1, 1 << 20])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_http_client(h1, size, chunked):
    _, port = h1()
    body = os.urandom(size)
    assert post_crc(port, body, chunked=chunked) == crc_line(body)


@pytest.mark.timeout_s(90)
def test_upload_20mib_chunked_http_client(h1):
    _, port = h1()
    body = os.urandom(20 << 20)
    assert post_crc(port, body, chunked=True, timeout=60) == crc_line(body)


@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_echo_20mib_curl(h1, tmp_path, chunked):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    _, port = h1()
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(20 << 20))
    out = tmp_path / "down.bin"
    args = ["curl", "-sS", "--fail", "--max-time", "60", "--data-binary", "@%s" % src, "-o", str(out)]
    if chunked:
        args += ["-H", "Transfer-Encoding: chunked"]
    subprocess.run(args + ["http://127.0.0.1:%d/echo" % port], check=True, timeout=70)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.timeout_s(60)
def test_echo_backpressure_client_not_reading(h1):
    """A client that uploads to /echo without reading the echo: the server pauses the body (stops reading)
    instead of queueing the echo, so its memory stays bounded; once the client reads, everything arrives."""
    p, port = h1()
    s, rd = raw(port, timeout=30)
    body = os.urandom(40 << 20)
    sent = [0]

    def sender():
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        view = memoryview(body)
        while sent[0] < len(body):
            sent[0] += s.send(view[sent[0] : sent[0] + (1 << 16)])

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    last, stalled_since = -1, time.monotonic()
    while time.monotonic() - stalled_since < 1.0:  # wait until the upload stops moving
        time.sleep(0.1)
        if sent[0] != last:
            last, stalled_since = sent[0], time.monotonic()
    assert sent[0] < len(body), "the whole body went through without anyone reading the echo"
    if not os.environ.get("CULVERT_SANITIZED"):
        assert p.rss_kib() < 24 * 1024, "server RSS %d KiB while paused" % p.rss_kib()
    st, h, echoed = rd.response()
    t.join(10)
    assert (st, len(echoed), echoed == body) == (200, len(body), True)
    s.close()


def test_expect_100_continue_raw(h1):
    _, port = h1()
    s, rd = raw(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert rd.line() == b"HTTP/1.1 100 Continue"
    assert rd.line() == b""
    s.sendall(b"ping")
    assert rd.response()[::2] == (200, b"ping")
    # Over the limit: a final 413 instead of 100 Continue; the body is never sent.
    s2, rd2 = raw(port)
    s2.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\nExpect: 100-continue\r\n\r\n")
    assert rd2.response()[0] == 413
    assert rd2.at_eof()
    s.close()
    s2.close()


def test_expect_100_continue_curl(h1, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    _, port = h1()
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "down.bin"
    p = subprocess.run(
        ["curl", "-sS", "-v", "--fail", "--max-time", "20", "-H", "Expect: 100-continue", "--data-binary",
         "@%s" % src, "-o", str(out), "http://127.0.0.1:%d/crc" % port],
        capture_output=True, timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert b"< HTTP/1.1 100 Continue" in p.stderr
    assert out.read_bytes() == crc_line(src.read_bytes())


# ------------------------------------------------------------------------------------------------------------
# Limits and malformed input


def expect_error(port, data, status):
    s, rd = raw(port)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    st, h, body = rd.response()
    assert (st, h.get("connection")) == (status, "close"), body
    assert rd.at_eof()
    s.close()
    return body


def test_oversized_head_431(h1):
    _, port = h1()
    expect_error(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431)


def test_too_many_headers_431(h1):
    _, port = h1()
    hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    expect_error(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n", 431)


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\rb\r\n\r\n",  # bare CR
        b"GET /hello HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /hello HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        b"POST /crc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"POST /crc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",  # bare LF in a chunk
    ],
    ids=["garbage", "bare-cr", "bare-lf", "space-in-name", "cl-and-te", "te-gzip", "bad-cl", "bad-chunk",
         "chunk-bare-lf"],
)
def test_malformed_400(h1, data):
    _, port = h1()
    expect_error(port, data, 400)


def test_body_over_limit_413(h1):
    _, port = h1()
    # Declared by Content-Length (default limit 64 MiB): refused before any body byte.
    expect_error(port, b"POST /crc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (65 << 20), 413)
    # Declared by a chunk size line.
    expect_error(port, b"POST /crc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4100000\r\n", 413)


def test_chunked_body_over_limit_413(h1):
    _, port = h1("--max-body", "1000")
    chunks = b"".join(b"190\r\n" + b"z" * 400 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    expect_error(port, b"POST /crc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, 413)
    # Exactly at the limit is fine.
    _, port2 = h1("--max-body", "1000")
    body = os.urandom(1000)
    assert post_crc(port2, body, chunked=True) == crc_line(body)
    assert post_crc(port2, body) == crc_line(body)


def test_slowloris_head_timeout_408(h1):
    _, port = h1("--head-timeout-ms", "500")
    s, rd = raw(port)
    t0 = time.monotonic()
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
    st, h, body = rd.response()
    assert (st, h["connection"]) == (408, "close")
    assert rd.at_eof()
    assert time.monotonic() - t0 < 5
    s.close()
    # A connection that never sends anything is dropped silently.
    s, rd = raw(port)
    assert rd.at_eof(timeout=5)
    s.close()


def test_slowloris_trickle_does_not_extend_deadline(h1):
    _, port = h1("--head-timeout-ms", "800")
    s, rd = raw(port)
    t0 = time.monotonic()
    closed = False
    # 30 bytes, one per 50 ms: past the 800 ms deadline, and done before the server's 2 s linger ends.
    for ch in b"GET /hello HTTP/1.1\r\nHost: xxx":
        try:
            s.send(bytes([ch]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.05)
        if time.monotonic() - t0 > 4:
            break
    if not closed:
        st = rd.response()[0]
        assert st == 408
    assert time.monotonic() - t0 < 5
    s.close()


# ------------------------------------------------------------------------------------------------------------
# Clients that go away, big downloads, shutdown


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_disconnect_mid_upload(h1, chunked):
    p, port = h1()
    for path in ("/echo", "/crc"):
        s, _ = raw(port)
        if chunked:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode())
            s.sendall(b"10000\r\n" + os.urandom(1 << 16) + b"\r\n" + b"10000\r\n" + b"q" * 1000)
        else:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" % path.encode())
            s.sendall(os.urandom(1 << 20))
        s.close()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/hello")
    assert c.getresponse().read() == b"hello\n"
    c.close()
    p.wait_line(r"Connection closed|closed", timeout=10, stream="err")
    assert p.alive()


def test_client_disconnect_mid_download(h1):
    p, port = h1()
    s, rd = raw(port)
    s.sendall(b"GET /big?n=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    rd.exact(100000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/big?n=3000000")
    r = c.getresponse()
    assert r.read() == pattern(3000000)
    c.close()
    assert p.alive()


@pytest.mark.timeout_s(60)
def test_big_download_http_client(h1):
    _, port = h1()
    n = 50 << 20
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/big?n=%d" % n)
    r = c.getresponse()
    assert r.getheader("Content-Length") == str(n)
    got = 0
    crc = 0
    while True:
        d = r.read(1 << 20)
        if not d:
            break
        crc = zlib.crc32(d, crc)
        got += len(d)
    assert got == n and crc == zlib.crc32(pattern(n))
    c.close()


def test_head_request_has_no_body(h1):
    _, port = h1()
    s, rd = raw(port)
    s.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    st, h, body = rd.response(head_only=True)
    assert (st, h["content-length"]) == (200, "6")
    assert rd.response()[2] == b"hello\n"
    s.close()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_exits_zero(h1, sig):
    p, port = h1()
    s, _ = raw(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    time.sleep(0.2)
    p.p.send_signal(getattr(signal, sig))
    assert p.wait_exit(10) == 0
    s.close()
