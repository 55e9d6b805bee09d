"""TLS (issue 4): wss:// between agents/forwards and the relay, certificate verification, SNI certificate
selection on the relay, bad certificate files, and interop with Python's ssl (websockets with an SSL
context, a KohakuRiver spec agent over wss).

Certificates are made at test time with the ``openssl`` command (a CA, leaf certificates signed by it, a
second unrelated CA for the negative cases). Every check is on real bytes; every process is killed by the
``procs`` fixture.
"""

import asyncio
import hashlib
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import closed_port, run_async

MiB = 1 << 20


# --------------------------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------------------------


def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, "openssl %s failed: %s" % (" ".join(args), r.stderr)


class Pki:
    """A directory with CAs and leaf certificates, made on demand."""

    def __init__(self, d):
        self.d = str(d)

    def path(self, name):
        return os.path.join(self.d, name)

    def ca(self, name):
        if not os.path.exists(self.path(name + ".pem")):
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", name + ".key", "-out", name + ".pem", "-days", "2", "-subj", "/CN=" + name,
                     cwd=self.d)
        return self.path(name + ".pem")

    def leaf(self, name, sans, ca="ca", rsa=False):
        """A certificate for subjectAltName list ``sans`` (e.g. ["DNS:localhost", "IP:127.0.0.1"])."""
        crt, key = self.path(name + ".pem"), self.path(name + ".key")
        if os.path.exists(crt):
            return crt, key
        self.ca(ca)
        kind = ["rsa:2048"] if rsa else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        _openssl("req", "-newkey", *kind, "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=" + sans[0].split(":", 1)[1], cwd=self.d)
        with open(self.path(name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\n" % ",".join(sans))
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                 "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=self.d)
        return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.leaf("relay", ["DNS:localhost", "IP:127.0.0.1"])
    return p


def tls_relay(culvert, pki, certs=("relay",), extra=()):
    args = []
    for c in certs:
        args += ["--tls-cert", pki.path(c + ".pem"), "--tls-key", pki.path(c + ".key")]
    r = culvert.relay(extra=args + list(extra))
    assert "(TLS" in r.proc.stdout_text()
    r.wss = "wss://localhost:%d" % r.port
    return r


def exposed(agent, local, timeout=10.0):
    m = agent.wait_line(r"exposed tcp 127\.0\.0\.1:%d at [\w.]+:(\d+)" % local, timeout=timeout)
    return int(m.group(1))


_BLOCK = os.urandom(1000003)


def echo_transfer(port, total, timeout=60.0, chunk=1 << 18):
    """Sends ``total`` bytes to 127.0.0.1:port while reading the echo; checks count and sha256."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent, recvd, err = hashlib.sha256(), hashlib.sha256(), []

    def sender():
        try:
            off = 0
            while off < total:
                i = off % len(_BLOCK)
                b = _BLOCK[i:i + min(chunk, total - off)]
                sent.update(b)
                s.sendall(b)
                off += len(b)
        except OSError as e:
            err.append(e)

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    n = 0
    try:
        while n < total:
            d = s.recv(1 << 20)
            if not d:
                break
            recvd.update(d)
            n += len(d)
        th.join(timeout)
    finally:
        s.close()
    assert not err, "transfer error after %d of %d bytes: %r" % (n, total, err)
    assert n == total, "echo: received %d of %d bytes" % (n, total)
    assert recvd.hexdigest() == sent.hexdigest(), "echo: sha256 mismatch"


def small_echo(port, payload=b"hello over tls\n", timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while len(buf) < len(payload):
            d = s.recv(65536)
            if not d:
                break
            buf += d
    assert buf == payload


def peer_cert(port, server_hostname, cafile):
    """Handshake with Python's ssl and return the verified peer certificate (dict)."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            return s.getpeercert(), s.version()


def sans(cert):
    return sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")


# --------------------------------------------------------------------------------------------------------
# wss:// agent and forward
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(90)
def test_agent_wss_trust_ca_16mib_both_ways(culvert, pki, ext_service):
    relay = tls_relay(culvert, pki)
    svc = ext_service("tcp-echo")
    agent = culvert.agent(relay.wss, "tls-a", extra=["--trust-ca", pki.path("ca.pem"),
                                                    "--expose", "tcp:%d" % svc.port])
    assert "tunnel established: wss://localhost" in agent.stdout_text()
    port = exposed(agent, svc.port)
    echo_transfer(port, 16 * MiB)
    # And a forward session over wss (relay -> agent), also verified.
    fwd = culvert.forward(relay.wss, "tls-a", svc.port, extra=["--trust-ca", pki.path("ca.pem")])
    echo_transfer(fwd.local_port, 4 * MiB)
    assert relay.proc.alive() and agent.alive()


def test_agent_wss_wrong_ca_fails_clearly_and_retries(culvert, pki):
    relay = tls_relay(culvert, pki)
    other = pki.ca("otherca")
    agent = culvert.agent(relay.wss, "tls-b", wait=False, extra=["--trust-ca", other])
    agent.wait_line(r"connection to wss://localhost:\d+/ws/tunnel/tls-b failed: TLS handshake failed: "
                    r"certificate verify failed: unable to get local issuer certificate", timeout=10)
    # It keeps retrying (reconnect delay 1 s, jittered), and never gets a tunnel.
    deadline = time.monotonic() + 10
    while agent.count("certificate verify failed") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.count("certificate verify failed") >= 2
    assert agent.alive()
    assert agent.count("tunnel established") == 0
    assert "registered" not in relay.proc.stdout_text() + relay.proc.stderr_text()


def test_agent_wss_system_store_rejects_private_ca(culvert, pki):
    """Without --trust-ca the system store is used, which does not know the test CA."""
    relay = tls_relay(culvert, pki)
    agent = culvert.agent(relay.wss, "tls-sys", wait=False)
    agent.wait_line(r"certificate verify failed", timeout=10)
    assert agent.count("tunnel established") == 0


def test_agent_wss_wrong_hostname_fails_clearly(culvert, pki):
    # A certificate for localhost only (no IP address): dialling 127.0.0.1 must fail verification.
    pki.leaf("onlyname", ["DNS:localhost"])
    pki.leaf("othername", ["DNS:relay.example"])
    relay = tls_relay(culvert, pki, certs=("onlyname",))
    a1 = culvert.agent("wss://127.0.0.1:%d" % relay.port, "tls-h1", wait=False,
                       extra=["--trust-ca", pki.path("ca.pem")])
    a1.wait_line(r"TLS handshake failed: certificate verify failed: IP address mismatch", timeout=10)
    relay2 = tls_relay(culvert, pki, certs=("othername",))
    a2 = culvert.agent(relay2.wss, "tls-h2", wait=False, extra=["--trust-ca", pki.path("ca.pem")])
    a2.wait_line(r"TLS handshake failed: certificate verify failed: hostname mismatch", timeout=10)
    time.sleep(1.5)
    assert a1.count("tunnel established") == 0 and a2.count("tunnel established") == 0
    assert a1.count("certificate verify failed") >= 2 or a2.count("certificate verify failed") >= 2
    # A name that matches does work against the same relay.
    ok = culvert.agent("wss://localhost:%d" % relay.port, "tls-h3", extra=["--trust-ca", pki.path("ca.pem")])
    assert ok.count("tunnel established") == 1


def test_agent_wss_insecure_warns_and_works(culvert, pki, tcp_echo):
    relay = tls_relay(culvert, pki)
    pki.ca("otherca")
    agent = culvert.agent("wss://127.0.0.1:%d" % relay.port, "tls-i",
                          extra=["--insecure", "--expose", "tcp:%d" % tcp_echo.port])
    assert re.search(r"WARN .*--insecure: the relay's certificate is NOT verified", agent.stdout_text())
    small_echo(exposed(agent, tcp_echo.port))


def test_agent_plain_ws_against_tls_listener_fails(culvert, pki):
    relay = tls_relay(culvert, pki)
    agent = culvert.agent("ws://127.0.0.1:%d" % relay.port, "tls-p", wait=False)
    agent.wait_line(r"connection to ws://127\.0\.0\.1:\d+/ws/tunnel/tls-p failed", timeout=10)
    assert relay.proc.alive()
    # and the other way round: wss:// against a plain relay
    plain = culvert.relay()
    a2 = culvert.agent("wss://127.0.0.1:%d" % plain.port, "tls-p2", wait=False, extra=["--insecure"])
    a2.wait_line(r"failed: TLS handshake failed: ", timeout=10)
    assert plain.proc.alive()


def test_agent_and_forward_bad_trust_ca_exit_2(culvert, pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    rc, out, err = culvert.run(["agent", "-r", "wss://localhost:1", "-c", "x", "--trust-ca", missing])
    assert rc == 2 and "nope.pem: cannot load CA certificates" in err, (rc, out, err)
    rc, out, err = culvert.run(["forward", "--relay", "wss://localhost:1", "--trust-ca", missing, "x", "80"])
    assert rc == 2 and "nope.pem: cannot load CA certificates" in err, (rc, out, err)
    rc, out, err = culvert.run(["agent", "-r", "wss://localhost:1", "-c", "x", "--trust-ca",
                                pki.path("ca.pem"), "--insecure"])
    assert rc == 2 and "exclude each other" in err


# --------------------------------------------------------------------------------------------------------
# relay certificates
# --------------------------------------------------------------------------------------------------------


def test_relay_picks_certificate_by_sni(culvert, pki, tcp_echo):
    pki.leaf("alpha", ["DNS:alpha.test", "DNS:*.alpha.test"])
    pki.leaf("beta", ["DNS:beta.test"], rsa=True)
    relay = tls_relay(culvert, pki, certs=("alpha", "beta"))
    ca = pki.path("ca.pem")
    cert, ver = peer_cert(relay.port, "alpha.test", ca)
    assert sans(cert) == ["*.alpha.test", "alpha.test"] and ver in ("TLSv1.2", "TLSv1.3")
    assert sans(peer_cert(relay.port, "x.alpha.test", ca)[0]) == ["*.alpha.test", "alpha.test"]
    assert sans(peer_cert(relay.port, "beta.test", ca)[0]) == ["beta.test"]
    # Unknown name: the first certificate is the default (so verification for that name fails).
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="gamma.test") as s:
            assert sans(s.getpeercert()) == ["*.alpha.test", "alpha.test"]
    # TLS 1.1 is refused.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    except (ValueError, AttributeError):
        pass
    else:
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
                ctx.wrap_socket(raw, server_hostname="alpha.test")
    # An agent dialling beta.test (resolved to the relay) verifies against the second certificate: use
    # the websockets client with server_hostname to stand in for DNS.
    import websockets

    async def ws_beta():
        sctx = ssl.create_default_context(cafile=ca)
        async with websockets.connect("wss://127.0.0.1:%d/healthz-not-ws" % relay.port, ssl=sctx,
                                      server_hostname="beta.test", open_timeout=5) as _:
            pass

    with pytest.raises(Exception) as ei:
        run_async(ws_beta())
    assert "404" in str(ei.value)  # TLS was fine; the HTTP layer answered (no such WebSocket path)


def test_relay_bad_cert_or_key_refused_at_start(culvert, pki, tmp_path):
    pki.leaf("k1", ["DNS:one.test"])
    pki.leaf("k2", ["DNS:two.test"])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem file\n")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", pki.path("k1.key")],
         r"missing\.pem: cannot load certificate: "),
        (["--tls-cert", str(junk), "--tls-key", pki.path("k1.key")], r"junk\.pem: cannot load certificate: "),
        (["--tls-cert", pki.path("k1.pem"), "--tls-key", str(junk)], r"junk\.pem: cannot load private key: "),
        (["--tls-cert", pki.path("k1.pem"), "--tls-key", pki.path("k2.key")],
         r"k2\.key: private key does not match certificate .*k1\.pem"),
        (["--tls-cert", pki.path("k1.pem")], r"--tls-cert and --tls-key come in pairs"),
    ]
    for args, want in cases:
        rc, out, err = culvert.run(["relay", "--allow-anonymous", "--listen", "127.0.0.1:0"] + args)
        assert rc == 2, (args, rc, out, err)
        assert re.search(want, err), (want, err)
        assert "listening" not in out


