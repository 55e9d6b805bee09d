"""Native mode (docs/PROTOCOL.md, culvert.v1) with the real culvert binaries on every hop.

Issue 3's acceptance items, end to end: ``culvert relay`` + ``culvert agent`` + ``culvert forward`` (and
``tunnel-client``), visitors as plain sockets on the relay's public ports or on the forward's local port,
services in-process (threads) or out of process (tests/peers/echo_service.py) for the throughput tests.
Every check is on real bytes, every test has a wall-clock limit, every process is killed by the ``procs``
fixture.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

# Under AddressSanitizer RSS says nothing about our buffers (quarantine,
# shadow memory): the memory bounds are checked in the plain build only.
SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"

from conftest import TUNNEL_CLIENT, closed_port

SECRET = "s3cret-native"
CID = "kohakuriver-task-9"
MiB = 1 << 20

# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _note_outside_kills(request, procs):
    """These tests never send SIGTERM; if a process logged one, something outside the test killed it (by
    name): say so next to the failure."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        hit = [p.name for p in procs.all if "signal 15" in p.stdout_text() + p.stderr_text()]
        if hit:
            sys.stderr.write("NOTE: %s got SIGTERM from outside this test (a kill by name?)\n" % ", ".join(hit))


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(secret=SECRET, exp_in=3600, agents=("*",)):
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"exp": int(time.time()) + exp_in}
    if agents is not None:
        claims["agents"] = list(agents)
    signing = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def token_relay(culvert, extra=()):
    return culvert.relay(extra=["--token", SECRET] + list(extra))


def exposed(agent, proto, local, timeout=5.0, start=0):
    """Wait for the agent's 'exposed PROTO 127.0.0.1:LOCAL at HOST:PUBLIC' line; returns PUBLIC."""
    m = agent.wait_line(r"exposed %s 127\.0\.0\.1:%d at ([\d.]+):(\d+)" % (proto, local), timeout=timeout,
                        start=start)
    return int(m.group(2))


def free_port():
    return closed_port()


def connect_refused(port, timeout=1.0):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


# A deterministic byte stream of any length (random block of prime length, read at an offset).
_BLOCK = os.urandom(1000003)


def pattern(off, n):
    out = bytearray()
    while n > 0:
        i = off % len(_BLOCK)
        k = min(n, len(_BLOCK) - i)
        out += _BLOCK[i:i + k]
        off += k
        n -= k
    return bytes(out)


def echo_transfer(port, total, timeout=30.0, chunk=1 << 18):
    """Send ``total`` pattern bytes to 127.0.0.1:port while reading the echo; returns (elapsed, n, ok)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = hashlib.sha256()
    recvd = hashlib.sha256()
    err = []

    def sender():
        try:
            off = 0
            while off < total:
                b = pattern(off, min(chunk, total - off))
                sent.update(b)
                s.sendall(b)
                off += len(b)
        except OSError as e:
            err.append(e)

    t0 = time.monotonic()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    n = 0
    try:
        while n < total:
            try:
                d = s.recv(1 << 20)
            except socket.timeout:
                break
            except OSError as e:
                err.append(e)
                break
            if not d:
                break
            recvd.update(d)
            n += len(d)
        took = time.monotonic() - t0
        th.join(timeout)
    finally:
        s.close()
    assert not err, "transfer error after %d of %d bytes: %r" % (n, total, err)
    assert n == total, "echo: received %d of %d bytes" % (n, total)
    assert recvd.hexdigest() == sent.hexdigest(), "echo: sha256 mismatch"
    return took


def small_echo(port, payload=None, timeout=5.0):
    payload = payload or os.urandom(4096)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        buf = bytearray()
        while len(buf) < len(payload):
            d = s.recv(65536)
            if not d:
                break
            buf += d
    finally:
        s.close()
    assert bytes(buf) == payload, "echo through port %d: got %d of %d bytes (or wrong bytes)" % (
        port, len(buf), len(payload))


def stalled_visitor(port):
    """A visitor that asks the blaster for endless data and never reads (small receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(b"BLAST")
    return s


class RssSampler:
    def __init__(self, proc, period=0.02):
        self.proc = proc
        self.peak = proc.rss_kib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._t.start()

    def _run(self, period):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.rss_kib())
            except (OSError, AssertionError):
                return
            time.sleep(period)

    def stop(self):
        self._stop.set()
        self._t.join(2)
        return self.peak


