"""Command-line contract: flags, env, exit codes, messages (spec §8; issue 2)."""

import os
import re
import time

import pytest

from conftest import TUNNEL_CLIENT, closed_port


def test_agent_help_exits_0(culvert):
    for args in (["agent", "--help"], ["agent", "-h"]):
        rc, out, err = culvert.run(args)
        assert rc == 0, (args, rc, err)
        assert "--runner-url" in out + err and "--container-id" in out + err


def test_tunnel_client_help_and_version_exit_0(culvert):
    for flag in ("--help", "--version", "-V"):
        p = culvert.procs.start([TUNNEL_CLIENT, flag], name="tunnel-client")
        rc = p.wait_exit(10)
        assert rc == 0, (flag, rc, p.dump())
        assert (p.stdout_text() + p.stderr_text()).strip(), "%s printed nothing" % flag


@pytest.mark.parametrize(
    "args",
    [
        ["agent", "-c", "x"],  # missing --runner-url
        ["agent", "-r", "ws://127.0.0.1:1"],  # missing --container-id
        ["agent", "-r", "ws://127.0.0.1:1", "-c", "x", "--reconnect-delay", "abc"],
        ["agent", "-r", "ws://127.0.0.1:1", "-c", "x", "--max-reconnect", "-"],
        ["agent", "-r", "ws://127.0.0.1:1", "-c", "x", "--reconnect-delay"],  # missing value
        ["agent", "-r", "ws://127.0.0.1:1", "-c", "x", "--no-such-flag"],
    ],
)
def test_agent_usage_errors_exit_2(culvert, args):
    rc, out, err = culvert.run(args)
    assert rc == 2, (args, rc, out, err)
    assert err.strip(), "usage error without a message on stderr"


def test_tunnel_client_missing_runner_url_exit_2(culvert):
    p = culvert.procs.start([TUNNEL_CLIENT, "--container-id", "x"], name="tunnel-client")
    rc = p.wait_exit(10)
    assert rc == 2, p.dump()
    assert "runner" in p.stderr_text().lower(), p.dump()


def test_env_bad_number_exit_2(culvert):
    rc, out, err = culvert.run(
        ["agent"], env={"RUNNER_URL": "ws://127.0.0.1:1", "CONTAINER_ID": "x", "RECONNECT_DELAY": "soon"}
    )
    assert rc == 2, (rc, out, err)


@pytest.mark.parametrize("exe", ["agent", "tunnel-client"])
def test_max_reconnect_gives_up_exit_1(culvert, exe):
    port = closed_port()
    args = ["-r", "ws://127.0.0.1:%d" % port, "-c", "x", "--max-reconnect", "2", "--reconnect-delay", "1"]
    argv = [culvert.bin, "agent"] + args if exe == "agent" else [TUNNEL_CLIENT] + args
    t0 = time.monotonic()
    p = culvert.procs.start(argv, name=exe)
    rc = p.wait_exit(15)
    took = time.monotonic() - t0
    assert rc == 1, p.dump()
    assert "Error: Max reconnection attempts exceeded" in p.stderr_text(), p.dump()
    assert took < 10, "took %.1fs" % took


def test_max_reconnect_from_env_exit_1(culvert):
    port = closed_port()
    rc, out, err = culvert.run(
        ["agent"],
        env={
            "RUNNER_URL": "ws://127.0.0.1:%d" % port,
            "CONTAINER_ID": "x",
            "MAX_RECONNECT": "1",
            "RECONNECT_DELAY": "1",
        },
    )
    assert rc == 1, (rc, out, err)
    assert "Error: Max reconnection attempts exceeded" in err


@pytest.mark.parametrize(
    "args",
    [
        ["relay", "--listen"],
        ["relay", "--listen", "not-an-address"],
        ["relay", "--bogus"],
        ["relay", "--ping-interval", "x"],
        ["relay", "--allow-anonymous", "--conn-buffer", "8X"],
        ["relay", "--allow-anonymous", "--conn-buffer", "2G"],
        ["relay", "--allow-anonymous", "--conn-buffer", "1K"],
        ["forward"],
        ["forward", "--relay", "ws://127.0.0.1:1", "c1"],  # missing REMOTE_PORT
        ["forward", "--relay", "ws://127.0.0.1:1", "c1", "notaport"],
        ["forward", "--relay", "ws://127.0.0.1:1", "c1", "70000"],
        ["forward", "--relay", "ws://127.0.0.1:1", "c1", "80", "-l"],
        ["no-such-command"],
    ],
)
def test_bad_flags_exit_2_with_message(culvert, args):
    rc, out, err = culvert.run(args)
    assert rc == 2, (args, rc, out, err)
    assert err.strip(), "no message for %r" % args


def test_forward_bad_proto_rejected(culvert):
    rc, out, err = culvert.run(["forward", "--relay", "ws://127.0.0.1:1", "c1", "80", "-l", "0", "-p", "sctp"])
    assert rc in (1, 2), (rc, out, err)
    assert "sctp" in err or "proto" in err.lower(), err


def test_relay_port_in_use_is_clear_error(culvert):
    r = culvert.relay()
    rc, out, err = culvert.run(["relay", "--allow-anonymous", "--listen", "127.0.0.1:%d" % r.port])
    assert rc != 0
    assert (out + err).strip(), "no message when the port is in use"
    assert r.proc.alive()


def test_forward_unreachable_relay_clear_error(culvert):
    port = closed_port()
    p = culvert.forward("ws://127.0.0.1:%d" % port, "c1", 80, wait=False)
    try:
        rc = p.wait_exit(15)
    except AssertionError:
        # The forwarder may connect lazily: poke its listener, then it must give up.
        m = p.wait_line(r"forwarding (tcp|udp) (\S+):(\d+)", timeout=1)
        import socket

        s = socket.create_connection((m.group(2), int(m.group(3))), timeout=5)
        s.close()
        rc = p.wait_exit(15)
    assert rc != 0, p.dump()
    msg = (p.stdout_text() + p.stderr_text()).lower()
    assert re.search(r"relay|connect|refused|unreachable", msg), p.dump()


def test_agent_never_logs_a_path_token(culvert):
    """A /t/TOKEN prefix carries a credential: the agent's log lines mask it."""
    port = closed_port()
    rc, out, err = culvert.run(["agent", "-r", "ws://127.0.0.1:%d/t/sup3rsecret" % port, "-c", "x",
                                "--max-reconnect", "1", "--reconnect-delay", "1"])
    assert rc == 1, (rc, out, err)
    assert "/t/***/ws/tunnel/x" in out, out
    assert "sup3rsecret" not in out + err, out + err