# --------------------------------------------------------------------------------------------------------
# interop: Python peers over wss
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(60)
def test_reference_python_agent_over_wss(culvert, pki, tcp_echo):
    """The KohakuRiver spec agent (Python websockets with an SSL context) registers over wss; a culvert
    forward (also wss) reaches its local port through the relay."""
    import kohaku_agent

    relay = tls_relay(culvert, pki)
    stop = threading.Event()
    ready = threading.Event()
    box = {}

    def run_agent():
        async def main():
            ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
            agent = kohaku_agent.KohakuAgent(relay.wss, "tls-ref", reconnect_delay=0.5, ssl=ctx, record=False)
            await agent.start()
            await agent.wait_established(timeout=10)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await agent.stop()

        try:
            asyncio.run(main())
        except Exception as e:  # reported by the main thread
            box["err"] = e
            ready.set()

    th = threading.Thread(target=run_agent, daemon=True)
    th.start()
    try:
        assert ready.wait(15) and "err" not in box, box
        relay.proc.wait_line(r"agent tls-ref registered .*\(KohakuRiver\)", timeout=5, stream="err")
        fwd = culvert.forward(relay.wss, "tls-ref", tcp_echo.port, extra=["--trust-ca", pki.path("ca.pem")])
        echo_transfer(fwd.local_port, 2 * MiB)
    finally:
        stop.set()
        th.join(10)