def no_aborted(*ps):
    for p in ps:
        text = p.stdout_text() + "\n" + p.stderr_text()
        bad = [line for line in text.splitlines() if "aborted" in line]
        assert not bad, "%s logged aborted connections:\n%s" % (p.name, "\n".join(bad))


def recv_all_until_eof(s, timeout=5.0):
    """Everything until EOF; returns (data, how) with how in {eof, reset, timeout}."""
    s.settimeout(timeout)
    buf = bytearray()
    try:
        while True:
            d = s.recv(1 << 20)
            if not d:
                return bytes(buf), "eof"
            buf += d
    except socket.timeout:
        return bytes(buf), "timeout"
    except ConnectionResetError:
        return bytes(buf), "reset"


# --------------------------------------------------------------------------------------------------------
# 1. authentication with the culvert agent and forward
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(30)
def test_auth_agent_accepted_with_secret_and_jwt(culvert, tcp_echo):
    relay = token_relay(culvert)
    a1 = culvert.agent(relay.url, "agent-secret", extra=["--token", SECRET, "--expose", "tcp:%d" % tcp_echo.port])
    # JWT through the environment (CULVERT_TOKEN), limited to this agent id.
    a2 = culvert.agent(relay.url, "agent-jwt", extra=["--expose", "tcp:%d" % tcp_echo.port],
                       env={"CULVERT_TOKEN": jwt(agents=["agent-jwt"])})
    for a in (a1, a2):
        a.wait_line(r"tunnel established: .*\(native\)", timeout=3)
        small_echo(exposed(a, "tcp", tcp_echo.port))
    # forward with the secret and with a forward-only JWT (no agents claim) reach the agents
    for tok, cid in ((SECRET, "agent-secret"), (jwt(agents=None), "agent-jwt")):
        fwd = culvert.forward(relay.url, cid, tcp_echo.port, extra=["--token", tok])
        small_echo(fwd.local_port)
    assert relay.proc.count(r"refused", stream="err") == 0, relay.proc.dump()


@pytest.mark.timeout_s(30)
def test_auth_agent_refused_logs_reason_and_keeps_retrying(culvert):
    relay = token_relay(culvert)
    cases = [
        ("bad-token", "wrong-secret", r"bad token"),
        ("expired", jwt(exp_in=-60), r"token expired"),
        ("other-id", jwt(agents=["somebody-else"]), r"token does not allow"),
        ("bad-sig", jwt(secret="not-the-secret"), r"bad token"),
        ("fwd-only", jwt(agents=None), r"token does not allow"),
        ("no-token", None, r"missing token"),
    ]
    agents = []
    for cid, tok, why in cases:
        extra = ["--token", tok] if tok else []
        agents.append((cid, why, culvert.agent(relay.url, cid, extra=extra, wait=False)))
    for cid, why, a in agents:
        # at least two refusals: it logged the 401 with its reason and retried
        rx = r"handshake refused: HTTP 401 Unauthorized: %s" % why
        deadline = time.monotonic() + 8
        while a.count(rx) < 2:
            assert time.monotonic() < deadline, "%s: want 2 lines matching %r\n%s" % (cid, rx, a.dump())
            assert a.alive(), "%s: agent exited on a 401 instead of retrying\n%s" % (cid, a.dump())
            time.sleep(0.05)
        assert a.alive(), a.dump()
        assert a.count(r"tunnel established") == 0, a.dump()
        relay.proc.wait_line(r"refused agent from 127\.0\.0\.1:\d+: %s" % why, stream="err", timeout=2)
    # forward with a bad token: exits non-zero and says 401
    rc, out, err = culvert.run(["forward", "--relay", relay.url, "--token", "wrong", "-l", "0", "x", "80"],
                               timeout=10)
    assert rc != 0, "forward with a bad token exited 0\n%s\n%s" % (out, err)
    assert "401" in out + err, "forward's message does not mention 401:\n%s\n%s" % (out, err)
    relay.proc.wait_line(r"refused session from 127\.0\.0\.1:\d+: bad token", stream="err", timeout=2)


