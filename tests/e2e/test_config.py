"""Config files and SIGHUP reload (issue 4): the relay reads its flags from an INI file, refuses a bad
one with its line and reason, and on SIGHUP swaps auth keys and limits without dropping live tunnels and
streams; a bad file at reload is refused and the running configuration stays."""

import signal
import socket
import time

from conftest import recv_exact


def write(path, text):
    path.write_text(text)
    return str(path)


def relay_with(culvert, conf, extra=()):
    p = culvert.procs.start([culvert.bin, "relay", "--config", conf] + list(extra), name="relay")
    m = p.wait_line(r"listening on (\S+):(\d+)")
    return p, "ws://127.0.0.1:%s" % m.group(2)


def refused(culvert, url, token):
    """True if an agent with token is refused by the relay (it gives up after one attempt)."""
    a = culvert.agent(url, "probe-%s" % token, extra=["--token", token, "--max-reconnect", "1"], wait=False)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "tunnel established" in a.stdout_text():
            a.kill()
            return False
        if not a.alive():
            return "401 Unauthorized" in a.stdout_text()
        time.sleep(0.02)
    raise AssertionError("the probe agent neither connected nor gave up")


def exposed_port(agent, local):
    return int(agent.wait_line(r"exposed tcp 127\.0\.0\.1:%d at [\d.]+:(\d+)" % local).group(1))


def test_reload_swaps_token_keeps_live_streams(culvert, tcp_echo, tmp_path):
    conf = write(tmp_path / "relay.conf", "# the relay\nlisten = 127.0.0.1:0\ntoken = first-secret\n")
    relay, url = relay_with(culvert, conf)
    agent = culvert.agent(url, "svc", extra=["--token", "first-secret", "--expose", "tcp:%d" % tcp_echo.port])
    pub = exposed_port(agent, tcp_echo.port)
    live = socket.create_connection(("127.0.0.1", pub), timeout=5)
    live.sendall(b"before")
    assert recv_exact(live, 6) == b"before"

    write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\ntoken = second-secret\n")
    n = relay.count("configuration reloaded", stream="err")
    relay.p.send_signal(signal.SIGHUP)
    relay.wait_line("configuration reloaded from %s: token set" % conf, stream="err", timeout=5)
    assert relay.count("configuration reloaded", stream="err") == n + 1
    # The live stream and the registered agent were not touched.
    live.sendall(b"after")
    assert recv_exact(live, 5) == b"after"
    live.close()
    assert agent.alive()
    # New handshakes use the new key.
    assert refused(culvert, url, "first-secret")
    assert not refused(culvert, url, "second-secret")


def test_bad_file_at_reload_keeps_running_config(culvert, tmp_path):
    conf = write(tmp_path / "relay.conf", "token = good-secret\nlisten = 127.0.0.1:0\n")
    relay, url = relay_with(culvert, conf)
    write(tmp_path / "relay.conf", "token = other\nallow-ports = 10-2\n")
    relay.p.send_signal(signal.SIGHUP)
    m = relay.wait_line(r"configuration reload refused, keeping the running one: (.*)", stream="err")
    assert "relay.conf:2: --allow-ports wants LO-HI" in m.group(1)
    assert refused(culvert, url, "other")
    a = culvert.agent(url, "ok", extra=["--token", "good-secret"])  # still the old key
    assert a.alive()
    # Removing every credential is refused too: the relay never silently becomes anonymous.
    write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\n")
    relay.p.send_signal(signal.SIGHUP)
    m = relay.wait_line(r"configuration reload refused, keeping the running one: (authentication.*)",
                        stream="err")
    assert relay.alive()


def test_command_line_wins_over_file(culvert, tmp_path):
    conf = write(tmp_path / "relay.conf", "[relay]\ntoken = from-file\nlisten = 127.0.0.1:0\n")
    relay, url = relay_with(culvert, conf, extra=["--token", "from-flag"])
    assert refused(culvert, url, "from-file")
    culvert.agent(url, "ok", extra=["--token", "from-flag"])


def test_bad_files_refused_at_start_with_line_and_reason(culvert, tmp_path):
    cases = [
        ("listen = 127.0.0.1:0\nbogus = 1\n", "relay.conf:2: unknown key 'bogus'"),
        ("token = x\nthis is not ini\n", "relay.conf:2: syntax error"),
        ("[agent]\ntoken = x\n", "unknown section [agent]"),
        ("allow-anonymous = maybe\n", "relay.conf:1: 'allow-anonymous' wants true or false"),
        ("token = x\nconn-rate = -4\n", "relay.conf:2: --conn-rate wants"),
        ("config = other.conf\n", "unknown key 'config'"),
    ]
    for text, want in cases:
        conf = write(tmp_path / "relay.conf", text)
        rc, out, err = culvert.run(["relay", "--config", conf])
        assert rc == 2 and want in err, (text, err)
    rc, out, err = culvert.run(["relay", "--config", str(tmp_path / "missing.conf")])
    assert rc == 2 and "missing.conf: cannot read" in err


