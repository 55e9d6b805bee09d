"""HTTPS virtual hosts (issue 4): ``culvert relay --domain BASE --https-listen HOST:PORT`` terminates TLS for
visitors with the ``--tls-cert`` chosen by SNI, then routes and rewrites exactly like ``--http-listen``; SIGHUP
re-reads the certificate files; the SNI router's per-address limits.

Certificates are made at test time with ``openssl`` (test_tls.Pki); clients are Python's ssl with verification
against the test CA and ``server_hostname`` standing in for DNS, and the ``websockets`` library for wss://.
"""

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import time

import pytest

from conftest import http_get, run_async
from test_tls import Pki, TlsEchoService, peer_cert, sans
from test_vhost import origins, read_response, stream_sha  # noqa: F401 (origins: a fixture)

BASE = "test.local"
SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki-vhost"))
    # Two certificates chosen by SNI: beta.test.local gets its own, every other NAME.test.local (and a
    # client without SNI) the wildcard... which is second, so that SNI, not the default, picks it.
    p.leaf("beta", ["DNS:beta.test.local"])
    p.leaf("wild", ["DNS:*.test.local", "DNS:localhost", "IP:127.0.0.1"], rsa=True)
    p.leaf("certa", ["DNS:*.test.local", "DNS:localhost", "IP:127.0.0.1"])
    p.leaf("certb", ["DNS:*.test.local", "DNS:localhost", "IP:127.0.0.1"])
    p.leaf("other", ["DNS:other.test"], ca="ca2")
    return p


def cert_args(pki, certs):
    args = []
    for c in certs:
        args += ["--tls-cert", pki.path(c + ".pem"), "--tls-key", pki.path(c + ".key")]
    return args


def https_relay(culvert, pki, certs=("beta", "wild"), extra=(), http=False):
    args = ["--domain", BASE, "--https-listen", "127.0.0.1:0"] + cert_args(pki, certs)
    if http:
        args += ["--http-listen", "127.0.0.1:0"]
    relay = culvert.relay(extra=args + list(extra))
    m = relay.proc.wait_line(r"HTTPS virtual hosts https://NAME\.test\.local on 127\.0\.0\.1:(\d+)", timeout=5)
    relay.https_port = int(m.group(1))
    relay.wss = "wss://localhost:%d" % relay.port
    return relay


def expose(culvert, relay, pki, cid, port, name):
    agent = culvert.agent(relay.wss, cid, extra=["--trust-ca", pki.path("ca.pem"),
                                                 "--expose", "http:%d:%s" % (port, name)])
    agent.wait_line(r"exposed http 127\.0\.0\.1:%d at https?://%s\.test\.local:\d+/" % (port, name), timeout=5)
    return agent


def tls_connect(relay, pki, host, timeout=10):
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    raw = socket.create_connection(("127.0.0.1", relay.https_port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=host)


def get(s, host, path="/", extra=b""):
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra))
    return read_response(s)