# --------------------------------------------------------------------------------------------------------
# 2. public ports: expose / unexpose / re-expose, refusals, UDP
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(30)
def test_expose_unexpose_reexpose_across_agent_restarts(culvert, tcp_echo):
    relay = token_relay(culvert)
    pub = free_port()
    args = ["--token", SECRET, "--expose", "tcp:%d:%d" % (tcp_echo.port, pub)]
    for round_ in range(2):
        a = culvert.agent(relay.url, CID, extra=args)
        assert exposed(a, "tcp", tcp_echo.port) == pub
        small_echo(pub)
        # a visitor holding a connection across the agent's death
        held = socket.create_connection(("127.0.0.1", pub), timeout=3)
        held.sendall(b"ping")
        assert held.recv(16) == b"ping"
        os.kill(a.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while not connect_refused(pub):
            assert time.monotonic() - t0 < 1.0, "public port %d still accepting %.2fs after SIGKILL (round %d)\n%s" % (
                pub, time.monotonic() - t0, round_, relay.proc.dump())
            time.sleep(0.01)
        released = time.monotonic() - t0
        data, how = recv_all_until_eof(held, timeout=2)
        held.close()
        assert how in ("eof", "reset") and data == b"", "held visitor: %r %r" % (how, data)
        print("round %d: public port released %.0f ms after SIGKILL" % (round_, released * 1000))
        a.wait_exit(2)
        relay.proc.wait_line(r"agent %s .*disconnected" % CID, stream="err", timeout=2)
    # and a third time, to see it re-bound after two restarts
    a = culvert.agent(relay.url, CID, extra=args)
    assert exposed(a, "tcp", tcp_echo.port) == pub
    small_echo(pub, os.urandom(200000))
    assert relay.proc.alive(), relay.proc.dump()


@pytest.mark.timeout_s(30)
def test_expose_rebound_after_relay_restart(culvert, tcp_echo):
    rport = free_port()
    pub = free_port()
    relay = culvert.relay(listen="127.0.0.1:%d" % rport, extra=["--token", SECRET])
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d:%d" % (tcp_echo.port, pub)])
    assert exposed(a, "tcp", tcp_echo.port) == pub
    small_echo(pub)
    n0 = len(a.out)
    relay.proc.kill()
    a.wait_line(r"tunnel closed", timeout=3, start=n0)
    assert connect_refused(pub)
    time.sleep(0.3)
    relay2 = culvert.relay(listen="127.0.0.1:%d" % rport, extra=["--token", SECRET])
    a.wait_line(r"tunnel established: .*\(native\)", timeout=10, start=n0)
    assert exposed(a, "tcp", tcp_echo.port, start=n0) == pub
    small_echo(pub, os.urandom(100000))
    assert relay2.proc.alive() and a.alive()


@pytest.mark.timeout_s(20)
def test_expose_port_in_use_is_explained(culvert, tcp_echo):
    relay = token_relay(culvert)
    pub = free_port()
    a = culvert.agent(relay.url, "first", extra=["--token", SECRET, "--expose", "tcp:%d:%d" % (tcp_echo.port, pub)])
    assert exposed(a, "tcp", tcp_echo.port) == pub
    # a second agent asks for the same port: refused with a reason, its other exposure still works
    b = culvert.agent(relay.url, "second", extra=["--token", SECRET, "--expose", "tcp:%d:%d" % (tcp_echo.port, pub),
                                                  "--expose", "tcp:%d" % tcp_echo.port])
    b.wait_line(r"expose tcp:%d refused by the relay: port in use" % tcp_echo.port, timeout=5)
    other = exposed(b, "tcp", tcp_echo.port)
    assert other != pub
    # a port held by some other process
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    try:
        held = squatter.getsockname()[1]
        c = culvert.agent(relay.url, "third", extra=["--token", SECRET, "--expose", "tcp:%d:%d" % (tcp_echo.port, held)])
        c.wait_line(r"expose tcp:%d refused by the relay: port in use" % tcp_echo.port, timeout=5)
    finally:
        squatter.close()
    # the holder still serves, and so does the second agent's other port
    small_echo(pub)
    small_echo(other)
    relay.proc.wait_line(r"agent second: expose tcp:%d on port %d refused: port in use" % (tcp_echo.port, pub),
                         stream="err", timeout=2)
    assert relay.proc.alive() and a.alive() and b.alive()


@pytest.mark.timeout_s(20)
def test_expose_port_not_allowed_is_explained(culvert, tcp_echo):
    lo = free_port()
    # a range of one port; ask for it and for one outside it
    outside = lo + 1 if lo < 65535 else lo - 1
    relay = token_relay(culvert, ["--allow-ports", "%d-%d" % (lo, lo)])
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET,
                                             "--expose", "tcp:%d:%d" % (tcp_echo.port, outside),
                                             "--expose", "tcp:%d:%d" % (tcp_echo.port, lo)])
    a.wait_line(r"expose tcp:%d refused by the relay: port not allowed" % tcp_echo.port, timeout=5)
    assert exposed(a, "tcp", tcp_echo.port) == lo
    small_echo(lo)
    assert connect_refused(outside)
    relay.proc.wait_line(r"refused.*port not allowed", stream="err", timeout=3)
    assert a.alive(), a.dump()


