#!/usr/bin/python3
"""Stand-alone local services for throughput tests, in their own process (no GIL sharing with the test).

    echo_service.py tcp-echo     threaded TCP echo
    echo_service.py blast-echo   TCP: first bytes "BLAST" -> send endlessly, else echo
    echo_service.py udp-echo     UDP echo (empty datagrams too)

Prints ``port N`` on stdout once listening, then serves until killed.
"""

import socket
import sys
import threading


def echo(c, first=b""):
    if first:
        c.sendall(first)
    while True:
        d = c.recv(1 << 18)
        if not d:
            break
        c.sendall(d)


def blast_or_echo(c):
    first = c.recv(1 << 16)
    if not first:
        return
    if first.startswith(b"BLAST"):
        chunk = b"x" * (1 << 16)
        while True:
            c.sendall(chunk)
    echo(c, first)


def serve_tcp(handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    print("port %d" % s.getsockname()[1], flush=True)

    def run(c):
        try:
            handler(c)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = s.accept()
        threading.Thread(target=run, args=(c,), daemon=True).start()


def serve_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    print("port %d" % s.getsockname()[1], flush=True)
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(d, a)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "tcp-echo":
        serve_tcp(echo)
    elif mode == "blast-echo":
        serve_tcp(blast_or_echo)
    elif mode == "udp-echo":
        serve_udp()
    else:
        sys.exit("unknown mode %s" % mode)
