"""Fixtures for culvert's end-to-end tests.

Everything runs on 127.0.0.1 with ephemeral ports. Every process a test starts is registered with the ``procs``
fixture and killed (by pid) at teardown; every test has a wall-clock limit (SIGALRM, default 30 s, override
with ``@pytest.mark.timeout_s(N)``); async test bodies additionally run under ``asyncio.wait_for``.

The binary is ``$CULVERT_BIN`` (default ``build/culvert`` at the repository root); ``tunnel-client`` is the
symlink next to it.
"""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "tests" / "peers"
sys.path.insert(0, str(PEERS))

CULVERT_BIN = os.environ.get("CULVERT_BIN") or str(REPO / "build" / "culvert")
if not os.path.isabs(CULVERT_BIN):
    CULVERT_BIN = str(REPO / CULVERT_BIN)
TUNNEL_CLIENT = os.path.join(os.path.dirname(CULVERT_BIN), "tunnel-client")

DEFAULT_TIMEOUT = 30


class TestTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(n): wall-clock limit for one test, in seconds")


@pytest.fixture(autouse=True)
def _per_test_alarm(request):
    m = request.node.get_closest_marker("timeout_s")
    limit = int(m.args[0]) if m else DEFAULT_TIMEOUT

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded its %d s limit" % limit)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_async(coro, timeout=25):
    """Run one async test body with its own loop and a hard timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def require_binary():
    if not os.path.exists(CULVERT_BIN):
        pytest.fail("culvert binary not found at %s (build it, or set CULVERT_BIN)" % CULVERT_BIN)


# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------


class Proc:
    """A child process whose stdout/stderr lines are collected by reader threads."""

    def __init__(self, args, env=None, name=None):
        self.args = [str(a) for a in args]
        self.name = name or os.path.basename(self.args[0])
        full_env = dict(os.environ)
        for k in ("RUNNER_URL", "CONTAINER_ID", "RECONNECT_DELAY", "MAX_RECONNECT", "LOG_LEVEL", "RUST_LOG"):
            full_env.pop(k, None)
        if env:
            full_env.update(env)
        self.p = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self.pid = self.p.pid
        self.out = []
        self.err = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.p.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.p.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, f, sink):
        for line in iter(f.readline, b""):
            with self._cond:
                sink.append(line.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern, timeout=10.0, stream="out", start=0):
        """Wait for a line matching regex ``pattern`` (search) at index >= start; returns the match."""
        rx = re.compile(pattern)
        sink = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in sink[start:]:
                    mm = rx.search(line)
                    if mm:
                        return mm
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and all(not t.is_alive() for t in self._threads)):
                    for line in sink[start:]:
                        mm = rx.search(line)
                        if mm:
                            return mm
                    raise AssertionError(
                        "%s: no line matching %r within %.1fs (rc=%s)\n%s"
                        % (self.name, pattern, timeout, self.p.poll(), self.dump())
                    )
                self._cond.wait(min(left, 0.2))

    def count(self, pattern, stream="out"):
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in (self.out if stream == "out" else self.err) if rx.search(line))

    def wait_exit(self, timeout=10.0):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s still running after %.1fs\n%s" % (self.name, timeout, self.dump()))
        for t in self._threads:
            t.join(2)
        return rc

    def alive(self):
        return self.p.poll() is None

    def kill(self):
        if self.p.poll() is None:
            try:
                self.p.kill()
            except ProcessLookupError:
                pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def dump(self):
        with self._cond:
            return "--- %s (pid %d, rc %s) stdout ---\n%s\n--- %s stderr ---\n%s" % (
                self.name,
                self.pid,
                self.p.poll(),
                "\n".join(self.out[-40:]),
                self.name,
                "\n".join(self.err[-40:]),
            )

    def stdout_text(self):
        with self._cond:
            return "\n".join(self.out)

    def stderr_text(self):
        with self._cond:
            return "\n".join(self.err)

    # /proc accounting
    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


class Procs:
    def __init__(self):
        self.all = []

    def start(self, args, env=None, name=None):
        p = Proc(args, env=env, name=name)
        self.all.append(p)
        return p

    def kill_all(self):
        for p in reversed(self.all):
            p.kill()


@pytest.fixture
def procs(request):
    ps = Procs()
    yield ps
    # Leave evidence for failing tests.
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        time.sleep(0.5)  # let late log lines (errors after the failure) arrive
        for p in ps.all:
            sys.stderr.write(p.dump() + "\n")
    ps.kill_all()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------------------------------------------------
# culvert roles
# ---------------------------------------------------------------------------------------------------------


class Relay:
    def __init__(self, proc, host, port):
        self.proc = proc
        self.host = host
        self.port = port
        self.url = "ws://%s:%d" % (host, port)
        self.http = "http://%s:%d" % (host, port)


LISTEN_RE = r"listening on (\S+):(\d+)"
FORWARD_RE = r"forwarding (tcp|udp) (\S+):(\d+)"


@pytest.fixture
def culvert(procs):
    """Factory for culvert processes: culvert.relay(), culvert.agent(url, cid), culvert.forward(...)."""
    require_binary()

    class C:
        bin = CULVERT_BIN
        tunnel_client = TUNNEL_CLIENT

        @staticmethod
        def relay(listen="127.0.0.1:0", extra=(), wait=True):
            # The relay requires a token by default; these KohakuRiver tests
            # run it the way a reference deployment does (no credentials).
            extra = list(extra)
            if "--token" not in extra and "--allow-anonymous" not in extra:
                extra.append("--allow-anonymous")
            p = procs.start([CULVERT_BIN, "relay", "--listen", listen] + extra, name="relay")
            if not wait:
                return p
            m = p.wait_line(LISTEN_RE, timeout=10)
            return Relay(p, m.group(1), int(m.group(2)))

        @staticmethod
        def agent(url, cid, reconnect_delay=1, extra=(), argv0=None, wait=True, env=None):
            exe = argv0 or CULVERT_BIN
            args = [exe] if argv0 else [CULVERT_BIN, "agent"]
            args += ["-r", url, "-c", cid, "--reconnect-delay", str(reconnect_delay)] + list(extra)
            p = procs.start(args, name="agent", env=env)
            if wait:
                p.wait_line("tunnel established", timeout=10)
            return p

        @staticmethod
        def forward(relay_url, cid, remote_port, proto="tcp", host="127.0.0.1", extra=(), wait=True):
            args = [CULVERT_BIN, "forward", "--relay", relay_url, cid, str(remote_port), "-l", "0", "-H", host]
            args += ["-p", proto] + list(extra)
            p = procs.start(args, name="forward")
            if not wait:
                return p
            m = p.wait_line(FORWARD_RE, timeout=10)
            p.local_host = m.group(2)
            p.local_port = int(m.group(3))
            return p

        @staticmethod
        def run(args, timeout=15, env=None):
            p = procs.start([CULVERT_BIN] + list(args), name="culvert", env=env)
            rc = p.wait_exit(timeout)
            return rc, p.stdout_text(), p.stderr_text()

    C.procs = procs
    return C


def wait_forward_connected(relay_url, cid, port=9, timeout=10.0):
    """Poll /ws/forward until the relay answers text CONNECTED (i.e. an agent is registered for cid)."""
    import kohaku_forward

    async def poll():
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                f = await kohaku_forward.RawForward.open(relay_url, cid, port, timeout=2)
                last = f.first
                await f.close()
                if last == "CONNECTED":
                    return time.monotonic()
            except Exception as e:  # relay down, refused, ...
                last = repr(e)
            await asyncio.sleep(0.05)
        raise AssertionError("no CONNECTED for %s within %.1fs (last: %r)" % (cid, timeout, last))

    return asyncio.run(poll())


def http_get(url, timeout=5):
    """Returns (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------------------------------------------------
# Local services (threaded)
# ---------------------------------------------------------------------------------------------------------


class _Service:
    def __init__(self):
        self.sock = None
        self.port = None
        self._stop = False
        self._conns = []
        self._lock = threading.Lock()
        self.accepted = 0

    def _track(self, c):
        with self._lock:
            self._conns.append(c)
            self.accepted += 1

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except Exception:
            pass
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except Exception:
                    pass


class TcpService(_Service):
    """Threaded TCP server. handler(conn) runs per connection in its own thread."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self._track(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass


def echo_handler(c):
    while True:
        d = c.recv(1 << 16)
        if not d:
            return
        c.sendall(d)


def blaster_or_echo_handler(c):
    """If the first bytes are b"BLAST", send endlessly (until the peer goes away); otherwise echo."""
    first = c.recv(1 << 16)
    if not first:
        return
    if first.startswith(b"BLAST"):
        chunk = b"x" * (1 << 16)
        while True:
            c.sendall(chunk)
    c.sendall(first)
    echo_handler(c)


class UdpEcho(_Service):
    def __init__(self):
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            try:
                d, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            self.received.append(d)
            try:
                self.sock.sendto(d, addr)
            except OSError:
                pass


@pytest.fixture
def tcp_echo():
    s = TcpService(echo_handler)
    yield s
    s.close()


@pytest.fixture
def blaster_echo():
    s = TcpService(blaster_or_echo_handler)
    yield s
    s.close()


@pytest.fixture
def udp_echo():
    s = UdpEcho()
    yield s
    s.close()


@pytest.fixture
def tcp_service():
    made = []

    def make(handler):
        s = TcpService(handler)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def ext_service(procs):
    """Out-of-process service (tests/peers/echo_service.py MODE): returns an object with .port and .proc."""

    class S:
        pass

    def make(mode):
        p = procs.start([sys.executable, str(PEERS / "echo_service.py"), mode], name=mode)
        m = p.wait_line(r"^port (\d+)$", timeout=10)
        s = S()
        s.port = int(m.group(1))
        s.proc = p
        return s

    return make


def closed_port():
    """A TCP port on 127.0.0.1 that (very likely) nobody listens on: bound, then released."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(1 << 20, n - len(buf)))
        if not d:
            break
        buf += d
    return bytes(buf)
