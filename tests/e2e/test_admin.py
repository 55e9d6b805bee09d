"""Admin listeners of the relay and the agent (issue 4): the JSON API over the registry and Prometheus /metrics.

A real relay with ``--admin 127.0.0.1:0`` and a real native agent exposing a TCP echo service; the
counters are checked against bytes the test itself sent, so a counter that stopped counting fails.
"""

import json
import re
import socket
import time
import urllib.request

from conftest import http_get, recv_exact

SECRET = "admin-test-secret"


def start(culvert, tcp_echo, extra=()):
    relay = culvert.relay(extra=["--token", SECRET, "--admin", "127.0.0.1:0"] + list(extra))
    m = relay.proc.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/", timeout=5)
    admin = "http://127.0.0.1:%s" % m.group(1)
    agent = culvert.agent(relay.url, "svc-1", extra=["--token", SECRET, "--expose", "tcp:%d" % tcp_echo.port])
    m = agent.wait_line(r"exposed tcp 127\.0\.0\.1:%d at ([\d.]+):(\d+)" % tcp_echo.port, timeout=5)
    return relay, admin, agent, int(m.group(2))


def get_json(url):
    status, body = http_get(url)
    assert status == 200, (status, body)
    return json.loads(body)


def metrics(admin):
    status, body = http_get(admin + "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_agents_streams_and_byte_counters(culvert, tcp_echo):
    relay, admin, agent, pub = start(culvert, tcp_echo)
    agents = get_json(admin + "/api/agents")["agents"]
    assert len(agents) == 1
    a = agents[0]
    assert a["id"] == "svc-1" and a["mode"] == "native" and a["current"] is True
    assert a["exposures"] == [{"proto": "tcp", "local_port": tcp_echo.port, "public_port": pub}]
    assert abs(a["since"] - time.time()) < 30

    payload = b"x" * 300000
    s = socket.create_connection(("127.0.0.1", pub), timeout=5)
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    # While the visitor is connected the stream is listed with its counters.
    streams = get_json(admin + "/api/streams")["streams"]
    assert len(streams) == 1
    st = streams[0]
    assert st["agent"] == "svc-1" and st["proto"] == "tcp" and st["front"] == "tcp-port"
    assert st["bytes_to_agent"] == len(payload) and st["bytes_from_agent"] == len(payload)
    m = metrics(admin)
    assert m["culvert_relay_streams"] == 1
    assert m['culvert_relay_agents{mode="native"}'] == 1
    assert m["culvert_relay_exposures"] == 1
    assert m['culvert_relay_bytes_total{direction="to_agents"}'] == len(payload)
    assert m['culvert_relay_bytes_total{direction="from_agents"}'] == len(payload)
    s.close()

    deadline = time.monotonic() + 5
    while get_json(admin + "/api/streams")["streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_json(admin + "/api/streams")["streams"] == []
    stats = get_json(admin + "/api/stats")
    assert stats["streams_total"] == 1 and stats["streams"] == 0
    assert stats["agents_total"] == 1 and stats["agents"] == 1


def test_metrics_auth_failures_and_handshake_histogram(culvert, tcp_echo):
    relay, admin, agent, pub = start(culvert, tcp_echo)
    bad = culvert.agent(relay.url, "intruder", extra=["--token", "wrong", "--max-reconnect", "1"], wait=False)
    bad.wait_exit(10)
    m = metrics(admin)
    assert m["culvert_relay_auth_failures_total"] >= 1
    assert m["culvert_relay_agent_registrations_total"] == 1
    # One handshake so far (the good agent): the histogram is cumulative and ends at +Inf == count.
    assert m["culvert_relay_handshake_seconds_count"] == 1
    assert m['culvert_relay_handshake_seconds_bucket{le="+Inf"}'] == 1
    buckets = [(k, v) for k, v in m.items() if k.startswith("culvert_relay_handshake_seconds_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values), buckets
    assert 0 < m["culvert_relay_handshake_seconds_sum"] < 5
    status, body = http_get(admin + "/metrics")
    text = body.decode()
    assert "# TYPE culvert_relay_handshake_seconds histogram" in text
    assert "# TYPE culvert_relay_bytes_total counter" in text


def test_expose_refusals_and_health(culvert, tcp_echo):
    relay = culvert.relay(extra=["--token", SECRET, "--admin", "127.0.0.1:0", "--allow-ports", "1-2"])
    m = relay.proc.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/", timeout=5)
    admin = "http://127.0.0.1:%s" % m.group(1)
    agent = culvert.agent(relay.url, "svc-2", extra=["--token", SECRET, "--expose", "tcp:%d:40000" % tcp_echo.port])
    agent.wait_line(r"refused by the relay", timeout=5)
    assert metrics(admin)["culvert_relay_expose_refusals_total"] == 1
    assert get_json(admin + "/api/agents")["agents"][0]["exposures"] == []
    assert http_get(admin + "/healthz") == (200, b"ok\n")
    assert http_get(admin + "/readyz") == (200, b"ready\n")
    status, body = http_get(admin + "/nope")
    assert status == 404 and "/metrics" in json.loads(body)["endpoints"]
    req = urllib.request.Request(admin + "/api/agents", method="POST", data=b"{}")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405


def test_admin_address_in_use_is_an_error(culvert):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    rc, out, err = culvert.run(["relay", "--listen", "127.0.0.1:0", "--allow-anonymous",
                                "--admin", "127.0.0.1:%d" % port])
    s.close()
    assert rc == 1
    assert "admin" in err and "address already in use" in err.lower()
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--admin", "localhost"])
    assert rc == 2 and "--admin wants HOST:PORT" in err


# ---- the agent's admin listener ------------------------------------------------------------------------


def test_agent_admin_status_metrics_and_readiness(culvert, tcp_echo):
    relay = culvert.relay(extra=["--token", SECRET, "--allow-ports", "1024-65535"])
    agent = culvert.agent(relay.url, "svc-3", extra=["--token", SECRET, "--admin", "127.0.0.1:0",
                                                     "--expose", "tcp:%d" % tcp_echo.port,
                                                     "--expose", "udp:9:80"])
    m = agent.wait_line(r"admin API on http://127\.0\.0\.1:(\d+)/")
    admin = "http://127.0.0.1:%s" % m.group(1)
    m = agent.wait_line(r"exposed tcp 127\.0\.0\.1:%d at ([\d.]+):(\d+)" % tcp_echo.port)
    pub = int(m.group(2))
    agent.wait_line(r"expose udp:9 refused by the relay")
    assert http_get(admin + "/readyz") == (200, b"ready\n")
    st = get_json(admin + "/api/status")
    assert st["connected"] is True and st["mode"] == "native"
    assert "/ws/tunnel/svc-3" in st["relay"]
    assert st["exposures"][0] == {"proto": "tcp", "local_port": tcp_echo.port, "requested_port": 0,
                                  "state": "exposed", "public_port": pub}
    assert st["exposures"][1]["state"] == "refused" and st["exposures"][1]["reason"]

    payload = b"y" * 200000
    s = socket.create_connection(("127.0.0.1", pub), timeout=5)
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    st = get_json(admin + "/api/status")
    assert st["streams"] == 1 and st["streams_total"] == 1
    # Wire bytes include framing, so at least the payload each way.
    assert st["tunnel_rx_bytes"] >= len(payload) and st["tunnel_tx_bytes"] >= len(payload)
    m = metrics(admin)
    assert m["culvert_agent_connected"] == 1 and m["culvert_agent_exposures"] == 1
    assert m["culvert_agent_streams_total"] == 1 and m["culvert_agent_tunnels_total"] == 1
    assert m['culvert_agent_tunnel_bytes_total{direction="rx"}'] >= len(payload)
    s.close()

    relay.proc.kill()
    deadline = time.monotonic() + 10
    while http_get(admin + "/readyz")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, body = http_get(admin + "/readyz")
    assert status == 503 and b"not connected" in body
    st = get_json(admin + "/api/status")
    assert st["connected"] is False and st["mode"] == "none"
    assert [x["state"] for x in st["exposures"]] == ["disconnected", "disconnected"]
    # Counters survive the tunnel: bytes of the closed tunnel are still counted.
    assert st["tunnel_rx_bytes"] >= len(payload)
    deadline = time.monotonic() + 10
    while metrics(admin)["culvert_agent_connect_failures_total"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics(admin)["culvert_agent_connect_failures_total"] >= 1


def test_agent_admin_bad_address(culvert):
    rc, out, err = culvert.run(["agent", "-r", "ws://127.0.0.1:9", "-c", "x", "--admin", "nohost"])
    assert rc == 2 and "--admin <HOST:PORT>" in err
