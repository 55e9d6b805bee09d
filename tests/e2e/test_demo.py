"""`culvert demo`: relay, agent, sample service and forward in one process.

The demo must print a URL that reaches the sample service through the whole
tunnel (forward -> relay /ws/forward -> agent -> service) and stop cleanly on
Ctrl-C (SIGINT) or SIGTERM, exit status 0."""
import signal
import urllib.request

import pytest

from conftest import CULVERT_BIN


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_serves_through_the_tunnel_and_stops_cleanly(procs, sig):
    p = procs.start([CULVERT_BIN, "demo"], name="demo")
    m = p.wait_line(r"URL:\s+(http://127\.0\.0\.1:\d+/)", timeout=15)
    url = m.group(1)
    p.wait_line(r"try:\s+curl " + url + "hello")
    for i in (1, 2):
        status, body = _get(url + "path-%d" % i)
        assert status == 200
        assert "Hello from the culvert demo service!" in body
        assert "You asked for /path-%d; this is request %d." % (i, i) in body
    # It really went through the tunnel: the relay saw the agent and a session.
    assert p.count("agent demo registered", stream="err") + p.count("agent demo registered") == 1
    assert p.count("session .* for demo port") + p.count("session .* for demo port", stream="err") >= 1
    p.p.send_signal(sig)
    assert p.wait_exit(10) == 0