def test_boolean_keys(culvert, tmp_path):
    conf = write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\nallow-anonymous = yes\n")
    relay, url = relay_with(culvert, conf)
    culvert.agent(url, "anon")  # no token needed
    conf = write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\nallow-anonymous = off\n")
    rc, out, err = culvert.run(["relay", "--config", conf])
    assert rc == 2 and "authentication is required" in err


# ---- the agent -------------------------------------------------------------------------------------------


def test_agent_reload_adds_and_releases_exposures_live_streams_survive(culvert, tcp_service, tmp_path):
    from conftest import echo_handler
    svc_a = tcp_service(echo_handler)
    svc_b = tcp_service(echo_handler)
    relay = culvert.relay(extra=["--token", "agent-secret"])
    conf = write(tmp_path / "agent.conf", "[agent]\nrunner-url = %s\ncontainer-id = svc\ntoken = agent-secret\n"
                 "expose = tcp:%d\n" % (relay.url, svc_a.port))
    agent = culvert.procs.start([culvert.bin, "agent", "--config", conf, "--reconnect-delay", "1"], name="agent")
    pub_a = exposed_port(agent, svc_a.port)
    live = socket.create_connection(("127.0.0.1", pub_a), timeout=5)
    live.sendall(b"one")
    assert recv_exact(live, 3) == b"one"

    # Add B, keep A.
    write(tmp_path / "agent.conf", "runner-url = %s\ncontainer-id = svc\ntoken = agent-secret\n"
          "expose = tcp:%d\nexpose = tcp:%d\n" % (relay.url, svc_a.port, svc_b.port))
    agent.p.send_signal(signal.SIGHUP)
    agent.wait_line("configuration reloaded: 2 exposures")
    pub_b = exposed_port(agent, svc_b.port)
    s = socket.create_connection(("127.0.0.1", pub_b), timeout=5)
    s.sendall(b"bee")
    assert recv_exact(s, 3) == b"bee"
    s.close()
    assert agent.count(r"exposed tcp 127\.0\.0\.1:%d" % svc_a.port) == 1  # A was not re-requested

    # Drop A: its public port closes, the visitor already connected through it keeps its stream.
    write(tmp_path / "agent.conf", "runner-url = %s\ncontainer-id = svc\ntoken = agent-secret\n"
          "expose = tcp:%d\n" % (relay.url, svc_b.port))
    agent.p.send_signal(signal.SIGHUP)
    agent.wait_line("configuration reloaded: 1 exposure,")
    relay.proc.wait_line("releases tcp port %d" % pub_a, stream="err")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", pub_a), timeout=1).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            break
    else:
        raise AssertionError("the released public port still accepts connections")
    live.sendall(b"still here")
    assert recv_exact(live, 10) == b"still here"
    live.close()

    # A bad file changes nothing.
    write(tmp_path / "agent.conf", "runner-url = %s\ncontainer-id = svc\nexpose = sctp:1\n" % relay.url)
    agent.p.send_signal(signal.SIGHUP)
    m = agent.wait_line(r"configuration reload refused, keeping the running one: (.*)")
    assert "agent.conf:3:" in m.group(1) and "--expose" in m.group(1)
    s = socket.create_connection(("127.0.0.1", pub_b), timeout=5)
    s.sendall(b"ok")
    assert recv_exact(s, 2) == b"ok"


def test_agent_bad_config_at_start(culvert, tmp_path):
    conf = write(tmp_path / "agent.conf", "runner-url = ws://127.0.0.1:1\nreconnect-delay = soon\n")
    rc, out, err = culvert.run(["agent", "--config", conf, "-c", "x"])
    assert rc == 2 and "agent.conf:2: invalid value 'soon' for '--reconnect-delay" in err


def test_reload_then_expose_uses_no_freed_strings(culvert, tcp_echo, tmp_path):
    # public-bind comes from the file; after a reload the old file's strings are freed, and the
    # relay must not read them (ASan catches a use after free on the EXPOSE below).
    conf = write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\ntoken = t1\npublic-bind = 127.0.0.1\n")
    relay, url = relay_with(culvert, conf)
    write(tmp_path / "relay.conf", "listen = 127.0.0.1:0\ntoken = t2\npublic-bind = 127.0.0.1\n")
    relay.p.send_signal(signal.SIGHUP)
    relay.wait_line("configuration reloaded", stream="err")
    agent = culvert.agent(url, "svc", extra=["--token", "t2", "--expose", "tcp:%d" % tcp_echo.port])
    pub = exposed_port(agent, tcp_echo.port)
    s = socket.create_connection(("127.0.0.1", pub), timeout=5)
    s.sendall(b"ping")
    assert recv_exact(s, 4) == b"ping"