@pytest.mark.timeout_s(20)
def test_expose_udp_datagrams_roundtrip(culvert, ext_service):
    svc = ext_service("udp-echo")
    tsvc = ext_service("tcp-echo")
    relay = token_relay(culvert)
    pub = free_port()
    # the same public port number for UDP and for TCP (different protocols, no conflict)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "udp:%d:%d" % (svc.port, pub),
                                             "--expose", "tcp:%d:%d" % (tsvc.port, pub)])
    assert exposed(a, "udp", svc.port) == pub
    assert exposed(a, "tcp", tsvc.port) == pub
    small_echo(pub)
    visitors = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for v in visitors:
            v.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            v.settimeout(1.0)
        for size in (1, 1400, 65000, 65507):
            for v in visitors:  # two flows (two visitor addresses)
                d = os.urandom(size)
                got = None
                for attempt in range(3):  # UDP: allow a loss, never a wrong datagram
                    v.sendto(d, ("127.0.0.1", pub))
                    try:
                        got, _ = v.recvfrom(65536)
                    except socket.timeout:
                        continue
                    break
                assert got is not None, "no echo for a %d-byte datagram\n%s\n%s" % (size, relay.proc.dump(), a.dump())
                assert got == d, "datagram of %d bytes came back as %d bytes (or altered)" % (size, len(got))
    finally:
        for v in visitors:
            v.close()


# --------------------------------------------------------------------------------------------------------
# 3. flow control under a stalled reader
# --------------------------------------------------------------------------------------------------------


def _stall_and_transfer(relay, agent, port, total, extra_procs=()):
    baseline = relay.proc.rss_kib()
    agent_base = agent.rss_kib()
    stall = stalled_visitor(port)
    try:
        time.sleep(0.5)  # let the stalled stream fill every buffer it can
        sampler = RssSampler(relay.proc)
        agent_sampler = RssSampler(agent)
        took = echo_transfer(port, total, timeout=20)
        time.sleep(0.3)
        peak = sampler.stop()
        agent_peak = agent_sampler.stop()
        print("%d MiB echo beside a stalled reader: %.2f s (%.0f MiB/s); relay RSS baseline %d KiB, peak %d KiB "
              "(+%d KiB); agent RSS baseline %d KiB, peak %d KiB" % (
                  total // MiB, took, total / MiB / took, baseline, peak, peak - baseline, agent_base, agent_peak))
        assert took < 15, "transfer beside a stalled reader took %.1f s" % took
        assert SANITIZED or peak - baseline < 64 * 1024, "relay RSS grew by %d KiB (session cap 64 MiB)" % (peak - baseline)
        # the stalled stream was only paused: it still delivers once read
        stall.settimeout(5)
        got = 0
        while got < 4 * MiB:
            d = stall.recv(1 << 20)
            assert d, "stalled stream ended (EOF) instead of resuming after %d bytes" % got
            got += len(d)
        assert set(d) == {ord("x")}
    finally:
        stall.close()
    for p in (relay.proc, agent) + tuple(extra_procs):
        assert p.alive(), p.dump()
    no_aborted(relay.proc, agent, *extra_procs)


@pytest.mark.timeout_s(40)
def test_flow_public_port_stalled_reader_other_stream_completes(culvert, ext_service):
    svc = ext_service("blast-echo")
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d" % svc.port])
    pub = exposed(a, "tcp", svc.port)
    _stall_and_transfer(relay, a, pub, 32 * MiB)


@pytest.mark.timeout_s(40)
def test_flow_forward_native_stalled_reader_64mib_no_loss(culvert, ext_service):
    svc = ext_service("blast-echo")
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET])
    fwd = culvert.forward(relay.url, CID, svc.port, extra=["--token", SECRET])
    _stall_and_transfer(relay, a, fwd.local_port, 64 * MiB, extra_procs=(fwd,))


