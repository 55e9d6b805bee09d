"""The relay's front door under abuse (issue 4, "Protection"): per-address connection rate limit, the
handshake deadline against slowloris, and the head size and header count limits. Real relay, raw sockets."""

import socket
import time

import pytest

from conftest import http_get


def raw(port, data=b"", src="127.0.0.1", timeout=5):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    if data:
        s.sendall(data)
    return s


def read_all(s):
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    return out


def status_of(port, src="127.0.0.1"):
    s = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", src=src)
    resp = read_all(s)
    s.close()
    return int(resp.split(b" ", 2)[1]), resp


def test_rate_limit_per_address(culvert):
    relay = culvert.relay(extra=["--conn-rate", "2/3", "--admin", "127.0.0.1:0"])
    admin = "http://127.0.0.1:%s" % relay.proc.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/").group(1)
    assert [status_of(relay.port)[0] for _ in range(3)] == [200, 200, 200]
    code, resp = status_of(relay.port)
    assert code == 429
    assert b"Retry-After: 1\r\n" in resp and b"slow down" in resp
    # Another client address has its own bucket.
    assert status_of(relay.port, src="127.0.0.2")[0] == 200
    # Two tokens a second: one is back within 0.5 s.
    time.sleep(0.6)
    assert status_of(relay.port)[0] == 200
    status, body = http_get(admin + "/metrics")
    assert b"culvert_relay_rate_limited_total 1\n" in body


def test_rate_limit_off(culvert):
    relay = culvert.relay(extra=["--conn-rate", "0"])
    assert all(status_of(relay.port)[0] == 200 for _ in range(50))


def test_default_rate_limit_admits_a_burst(culvert):
    relay = culvert.relay()
    # The default (20/s, bursts of 200) never gets in the way of normal use.
    assert all(status_of(relay.port)[0] == 200 for _ in range(150))


def test_slowloris_trickle_is_cut_at_the_handshake_deadline(culvert):
    relay = culvert.relay(extra=["--handshake-timeout", "0.6"])
    s = raw(relay.port)
    t0 = time.monotonic()
    closed = None
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            s.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            closed = time.monotonic() - t0
            break
        s.settimeout(0.05)
        try:
            if s.recv(1) == b"":
                closed = time.monotonic() - t0
                break
        except socket.timeout:
            pass
    assert closed is not None, "the relay kept a trickling client beyond its deadline"
    assert 0.5 <= closed < 2.5, closed
    # A silent client is closed the same way, without an answer.
    s = raw(relay.port)
    t0 = time.monotonic()
    assert read_all(s) == b""
    assert time.monotonic() - t0 < 2.5
    # And the relay still serves.
    assert status_of(relay.port)[0] == 200


def test_head_too_large_and_too_many_headers(culvert):
    relay = culvert.relay()
    big = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    s = raw(relay.port)
    try:
        s.sendall(big)
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = read_all(s)
    assert resp.startswith(b"HTTP/1.1 431 "), resp[:80]
    many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n"
    resp = read_all(raw(relay.port, many))
    assert resp.startswith(b"HTTP/1.1 431 "), resp[:80]
    # 60 headers are within the limit.
    ok = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(60)) + b"\r\n"
    assert read_all(raw(relay.port, ok)).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("flag,value", [("--conn-rate", "-1"), ("--conn-rate", "5/0"), ("--conn-rate", "x"),
                                        ("--handshake-timeout", "0"), ("--handshake-timeout", "soon")])
def test_bad_protection_flags(culvert, flag, value):
    rc, out, err = culvert.run(["relay", "--allow-anonymous", flag, value])
    assert rc == 2 and flag in err