def test_python_websockets_client_against_tls_relay(culvert, pki):
    """Python websockets (not our client) completes a wss handshake with the relay and gets the relay's
    HTTP answer over TLS (healthz over https too)."""
    relay = tls_relay(culvert, pki)
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            buf = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
    assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"ok\n"), buf


# --------------------------------------------------------------------------------------------------------
# SNI pass-through (--tls-listen, --expose tls:LOCAL:NAME)
# --------------------------------------------------------------------------------------------------------


class TlsEchoService:
    """A TLS echo server (Python ssl) with its own certificate: the agent's local service."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.names = []
        self.ctx.sni_callback = lambda s, name, c: self.names.append(name)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            with self.ctx.wrap_socket(c, server_side=True) as s:
                while True:
                    d = s.recv(1 << 16)
                    if not d:
                        return
                    s.sendall(d)
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.sock.close()


def sni_relay(culvert, pki, extra=()):
    r = culvert.relay(extra=["--domain", "tun.test", "--tls-listen", "127.0.0.1:0"] + list(extra))
    m = r.proc.wait_line(r"SNI router on 127\.0\.0\.1:(\d+)", timeout=5)
    r.sni_port = int(m.group(1))
    r.wss = "wss://localhost:%d" % r.port
    return r


def tls_client(port, name, cafile, payload=None, chunk=1 << 16):
    """Connects to the SNI router as NAME, verifies against cafile, echoes payload; returns the peer's
    certificate (DER) and the echoed bytes. One thread, one chunk in flight: an SSL socket must not be
    read and written from two threads at once."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            der = s.getpeercert(binary_form=True)
            got = bytearray()
            for off in range(0, len(payload or b""), chunk):
                piece = payload[off:off + chunk]
                s.sendall(piece)
                want = len(got) + len(piece)
                while len(got) < want:
                    d = s.recv(1 << 20)
                    if not d:
                        return der, bytes(got)
                    got += d
            return der, bytes(got)