@pytest.mark.timeout_s(40)
def test_flow_grown_windows_then_stalled_readers_bounded_by_session_cap(culvert, ext_service):
    """Eight visitors read the blaster fast (their windows grow toward WINDOW_MAX = 16 MiB), then all stop
    reading at once. Without the session cap the relay could queue 8 x 16 = 128 MiB; with it, the credit the
    relay grants (hence what it may queue) stays under 64 MiB. RSS also holds buffer and allocator overhead,
    so the bound checked is the cap plus one WINDOW_MAX."""
    svc = ext_service("blast-echo")
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d" % svc.port])
    pub = exposed(a, "tcp", svc.port)
    baseline = relay.proc.rss_kib()
    agent_base = a.rss_kib()
    sampler = RssSampler(relay.proc)
    agent_sampler = RssSampler(a)
    socks = []
    read = [0] * 8
    errs = []

    def reader(i, s):
        try:
            s.sendall(b"BLAST")
            while read[i] < 24 * MiB:
                d = s.recv(1 << 20)
                if not d:
                    errs.append("visitor %d: EOF after %d bytes" % (i, read[i]))
                    return
                read[i] += len(d)
        except OSError as e:
            errs.append("visitor %d: %r" % (i, e))

    try:
        ths = []
        for i in range(8):
            s = socket.create_connection(("127.0.0.1", pub), timeout=10)
            socks.append(s)
            ths.append(threading.Thread(target=reader, args=(i, s), daemon=True))
        t0 = time.monotonic()
        for t in ths:
            t.start()
        for t in ths:
            t.join(20)
        took = time.monotonic() - t0
        assert not errs, errs
        assert min(read) >= 24 * MiB, read
        time.sleep(2.0)  # all six stalled: let every queue fill as far as the credit allows
        peak = sampler.stop()
        agent_peak = agent_sampler.stop()
        print("8 x 24 MiB read in %.2f s, then stalled: relay RSS baseline %d KiB, peak %d KiB (+%d KiB); "
              "agent RSS baseline %d KiB, peak %d KiB (+%d KiB)" % (
                  took, baseline, peak, peak - baseline, agent_base, agent_peak, agent_peak - agent_base))
        assert SANITIZED or peak - baseline < (64 + 16) * 1024, (
            "relay RSS grew by %d KiB with 8 stalled readers (session cap 64 MiB + 16 MiB overhead allowed)" % (
                peak - baseline))
        # still alive and not aborted: each stalled stream resumes
        for i, s in enumerate(socks):
            d = s.recv(1 << 16)
            assert d and set(d) == {ord("x")}, "visitor %d did not resume" % i
    finally:
        sampler.stop()
        agent_sampler.stop()
        for s in socks:
            s.close()
    assert relay.proc.alive() and a.alive()
    no_aborted(relay.proc, a)


def _parallel_echo(port, n, size, what=""):
    errs = []
    took = []

    def one(i):
        try:
            took.append(echo_transfer(port, size, timeout=5, chunk=1 << 16))  # 5 s without a byte: stalled
        except AssertionError as e:
            errs.append("%s connection %d: %s" % (what, i, e))

    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join(25)
    assert not errs, "%d of %d parallel echoes stalled or failed: %s" % (len(errs), n, errs[:4])
    assert len(took) == n
    return time.monotonic() - t0


