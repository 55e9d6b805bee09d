"""KohakuRiver tunnel message codec, written from ../shared/specs/kohaku-tunnel.md (§3, §4, §10).

Header: ``>BBIH`` (type, proto, client_id big-endian u32, port big-endian u16) followed by the payload.
There is no length field; the payload is the rest of the WebSocket message.
"""

import struct

HDR = struct.Struct(">BBIH")
HDR_LEN = 8

CONNECT = 0x01
CONNECTED = 0x02
DATA = 0x03
CLOSE = 0x04
ERROR = 0x05
PING = 0x06
PONG = 0x07

TYPE_NAMES = {
    CONNECT: "CONNECT",
    CONNECTED: "CONNECTED",
    DATA: "DATA",
    CLOSE: "CLOSE",
    ERROR: "ERROR",
    PING: "PING",
    PONG: "PONG",
}

TCP = 0x00
UDP = 0x01

MAX_DATA = 65536
RELAY_MAX_MESSAGE = 16 * 1024 * 1024


def encode(mtype, proto, client_id, port=0, payload=b""):
    if isinstance(payload, str):
        payload = payload.encode()
    return HDR.pack(mtype, proto, client_id & 0xFFFFFFFF, port & 0xFFFF) + bytes(payload)


class Msg:
    __slots__ = ("type", "proto", "id", "port", "payload", "raw")

    def __init__(self, mtype, proto, cid, port, payload, raw):
        self.type = mtype
        self.proto = proto
        self.id = cid
        self.port = port
        self.payload = payload
        self.raw = raw

    def __repr__(self):
        name = TYPE_NAMES.get(self.type, "type%d" % self.type)
        pl = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return "Msg(%s proto=%d id=%d port=%d payload=%r)" % (name, self.proto, self.id, self.port, pl)


def decode(raw):
    """Decode one binary message; returns None when it is shorter than the header (malformed)."""
    if isinstance(raw, str) or len(raw) < HDR_LEN:
        return None
    t, p, cid, port = HDR.unpack_from(raw, 0)
    return Msg(t, p, cid, port, bytes(raw[HDR_LEN:]), bytes(raw))


def h(hexstr):
    """Hex with arbitrary whitespace -> bytes."""
    return bytes.fromhex("".join(hexstr.split()))


def os_error_text(errno_value):
    """The reference agent's (Rust std::io::Error Display) form: "<strerror> (os error N)"."""
    import os

    return "%s (os error %d)" % (os.strerror(errno_value), errno_value)


# §10 vectors, verbatim from the spec tables.
VECTORS = {
    1: h("01 00 00000001 1f90"),
    2: h("02 00 00000001 0000"),
    3: h("03 00 0000002a 0000 68656c6c6f"),
    4: h("04 01 00000007 0000"),
    5: h(
        "05 00 00000002 0000 436f6e6e656374696f6e207265667573656420286f73206572726f722031313129"
    ),
    6: h("07 00 01020304 0000"),
    7: h("06 00 00000000 0000"),
    8: h("01 01 ffffffff ffff"),
    9: h("03 01 00000003 0000"),
    10: h("02 01 12345678 0000"),
    11: h("05 00 00000009 0000 54756e6e656c2073656e64206661696c6564"),
}

NEGATIVE_VECTORS = [
    h("030000"),  # too short (3)
    h("0800000000010000"),  # invalid type 8
    h("0102000000090050"),  # invalid proto 2 (CONNECT id 9 port 80)
]

# Self-check of the vectors against the encoder (cheap, runs on import).
assert VECTORS[1] == encode(CONNECT, TCP, 1, 8080)
assert VECTORS[2] == encode(CONNECTED, TCP, 1, 0)
assert VECTORS[3] == encode(DATA, TCP, 42, 0, b"hello")
assert VECTORS[4] == encode(CLOSE, UDP, 7, 0)
assert VECTORS[5] == encode(ERROR, TCP, 2, 0, b"Connection refused (os error 111)")
assert VECTORS[6] == encode(PONG, TCP, 0x01020304, 0)
assert VECTORS[7] == encode(PING, TCP, 0, 0)
assert VECTORS[8] == encode(CONNECT, UDP, 0xFFFFFFFF, 0xFFFF)
assert VECTORS[9] == encode(DATA, UDP, 3, 0)
assert VECTORS[10] == encode(CONNECTED, UDP, 305419896, 0)
assert VECTORS[11] == encode(ERROR, TCP, 9, 0, b"Tunnel send failed")