@pytest.mark.timeout_s(60)
def test_sni_passthrough_service_certificate_reaches_client(culvert, pki):
    # The service's certificate comes from another CA than the relay's: only the service can present it.
    svc_crt, svc_key = pki.leaf("svc", ["DNS:app.tun.test"], ca="svcca")
    svc = TlsEchoService(svc_crt, svc_key)
    try:
        relay = sni_relay(culvert, pki, extra=["--tls-cert", pki.path("relay.pem"), "--tls-key",
                                               pki.path("relay.key")])
        agent = culvert.agent(relay.wss, "sni-a", extra=["--trust-ca", pki.path("ca.pem"),
                                                        "--expose", "tls:%d:app" % svc.port])
        agent.wait_line(r"exposed tls 127\.0\.0\.1:%d at app\.tun\.test:%d" % (svc.port, relay.sni_port))
        payload = os.urandom(3 * MiB)
        der, got = tls_client(relay.sni_port, "app.tun.test", pki.path("svcca.pem"), payload)
        with open(svc_crt) as f:
            assert der == ssl.PEM_cert_to_DER_cert(f.read()), "the client did not get the service's certificate"
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert svc.names[-1] == "app.tun.test"  # the SNI reached the service too
        # Upper case routes the same way (names are case-insensitive).
        der2, _ = tls_client(relay.sni_port, "APP.tun.test", pki.path("svcca.pem"))
        assert der2 == der
        # Several connections at once.
        errs = []

        def one(i):
            try:
                p = os.urandom(100000 + i)
                assert tls_client(relay.sni_port, "app.tun.test", pki.path("svcca.pem"), p)[1] == p
            except Exception as e:
                errs.append(e)

        ths = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(30)
        assert not errs, errs
    finally:
        svc.close()