@pytest.mark.timeout_s(25)
def test_parallel_streams_integrity_public_port(culvert, ext_service):
    svc = ext_service("tcp-echo")
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d" % svc.port])
    pub = exposed(a, "tcp", svc.port)
    dt = _parallel_echo(pub, 32, 1 * MiB, "public port")
    print("public port: 32 parallel 1 MiB echoes in %.2f s" % dt)
    for p in (relay.proc, a):
        assert p.alive(), p.dump()
    no_aborted(relay.proc, a)


@pytest.mark.timeout_s(25)
def test_parallel_streams_integrity_forward(culvert, ext_service):
    """Many streams at once on one native forward session: the relay's queue toward the agent must be flushed
    when the agent's WebSocket drains, not only when a WINDOW arrives (otherwise a stream can wait forever
    with credit granted on both sides)."""
    svc = ext_service("tcp-echo")
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET])
    fwd = culvert.forward(relay.url, CID, svc.port, extra=["--token", SECRET])
    for round_ in range(3):  # the stall depends on timing: give it three chances to show
        dt = _parallel_echo(fwd.local_port, 32, 1 * MiB, "forward round %d" % round_)
        print("forward: 32 parallel 1 MiB echoes in %.2f s" % dt)
    for p in (relay.proc, a, fwd):
        assert p.alive(), p.dump()
    no_aborted(relay.proc, a, fwd)


@pytest.mark.timeout_s(20)
def test_visitor_reset_and_dead_service_port(culvert, tcp_service, tcp_echo):
    """A visitor that resets mid-transfer ends only its own stream (the service sees the end); a visitor to a
    port whose service is gone is closed at once, not left hanging."""
    ends = []

    def sink(c):
        n = 0
        while True:
            try:
                d = c.recv(1 << 16)
            except OSError:
                break
            if not d:
                break
            n += len(d)
        ends.append(n)

    svc = tcp_service(sink)
    dead = free_port()
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d" % svc.port,
                                             "--expose", "tcp:%d" % dead, "--expose", "tcp:%d" % tcp_echo.port])
    pub = exposed(a, "tcp", svc.port)
    pub_dead = exposed(a, "tcp", dead)
    pub_echo = exposed(a, "tcp", tcp_echo.port)
    keep = socket.create_connection(("127.0.0.1", pub_echo), timeout=5)
    try:
        keep.sendall(b"before")
        assert keep.recv(16) == b"before"
        v = socket.create_connection(("127.0.0.1", pub), timeout=5)
        v.sendall(os.urandom(4 * MiB))
        v.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        v.close()  # RST
        deadline = time.monotonic() + 3
        while not ends and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ends, "the service never saw the reset visitor's stream end"
        t0 = time.monotonic()
        d = socket.create_connection(("127.0.0.1", pub_dead), timeout=5)
        data, how = recv_all_until_eof(d, timeout=3)
        d.close()
        assert how in ("eof", "reset") and data == b"", (how, data)
        print("dead service port: visitor closed (%s) after %.0f ms" % (how, (time.monotonic() - t0) * 1000))
        keep.sendall(b"after")
        assert keep.recv(16) == b"after", "an unrelated stream was disturbed"
    finally:
        keep.close()
    assert relay.proc.alive() and a.alive()