def read_download(s, size, buf=b""):
    """Reads a Content-Length response of size bytes, hashing as it goes (an SSL socket returns 16 KiB
    records: gathering 48 MiB with bytes += would copy quadratically). Returns the sha256 hex."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, "closed before the response head"
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % size in head, head
    h = hashlib.sha256(buf)
    got = len(buf)
    while got < size:
        d = s.recv(1 << 20)
        assert d, "download cut short at %d of %d" % (got, size)
        h.update(d)
        got += len(d)
    assert got == size
    return h.hexdigest()


def head_lines(body):
    return body.decode("latin-1").split("\r\n")


# ---------------------------------------------------------------------------------------------------------
# HTTPS virtual hosts
# ---------------------------------------------------------------------------------------------------------


def test_https_get_verified_keep_alive_and_forwarded_proto(culvert, pki, origins):
    relay = https_relay(culvert, pki)
    o = origins("app")
    expose(culvert, relay, pki, "agent-app", o.port, "app")
    with tls_connect(relay, pki, "app.test.local") as s:
        assert sans(s.getpeercert()) == ["*.test.local", "localhost"]
        st, hdrs, body, rest = get(s, "app.test.local", "/head", b"X-Forwarded-Proto: http\r\n")
        assert st == 200 and rest == b""
        lines = head_lines(body)
        assert lines[0] == "GET /head HTTP/1.1"
        assert "X-Forwarded-Proto: https" in lines and "X-Forwarded-Proto: http" not in lines
        assert "X-Forwarded-For: 127.0.0.1" in lines and "X-Forwarded-Host: app.test.local" in lines
        # Keep-alive: more requests on the same TLS connection, each rewritten.
        for i in range(3):
            st, _, body, _ = get(s, "app.test.local", "/n%d" % i)
            assert st == 200 and body == b"app /n%d" % i
    assert o.conns == 1


def test_two_certificates_chosen_by_sni(culvert, pki, origins):
    relay = https_relay(culvert, pki)
    a, b = origins("alpha"), origins("beta")
    expose(culvert, relay, pki, "agent-a", a.port, "alpha")
    expose(culvert, relay, pki, "agent-b", b.port, "beta")
    for host, want, name in (("beta.test.local", ["beta.test.local"], b"beta"),
                             ("alpha.test.local", ["*.test.local", "localhost"], b"alpha")):
        with tls_connect(relay, pki, host) as s:
            assert sans(s.getpeercert()) == want
            st, _, body, _ = get(s, host, "/x")
            assert st == 200 and body == name + b" /x"
    # A client that trusts another CA refuses the relay's certificate.
    ctx = ssl.create_default_context(cafile=pki.ca("ca2"))
    with socket.create_connection(("127.0.0.1", relay.https_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="alpha.test.local")


@pytest.mark.timeout_s(90)
def test_large_upload_and_download_streamed_byte_exact(culvert, pki, origins):
    relay = https_relay(culvert, pki)
    o = origins("big")
    expose(culvert, relay, pki, "agent-big", o.port, "big")
    size = 12 << 20
    with tls_connect(relay, pki, "big.test.local", timeout=60) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: big.test.local\r\nContent-Length: %d\r\n\r\n" % size)
        h = hashlib.sha256()
        chunk = os.urandom(1 << 20)
        for i in range(size >> 20):
            piece = bytes([i]) + chunk[1:]
            h.update(piece)
            s.sendall(piece)
        st, _, body, rest = read_response(s)
        assert st == 200 and json.loads(body) == {"len": size, "sha256": h.hexdigest()}
        s.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: big.test.local\r\n\r\n" % size)
        assert read_download(s, size, rest) == stream_sha(size)
        # Chunked, smaller (read_response gathers it whole).
        s.sendall(b"GET /download?n=%d&chunked=1 HTTP/1.1\r\nHost: big.test.local\r\n\r\n" % (2 << 20))
        st, hdrs, body, _ = read_response(s)
        assert st == 200 and hdrs.get("transfer-encoding") == "chunked"
        assert len(body) == 2 << 20 and hashlib.sha256(body).hexdigest() == stream_sha(2 << 20)


@pytest.mark.timeout_s(90)
def test_stalled_tls_reader_is_held_back_not_buffered(culvert, pki, origins):
    """Credit toward the agent follows the plaintext actually written to the visitor's socket: a visitor that
    stops reading stops the agent, and nothing piles up in the relay (encrypted or not)."""
    relay = https_relay(culvert, pki)
    o = origins("slow")
    expose(culvert, relay, pki, "agent-slow", o.port, "slow")
    size = 48 << 20
    raw = socket.create_connection(("127.0.0.1", relay.https_port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s = ssl.create_default_context(cafile=pki.path("ca.pem")).wrap_socket(raw, server_hostname="slow.test.local")
    s.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: slow.test.local\r\n\r\n" % size)
    time.sleep(2)  # not reading
    if not SANITIZED:
        assert relay.proc.rss_kib() < 40 * 1024
    assert read_download(s, size) == stream_sha(size)
    s.close()


def test_websocket_upgrade_through_https(culvert, pki):
    import websockets

    relay = https_relay(culvert, pki)

    async def body():
        seen = {}

        async def handler(ws, path):
            seen["xfp"] = ws.request_headers.get("X-Forwarded-Proto")
            seen["xfh"] = ws.request_headers.get("X-Forwarded-Host")
            async for msg in ws:
                await ws.send(msg[::-1] if isinstance(msg, str) else msg + b"!")

        server = await websockets.serve(handler, "127.0.0.1", 0, max_size=None)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: expose(culvert, relay, pki, "agent-ws", port, "ws"))
        ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
        async with websockets.connect("wss://ws.test.local:%d/chat" % relay.https_port, host="127.0.0.1",
                                      port=relay.https_port, ssl=ctx, server_hostname="ws.test.local",
                                      max_size=None) as c:
            await c.send("hello")
            assert await c.recv() == "olleh"
            big = os.urandom(3 << 20)
            await c.send(big)
            assert await c.recv() == big + b"!"
        assert seen == {"xfp": "https", "xfh": "ws.test.local:%d" % relay.https_port}
        server.close()
        await server.wait_closed()

    run_async(body())


def test_404_and_502_pages_over_tls(culvert, pki, origins):
    relay = https_relay(culvert, pki)
    with tls_connect(relay, pki, "nobody.test.local") as s:
        st, hdrs, body, _ = get(s, "nobody.test.local")
        assert st == 404 and hdrs["connection"] == "close" and b"nobody.test.local" in body
        assert s.recv(100) == b""  # closed after the page (close_notify, then EOF)
    o = origins("gone")
    agent = expose(culvert, relay, pki, "agent-gone", o.port, "gone")
    agent.kill()
    time.sleep(0.3)
    with tls_connect(relay, pki, "gone.test.local") as s:
        st, _, body, _ = get(s, "gone.test.local")
        assert st == 502 and b"agent-gone" in body


def test_slow_or_missing_tls_handshake_is_cut(culvert, pki):
    relay = https_relay(culvert, pki, extra=["--handshake-timeout", "1"])
    # TCP open, not a byte of TLS.
    s = socket.create_connection(("127.0.0.1", relay.https_port), timeout=8)
    assert s.recv(100) == b""
    s.close()
    # Half a ClientHello, then silence.
    s = socket.create_connection(("127.0.0.1", relay.https_port), timeout=8)
    s.sendall(bytes.fromhex("160301020001"))
    assert s.recv(100) == b""
    s.close()
    # Handshake done, request head never finished: the 408 page, over TLS.
    with tls_connect(relay, pki, "x.test.local") as t:
        t.sendall(b"GET / HTTP/1.1\r\nHost: x.test")
        data = b""
        while True:
            d = t.recv(4096)
            if not d:
                break
            data += d
        assert data.startswith(b"HTTP/1.1 408 "), data
    # Plain HTTP instead of a ClientHello is dropped at once (at most a TLS alert comes back), and the relay
    # goes on serving.
    s = socket.create_connection(("127.0.0.1", relay.https_port), timeout=8)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x.test.local\r\n\r\n")
    data = s.recv(100)
    assert data == b"" or data[0] == 0x15, data  # 0x15: an alert record
    s.close()
    with tls_connect(relay, pki, "x.test.local") as t:
        assert get(t, "x.test.local")[0] == 404


def test_rate_limit_closes_tls_visitors_before_the_handshake(culvert, pki):
    relay = https_relay(culvert, pki, extra=["--conn-rate", "1/3"])
    ok = refused = 0
    for _ in range(8):
        try:
            with tls_connect(relay, pki, "x.test.local", timeout=5) as s:
                assert get(s, "x.test.local")[0] == 404
            ok += 1
        except (ssl.SSLError, OSError, AssertionError):
            refused += 1
    assert ok >= 3 and refused >= 1, (ok, refused)


def test_admin_counts_https_visitors(culvert, pki, origins):
    relay = https_relay(culvert, pki, http=True, extra=["--admin", "127.0.0.1:0"])
    m = relay.proc.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/", timeout=5)
    admin = "http://127.0.0.1:%s" % m.group(1)
    o = origins("app")
    expose(culvert, relay, pki, "agent-app", o.port, "app")
    with tls_connect(relay, pki, "app.test.local") as s:
        assert get(s, "app.test.local", "/a")[0] == 200
        assert get(s, "app.test.local", "/b")[0] == 200
        streams = json.loads(http_get(admin + "/api/streams")[1])["streams"]
        assert [x["front"] for x in streams] == ["https-vhost"]
    with tls_connect(relay, pki, "nobody.test.local") as s:
        assert get(s, "nobody.test.local")[0] == 404
    stats = json.loads(http_get(admin + "/api/stats")[1])
    assert stats["vhost"]["connections_total"] == {"http": 0, "https": 2}
    assert stats["vhost"]["requests_total"] == 2 and stats["vhost"]["tls_handshakes_total"] == 2
    metrics = http_get(admin + "/metrics")[1].decode()
    assert 'culvert_relay_vhost_connections_total{scheme="https"} 2' in metrics
    assert 'culvert_relay_vhost_requests_total 2' in metrics
    assert 'culvert_relay_vhost_answers_total{status="404"} 1' in metrics
    assert 'culvert_relay_vhost_tls_handshakes_total{result="ok"} 2' in metrics


def test_https_flag_errors(culvert, pki, tmp_path):
    certs = cert_args(pki, ["wild"])
    rc, _, err = culvert.run(["relay", "--allow-anonymous", "--https-listen", "127.0.0.1:0"] + certs)
    assert rc == 2 and "--https-listen was given without it" in err, err
    rc, _, err = culvert.run(["relay", "--allow-anonymous", "--domain", BASE, "--https-listen", "127.0.0.1:0"])
    assert rc == 2 and "needs at least one --tls-cert FILE --tls-key FILE pair" in err, err
    rc, _, err = culvert.run(["relay", "--allow-anonymous", "--domain", BASE, "--https-listen", "localhost:443"]
                             + certs)
    assert rc == 2 and "--https-listen wants HOST:PORT" in err, err
    cfg = tmp_path / "relay.ini"
    cfg.write_text("[relay]\nallow-anonymous = true\ndomain = %s\nhttps-listen = 127.0.0.1:0\n" % BASE)
    rc, _, err = culvert.run(["relay", "--config", str(cfg)])
    assert rc == 2 and "--tls-cert" in err, err
    # The config-file key works when complete.
    cfg.write_text("[relay]\nallow-anonymous = true\ndomain = %s\nhttps-listen = 127.0.0.1:0\n"
                   "tls-cert = %s\ntls-key = %s\n" % (BASE, pki.path("wild.pem"), pki.path("wild.key")))
    p = culvert.procs.start([culvert.bin, "relay", "--listen", "127.0.0.1:0", "--config", str(cfg)], name="relay")
    m = p.wait_line(r"HTTPS virtual hosts https://NAME\.test\.local on 127\.0\.0\.1:(\d+)", timeout=5)
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="x.test.local") as s:
            assert get(s, "x.test.local")[0] == 404
    rc, out, _ = culvert.run(["relay", "--help"])
    assert rc == 0 and "--https-listen HOST:PORT" in out


def test_upgrade_refused_over_https_goes_back_to_http(culvert, pki, tcp_service):
    from test_vhost import read_final, refusing_origin

    relay = https_relay(culvert, pki)
    svc = tcp_service(refusing_origin)
    expose(culvert, relay, pki, "agent-ref", svc.port, "ref")
    with tls_connect(relay, pki, "ref.test.local") as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: ref.test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        st, _, body, rest = read_final(s)
        assert st == 400 and body == b"no upgrade here"
        st, _, body, _ = get(s, "ref.test.local", "/head", b"X-Forwarded-For: 10.1.2.3\r\n")
        lines = head_lines(body)
        assert st == 200 and "X-Forwarded-For: 10.1.2.3, 127.0.0.1" in lines and "X-Forwarded-Proto: https" in lines


# ---------------------------------------------------------------------------------------------------------
# Certificate reload on SIGHUP
# ---------------------------------------------------------------------------------------------------------


def der(port, host, pki):
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return s.getpeercert(binary_form=True)


def file_der(path):
    return ssl.PEM_cert_to_DER_cert(open(path).read())


@pytest.mark.timeout_s(60)
def test_sighup_reloads_certificates_live_sessions_survive(culvert, pki, origins, tmp_path):
    crt, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(pki.path("certa.pem"), crt)
    shutil.copy(pki.path("certa.key"), key)
    args = ["--domain", BASE, "--https-listen", "127.0.0.1:0", "--tls-cert", crt, "--tls-key", key]
    relay = culvert.relay(extra=args)
    m = relay.proc.wait_line(r"HTTPS virtual hosts https://NAME\.test\.local on 127\.0\.0\.1:(\d+)", timeout=5)
    relay.https_port = int(m.group(1))
    relay.wss = "wss://localhost:%d" % relay.port
    A, B = file_der(pki.path("certa.pem")), file_der(pki.path("certb.pem"))
    o = origins("app")
    # The agent's wss session and a visitor's keep-alive HTTPS session, both made with certificate A.
    expose(culvert, relay, pki, "agent-live", o.port, "app")
    held = tls_connect(relay, pki, "app.test.local")
    assert held.getpeercert(binary_form=True) == A
    assert get(held, "app.test.local", "/1")[0] == 200
    assert der(relay.https_port, "app.test.local", pki) == A and der(relay.port, "localhost", pki) == A

    shutil.copy(pki.path("certb.pem"), crt)
    shutil.copy(pki.path("certb.key"), key)
    relay.proc.p.send_signal(signal.SIGHUP)
    relay.proc.wait_line(r"TLS certificates reloaded: 1 \(first .*live\.pem\)", stream="err", timeout=5)
    # New connections (both listeners) get B; the held visitor session and the agent's tunnel go on.
    assert der(relay.https_port, "app.test.local", pki) == B and der(relay.port, "localhost", pki) == B
    st, _, body, _ = get(held, "app.test.local", "/2")
    assert st == 200 and body == b"app /2"
    with tls_connect(relay, pki, "app.test.local") as s:
        assert get(s, "app.test.local", "/3")[2] == b"app /3"

    # A broken key, then a key that does not match: refused, B stays.
    with open(key, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    relay.proc.p.send_signal(signal.SIGHUP)
    relay.proc.wait_line(r"configuration reload refused, keeping the running certificates.*TLS: .*live\.key: "
                         r"cannot load private key", stream="err", timeout=5)
    shutil.copy(pki.path("certa.key"), key)
    relay.proc.p.send_signal(signal.SIGHUP)
    relay.proc.wait_line(r"refused.*live\.key: private key does not match certificate .*live\.pem",
                         stream="err", timeout=5)
    os.unlink(crt)
    relay.proc.p.send_signal(signal.SIGHUP)
    relay.proc.wait_line(r"refused.*live\.pem: cannot load certificate: No such file", stream="err", timeout=5)
    assert der(relay.https_port, "app.test.local", pki) == B and der(relay.port, "localhost", pki) == B
    assert get(held, "app.test.local", "/4")[2] == b"app /4"
    # A session made with A still open when the relay stops: both contexts are freed (ASan: no leak).
    relay.proc.p.send_signal(signal.SIGTERM)
    rc = relay.proc.wait_exit(20)
    held.close()
    err = relay.proc.stderr_text()
    assert rc == 0 and "LeakSanitizer" not in err and "AddressSanitizer" not in err, err[-3000:]


# ---------------------------------------------------------------------------------------------------------
# The SNI router's per-address limits
# ---------------------------------------------------------------------------------------------------------


def sni_setup(culvert, pki, extra):
    relay = culvert.relay(extra=["--domain", BASE, "--tls-listen", "127.0.0.1:0"] + list(extra))
    m = relay.proc.wait_line(r"SNI router on 127\.0\.0\.1:(\d+)", timeout=5)
    relay.sni_port = int(m.group(1))
    pki.leaf("svc", ["DNS:svc.test.local"])
    svc = TlsEchoService(pki.path("svc.pem"), pki.path("svc.key"))
    agent = culvert.agent(relay.url, "agent-sni", extra=["--expose", "tls:%d:svc" % svc.port])
    agent.wait_line(r"exposed tls 127\.0\.0\.1:%d" % svc.port, timeout=5)
    return relay, svc


def sni_echo(port, pki, payload=b"ping"):
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="svc.test.local") as s:
            s.sendall(payload)
            return s.recv(100)


def test_sni_router_rate_limit(culvert, pki):
    relay, svc = sni_setup(culvert, pki, ["--conn-rate", "1/3"])
    try:
        ok = refused = 0
        for _ in range(8):
            try:
                assert sni_echo(relay.sni_port, pki) == b"ping"
                ok += 1
            except (ssl.SSLError, OSError, AssertionError):
                refused += 1
        assert ok >= 3 and refused >= 1, (ok, refused)
        # Refused connections never reached the service: it saw handshakes for the routed ones only.
        assert len(svc.names) == ok, (svc.names, ok)
    finally:
        svc.close()


def test_sni_router_slow_client_hello_is_closed(culvert, pki):
    relay, svc = sni_setup(culvert, pki, ["--handshake-timeout", "1"])
    try:
        s = socket.create_connection(("127.0.0.1", relay.sni_port), timeout=8)
        assert s.recv(100) == b""
        s.close()
        s = socket.create_connection(("127.0.0.1", relay.sni_port), timeout=8)
        s.sendall(bytes.fromhex("16030100f0010000ec0303"))  # the start of a ClientHello, then silence
        assert s.recv(100) == b""
        s.close()
        assert svc.names == []
        assert sni_echo(relay.sni_port, pki) == b"ping"
    finally:
        svc.close()