def test_sni_unknown_name_gone_agent_and_garbage(culvert, pki):
    svc_crt, svc_key = pki.leaf("svc", ["DNS:app.tun.test"], ca="svcca")
    svc = TlsEchoService(svc_crt, svc_key)
    try:
        relay = sni_relay(culvert, pki)
        ca = pki.path("svcca.pem")
        for name in ("nope.tun.test", "app.other.test", "x.app.tun.test"):
            with pytest.raises(ssl.SSLError) as ei:
                tls_client(relay.sni_port, name, ca)
            assert "UNRECOGNIZED_NAME" in str(ei.value), ei.value
        relay.proc.wait_line(r"tls: 127\.0\.0\.1:\d+ asked for nope\.tun\.test: no tls exposure by that name",
                             stream="err")
        # Not TLS at all: closed without a byte.
        with socket.create_connection(("127.0.0.1", relay.sni_port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: app.tun.test\r\n\r\n")
            assert s.recv(100) == b""
        # The agent leaves: the name is known but gone.
        agent = culvert.agent(relay.url, "sni-g", extra=["--expose", "tls:%d:app" % svc.port])
        agent.wait_line(r"exposed tls")
        tls_client(relay.sni_port, "app.tun.test", ca, b"ping")
        agent.kill()
        relay.proc.wait_line(r"agent sni-g .*disconnected", timeout=5, stream="err")
        with pytest.raises(ssl.SSLError) as ei:
            tls_client(relay.sni_port, "app.tun.test", ca)
        assert "INTERNAL_ERROR" in str(ei.value), ei.value
        relay.proc.wait_line(r"asked for app\.tun\.test: agent sni-g is gone", stream="err")
        assert relay.proc.alive()
    finally:
        svc.close()


@pytest.mark.timeout_s(60)
def test_sigterm_exit_clean_after_tls_traffic(culvert, pki):
    """Relay (wss listener + SNI router) and agent (wss) shut down cleanly after TLS traffic of every kind:
    exit 0 and, under ASan, no leak report (OpenSSL objects all freed)."""
    svc_crt, svc_key = pki.leaf("svc", ["DNS:app.tun.test"], ca="svcca")
    svc = TlsEchoService(svc_crt, svc_key)
    try:
        relay = sni_relay(culvert, pki, extra=["--tls-cert", pki.path("relay.pem"), "--tls-key",
                                               pki.path("relay.key")])
        agent = culvert.agent(relay.wss, "sni-x", extra=["--trust-ca", pki.path("ca.pem"),
                                                        "--expose", "tls:%d:app" % svc.port])
        agent.wait_line(r"exposed tls")
        p = os.urandom(200000)
        assert tls_client(relay.sni_port, "app.tun.test", pki.path("svcca.pem"), p)[1] == p
        with pytest.raises(ssl.SSLError):
            tls_client(relay.sni_port, "nope.tun.test", pki.path("svcca.pem"))
        peer_cert(relay.port, "localhost", pki.path("ca.pem"))
        bad = culvert.agent(relay.wss, "sni-bad", wait=False, extra=["--trust-ca", pki.ca("otherca")])
        bad.wait_line("certificate verify failed")
        for p_ in (bad, agent, relay.proc):
            p_.p.send_signal(15)
            rc = p_.wait_exit(20)
            err = p_.stderr_text() + p_.stdout_text()
            assert rc == 0 and "LeakSanitizer" not in err and "AddressSanitizer" not in err, (p_.name, rc, err[-3000:])
    finally:
        svc.close()


def _maps_libssl(pid):
    with open("/proc/%d/maps" % pid) as f:
        return "libssl.so" in f.read()


def test_openssl_loaded_only_when_tls_is_used(culvert, pki, tcp_echo):
    """A plain relay and agent never load libssl (its relocations and pages would cost ~1.4 MiB of idle
    RSS); a TLS relay and a wss:// agent do."""
    plain = culvert.relay()
    agent = culvert.agent(plain.url, "plain-a", extra=["--expose", "tcp:%d" % tcp_echo.port])
    small_echo(exposed(agent, tcp_echo.port))
    assert not _maps_libssl(plain.proc.pid) and not _maps_libssl(agent.pid)
    relay = tls_relay(culvert, pki)
    wagent = culvert.agent(relay.wss, "tls-a2", extra=["--trust-ca", pki.path("ca.pem")])
    assert _maps_libssl(relay.proc.pid) and _maps_libssl(wagent.pid)


def test_tls_listener_rate_limit_closes_at_once(culvert, pki):
    """Past the per-address burst, a TLS client is closed at once (a plaintext 429 would be unreadable
    inside TLS), and the relay keeps serving."""
    relay = tls_relay(culvert, pki, extra=["--conn-rate", "1/3"])
    ca = pki.path("ca.pem")
    ok = refused = 0
    t0 = time.monotonic()
    for _ in range(8):
        try:
            peer_cert(relay.port, "localhost", ca)
            ok += 1
        except (ssl.SSLError, OSError):
            refused += 1
    assert ok >= 3 and refused >= 1, (ok, refused)
    assert time.monotonic() - t0 < 4, "refused TLS connections should close at once, not at a deadline"
    time.sleep(1.2)
    peer_cert(relay.port, "localhost", ca)