# --------------------------------------------------------------------------------------------------------
# 4. half-open links
# --------------------------------------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept_handshake(lsock, timeout):
    """Accept one WebSocket upgrade on lsock, answer 101 with culvert.v1; returns (conn, request head)."""
    lsock.settimeout(timeout)
    c, _ = lsock.accept()
    c.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        assert d, "agent closed before finishing its handshake"
        buf += d
    head = buf.split(b"\r\n\r\n")[0].decode("latin-1")
    m = re.search(r"(?im)^sec-websocket-key:\s*(\S+)", head)
    assert m, head
    accept = base64.b64encode(hashlib.sha1((m.group(1) + WS_GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: culvert.v1\r\n\r\n" % accept).encode())
    return c, head


@pytest.mark.timeout_s(25)
def test_half_open_agent_detects_silent_relay_and_reconnects(culvert):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    port = lsock.getsockname()[1]
    conns = []
    try:
        a = culvert.agent("ws://127.0.0.1:%d" % port, CID, wait=False, extra=["--ping-interval", "1"])
        c, head = _accept_handshake(lsock, 5)
        conns.append(c)
        assert re.search(r"(?im)^sec-websocket-protocol:.*culvert\.v1", head), head
        assert head.startswith("GET /ws/tunnel/%s " % CID), head
        a.wait_line(r"tunnel established: .*\(native\)", timeout=3)
        t0 = time.monotonic()
        n0 = len(a.out)
        # now read nothing and send nothing
        a.wait_line(r"tunnel closed", timeout=6, start=n0)
        dt = time.monotonic() - t0
        print("agent detected the silent relay after %.2f s (ping interval 1 s)" % dt)
        assert dt < 4.0, "agent took %.2f s to drop a silent link (ping interval 1 s)" % dt
        c2, head2 = _accept_handshake(lsock, 6)
        conns.append(c2)
        assert head2.startswith("GET /ws/tunnel/%s " % CID), head2
        a.wait_line(r"tunnel established", timeout=3, start=n0)
        assert a.alive(), a.dump()
    finally:
        for c in conns:
            c.close()
        lsock.close()


@pytest.mark.timeout_s(25)
def test_half_open_relay_drops_stopped_agent(culvert, tcp_echo):
    relay = token_relay(culvert, ["--ping-interval", "1", "--ping-timeout", "1"])
    pub = free_port()
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--ping-interval", "60",
                                             "--expose", "tcp:%d:%d" % (tcp_echo.port, pub)])
    assert exposed(a, "tcp", tcp_echo.port) == pub
    small_echo(pub)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        relay.proc.wait_line(r"agent %s .*disconnected" % CID, stream="err", timeout=6)
        dt = time.monotonic() - t0
        print("relay dropped the stopped agent after %.2f s (ping interval 1 s, timeout 1 s)" % dt)
        assert dt < 3.5, "relay took %.2f s to drop a stopped agent" % dt
        t1 = time.monotonic()
        while not connect_refused(pub):  # the listener closes just after the "disconnected" line
            assert time.monotonic() - t1 < 0.5, "public port still open 0.5 s after the agent was dropped"
            time.sleep(0.01)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # once it runs again it notices and comes back, with its port
    n0 = len(a.out)
    a.wait_line(r"tunnel established", timeout=8, start=n0)
    assert exposed(a, "tcp", tcp_echo.port, start=n0) == pub
    small_echo(pub)


# --------------------------------------------------------------------------------------------------------
# 5. native vs KohakuRiver compatibility
# --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout_s(20)
def test_compat_agent_is_not_native_and_rejects_expose(culvert, tcp_echo):
    relay = culvert.relay()  # --allow-anonymous
    a = culvert.agent(relay.url, CID, extra=["--compat"])
    line = a.wait_line(r"tunnel established: .*").group(0)
    assert "(native)" not in line, line
    fwd = culvert.forward(relay.url, CID, tcp_echo.port)
    small_echo(fwd.local_port, os.urandom(300000))
    # native agent for comparison
    b = culvert.agent(relay.url, CID + "-n")
    assert "(native)" in b.wait_line(r"tunnel established: .*").group(0)
    rc, out, err = culvert.run(["agent", "-r", relay.url, "-c", "x", "--compat", "--expose", "tcp:%d" % tcp_echo.port],
                               timeout=5)
    assert rc == 2, "agent --compat --expose: rc %s\n%s\n%s" % (rc, out, err)
    assert "expose" in (out + err).lower(), out + err


@pytest.mark.timeout_s(20)
def test_tunnel_client_anonymous_and_path_prefix_token(culvert, tcp_echo):
    # anonymous relay
    relay = culvert.relay()
    tc = culvert.agent(relay.url, CID, argv0=TUNNEL_CLIENT)
    assert "(native)" not in tc.wait_line(r"tunnel established: .*").group(0)
    fwd = culvert.forward(relay.url, CID, tcp_echo.port)
    small_echo(fwd.local_port)
    # token relay, token as a path prefix
    relay2 = token_relay(culvert)
    tc2 = culvert.agent("%s/t/%s" % (relay2.url, SECRET), CID, argv0=TUNNEL_CLIENT)
    assert "(native)" not in tc2.wait_line(r"tunnel established: .*").group(0)
    fwd2 = culvert.forward(relay2.url, CID, tcp_echo.port, extra=["--token", SECRET])
    small_echo(fwd2.local_port, os.urandom(300000))
    assert SECRET not in tc2.stdout_text() + tc2.stderr_text(), "the path-prefix token shows in the agent's log"
    # and a wrong prefix token is refused
    bad = culvert.agent("%s/t/%s" % (relay2.url, "nope"), CID + "-bad", argv0=TUNNEL_CLIENT, wait=False)
    relay2.proc.wait_line(r"refused agent from 127\.0\.0\.1:\d+: bad token", stream="err", timeout=5)
    bad.wait_line(r"401", timeout=3)
    assert bad.count(r"tunnel established") == 0


# --------------------------------------------------------------------------------------------------------
# 6. half-close (native FIN)
# --------------------------------------------------------------------------------------------------------


def _half_close_service(tcp_service):
    """Reads until EOF, then answers digest + reversed data, then closes; records what it saw."""
    seen = []

    def handler(c):
        buf = bytearray()
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            buf += d
        seen.append(len(buf))
        c.sendall(hashlib.sha256(buf).digest() + bytes(buf[::-1]))
        c.shutdown(socket.SHUT_WR)

    return tcp_service(handler), seen


def _server_first_service(tcp_service):
    """Sends a greeting and shuts down its write side first, then reads the visitor's data until EOF."""
    got = []

    def handler(c):
        c.sendall(b"hello, then FIN")
        c.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        n = 0
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            h.update(d)
            n += len(d)
        got.append((n, h.hexdigest()))

    return tcp_service(handler), got


def _check_half_close(port, svc_seen, what):
    req = os.urandom(300000)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        data, how = recv_all_until_eof(s, timeout=5)
        dt = time.monotonic() - t0
    finally:
        s.close()
    want = hashlib.sha256(req).digest() + req[::-1]
    assert how == "eof", "%s: visitor got %s after %d bytes (want EOF)" % (what, how, len(data))
    assert data == want, "%s: got %d bytes, want %d (service saw %r)" % (what, len(data), len(want), svc_seen)
    assert svc_seen == [len(req)], "%s: service saw %r" % (what, svc_seen)
    print("%s: answer + EOF %.0f ms after SHUT_WR" % (what, dt * 1000))
    assert dt < 0.9, "%s: EOF took %.2f s (idle-close rather than FIN?)" % (what, dt)


def _check_server_half_close(port, svc_got, what):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.settimeout(5)
        buf = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        assert buf == b"hello, then FIN", "%s: %r" % (what, buf)
        # the other direction is still open: send after the service's FIN
        body = os.urandom(1 * MiB)
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        data, how = recv_all_until_eof(s, timeout=5)
        assert data == b"" and how in ("eof", "reset"), (data, how)
    finally:
        s.close()
    deadline = time.monotonic() + 3
    while not svc_got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc_got == [(len(body), hashlib.sha256(body).hexdigest())], "%s: service got %r" % (
        what, [(n, h[:12]) for n, h in svc_got])


@pytest.mark.timeout_s(20)
def test_half_close_public_port(culvert, tcp_service):
    svc, seen = _half_close_service(tcp_service)
    svc2, got = _server_first_service(tcp_service)
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET, "--expose", "tcp:%d" % svc.port,
                                             "--expose", "tcp:%d" % svc2.port])
    _check_half_close(exposed(a, "tcp", svc.port), seen, "public port")
    _check_server_half_close(exposed(a, "tcp", svc2.port), got, "public port, service FIN first")
    no_aborted(relay.proc, a)


@pytest.mark.timeout_s(20)
def test_half_close_forward_native(culvert, tcp_service):
    svc, seen = _half_close_service(tcp_service)
    svc2, got = _server_first_service(tcp_service)
    relay = token_relay(culvert)
    a = culvert.agent(relay.url, CID, extra=["--token", SECRET])
    fwd = culvert.forward(relay.url, CID, svc.port, extra=["--token", SECRET])
    _check_half_close(fwd.local_port, seen, "forward")
    fwd2 = culvert.forward(relay.url, CID, svc2.port, extra=["--token", SECRET])
    _check_server_half_close(fwd2.local_port, got, "forward, service FIN first")
    no_aborted(relay.proc, a, fwd, fwd2)
