"""Shared helpers for the WebSocket conformance tests.

Finds the tool binaries (env CULVERT_BUILD, default <repo>/build), starts
ws_echo_server / ws_client on 127.0.0.1 with ephemeral ports, and speaks raw
RFC 6455 frames over asyncio streams for the cases that a well-behaved peer
library refuses to produce (unmasked, invalid UTF-8, bad opcodes...).
"""
import asyncio
import base64
import hashlib
import os
import re
import select
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Per-test ceiling: every test body runs under asyncio.wait_for(..., TEST_TIMEOUT).
TEST_TIMEOUT = 30.0
# Ceiling for any single expected event (a line, a frame, a close).
STEP = 5.0


def build_dir():
    d = os.environ.get("CULVERT_BUILD", "build")
    return d if os.path.isabs(d) else os.path.join(REPO, d)


def tool(name):
    path = os.path.join(build_dir(), name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{path} not found: build it (cmake --build BUILD --target {name}) "
            "or set CULVERT_BUILD")
    return path


def accept_for(key):
    if isinstance(key, str):
        key = key.encode()
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def pattern(n):
    """n bytes of i % 251 (what `ws_client big N` sends)."""
    block = bytes(i % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


def sha256hex(b):
    return hashlib.sha256(b).hexdigest()


def client_line_for_binary(b):
    """The line ws_client prints for a received binary message."""
    if len(b) > 1024:
        return f"binary-len {len(b)} sha256 {sha256hex(b)}"
    return "binary " + b.hex()


def run(coro, timeout=TEST_TIMEOUT):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


# --- ws_echo_server process ------------------------------------------------

class EchoServer:
    def __init__(self, args=(), log_path=None):
        self.log_path = log_path
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [tool("ws_echo_server"), "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
        line = self._readline(STEP)
        m = re.fullmatch(rb"listening on 127\.0\.0\.1:(\d+)\n", line or b"")
        if not m:
            self.kill()
            raise AssertionError(f"ws_echo_server did not announce its port: {line!r}")
        self.port = int(m.group(1))
        assert self.port != 0
        self.url = f"ws://127.0.0.1:{self.port}"

    def _readline(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return buf
            chunk = os.read(fd, 1)
            if not chunk:
                return buf
            buf += chunk
        return buf

    def alive(self):
        return self.proc.poll() is None

    def stderr_text(self):
        if not self.log_path:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def terminate(self, timeout=8.0):
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


# --- ws_client process -----------------------------------------------------

class Client:
    """ws_client under asyncio: write commands, read event lines."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []

    @classmethod
    async def start(cls, url, *args):
        proc = await asyncio.create_subprocess_exec(
            tool("ws_client"), url, *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None,  # pytest captures it
            limit=16 * 1024 * 1024)
        return cls(proc)

    async def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.proc.stdin.write(line + b"\n")
        await self.proc.stdin.drain()

    async def line(self, timeout=STEP):
        """Next event line (without the newline); None on EOF."""
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"ws_client printed nothing in {timeout}s; lines so far: {self.lines!r}")
        if not raw:
            return None
        assert raw.endswith(b"\n"), f"partial line {raw!r}"
        s = raw[:-1].decode("utf-8", errors="surrogateescape")
        self.lines.append(s)
        return s

    async def expect(self, want, timeout=STEP):
        got = await self.line(timeout)
        assert got == want, f"ws_client: expected {want!r}, got {got!r} (all: {self.lines!r})"

    async def expect_close(self, code, reason=None, timeout=STEP):
        got = await self.line(timeout)
        assert got is not None and got.startswith("close "), \
            f"expected a close line, got {got!r} (all: {self.lines!r})"
        parts = got.split(" ", 2)
        assert int(parts[1]) == code, f"expected close {code}, got {got!r}"
        if reason is not None:
            assert len(parts) == 3 and parts[2] == reason, \
                f"expected close reason {reason!r}, got {got!r}"
        return got

    async def wait(self, timeout=STEP):
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"ws_client did not exit within {timeout}s")

    async def rest(self, timeout=STEP):
        """All remaining lines until EOF."""
        out = []
        while True:
            s = await self.line(timeout)
            if s is None:
                return out
            out.append(s)

    def kill(self):
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def close_proc(self):
        self.kill()
        await self.proc.wait()


# --- raw frames ------------------------------------------------------------

def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, key=None, length=None):
    """Encodes one frame; length overrides the encoded length field."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n < 65536:
        hdr = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        key = key if key is not None else os.urandom(4)
        return hdr + key + mask_bytes(payload, key)
    return hdr + payload


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return code.to_bytes(2, "big") + reason


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload, header):
        self.fin, self.rsv, self.opcode = fin, rsv, opcode
        self.masked, self.payload, self.header = masked, payload, header

    @property
    def close_code(self):
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    def __repr__(self):
        p = self.payload if len(self.payload) <= 64 else self.payload[:64] + b"..."
        return (f"Frame(fin={self.fin}, rsv={self.rsv}, op={self.opcode:#x}, "
                f"masked={self.masked}, len={len(self.payload)}, {p!r})")


async def read_frame(reader, timeout=STEP):
    async def go():
        h = await reader.readexactly(2)
        fin, rsv, op = bool(h[0] & 0x80), (h[0] >> 4) & 7, h[0] & 15
        masked, n = bool(h[1] & 0x80), h[1] & 0x7F
        ext = b""
        if n == 126:
            ext = await reader.readexactly(2)
            n = int.from_bytes(ext, "big")
        elif n == 127:
            ext = await reader.readexactly(8)
            n = int.from_bytes(ext, "big")
        key = await reader.readexactly(4) if masked else b""
        payload = await reader.readexactly(n)
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(fin, rsv, op, masked, payload, h + ext + key)
    try:
        return await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no frame within {timeout}s")


async def expect_eof(reader, timeout=STEP):
    """The peer closes TCP (anything still arriving is returned for checks)."""
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"peer kept TCP open for {timeout}s after the close handshake")
    except ConnectionResetError:
        data = b""
    return data


async def read_head(reader, timeout=STEP):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as e:
        raise AssertionError(f"connection closed before a full HTTP head: {e.partial!r}")
    except asyncio.TimeoutError:
        raise AssertionError(f"no HTTP head within {timeout}s")
    return head.decode("latin-1")


def parse_head(head):
    lines = head.split("\r\n")
    start = lines[0]
    headers = []
    for ln in lines[1:]:
        if not ln:
            continue
        name, _, value = ln.partition(":")
        headers.append((name, value.strip()))
    return start, headers


def header(headers, name):
    vals = [v for n, v in headers if n.lower() == name.lower()]
    return vals[0] if vals else None


async def raw_connect(port, key="dGhlIHNhbXBsZSBub25jZQ==", path="/", extra=""):
    """Opens a WebSocket by hand; returns (reader, writer, response headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
                 .encode())
    await writer.drain()
    start, headers = parse_head(await read_head(reader))
    assert start.startswith("HTTP/1.1 101 "), f"expected 101, got {start!r}"
    assert header(headers, "Sec-WebSocket-Accept") == accept_for(key)
    assert (header(headers, "Upgrade") or "").lower() == "websocket"
    assert "upgrade" in (header(headers, "Connection") or "").lower()
    return reader, writer, headers


async def expect_close_frame(reader, writer, code, reply=True):
    """Reads frames until a CLOSE; checks its code; answers it; expects EOF."""
    seen = []
    while True:
        try:
            f = await read_frame(reader)
        except asyncio.IncompleteReadError as e:
            raise AssertionError(
                f"TCP closed without a close frame (wanted {code}); frames: {seen!r}, "
                f"partial {e.partial!r}")
        if f.opcode == 0x8:
            break
        seen.append(f)
    assert f.fin and not f.masked and f.rsv == 0, f"bad close frame {f!r}"
    codes = code if isinstance(code, tuple) else (code,)
    assert f.close_code in codes, f"expected close code {code}, got {f!r}"
    if len(f.payload) > 2:
        f.payload[2:].decode("utf-8")  # the reason must be UTF-8
    if reply:
        try:
            writer.write(frame(0x8, f.payload[:2]))
            await writer.drain()
        except ConnectionError:
            pass
    await expect_eof(reader)
    return f


def close_writer(writer):
    try:
        writer.close()
    except Exception:
        pass
