"""`culvert gateway --worker ...` end to end with the scriptable fake worker tests/tools/gw_worker.py (spec §13).

Success paths (task, event, returnPayload, typed and untyped errors), every row of the §13.4 failure table (the
exact status/code/message, then the pool keeps serving; restarts are seen as a new worker pid), deadlines with
the cancel line the worker receives, client disconnects, the queue, max in-flight, request and response streams
with flow control, the legacy runner-ipc-v1/v2 modes and the graceful SIGTERM drain.

The §13.4 timings (10 s hello, 5 s silence, ...) are shortened through CULVERT_GW_POOL_TUNING so that the suite
runs in seconds (the queue size, in-flight cap and recycling are flags: --queue-max, --max-inflight,
--max-requests). Every gateway is stopped with SIGTERM at teardown and must exit 0 (the ASan leak check), and no
worker process may outlive it."""

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from conftest import CULVERT_BIN, REPO, require_binary

WORKER = str(REPO / "tests" / "tools" / "gw_worker.py")
PY = "/usr/bin/python3"
TOKEN = "secret"
SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"
MiB = 1 << 20

TASKS = [
    "app.tasks.add", "app.tasks.raw", "app.tasks.badutf8", "app.tasks.echo", "app.tasks.whoami", "app.tasks.slow", "app.tasks.never",
    "app.tasks.hang", "app.tasks.late", "app.tasks.fail", "app.tasks.throw", "app.tasks.notfound",
    "app.tasks.garbage", "app.tasks.nonobject", "app.tasks.worker0", "app.tasks.bad", "app.tasks.die",
    "app.tasks.closeout", "app.tasks.closein", "app.tasks.spam", "app.tasks.huge", "app.tasks.stream", "app.tasks.streamfail", "app.tasks.big",
    "app.tasks.duplex", "app.tasks.upload", "app.tasks.files", "app.tasks.missing", "app.tasks.invalid",
    "app.tasks.unauth",
]
EVENTS = ["app.events.notify", "app.events.par", "app.events.fail"]
FAST = "hello=1500,silence=1000,kill=500,backoff=50"


class Gateway:
    def __init__(self, proc, port, log, tmp):
        self.proc = proc
        self.port = port
        self.log = log
        self.tmp = tmp

    def events(self, kind=None):
        """The worker log: one dict per line received or event (spawn, task, shutdown, ...)."""
        out = []
        if os.path.exists(self.log):
            with open(self.log) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if kind is None or e.get("ev") == kind:
                        out.append(e)
        return out

    def received(self, typ):
        return [e["msg"] for e in self.events("rx") if e["msg"].get("type") == typ]

    def spawned_pids(self):
        return [e["pid"] for e in self.events("spawn")]

    def wait_for(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s\n%s" % (what, self.proc.dump()))

    def call(self, path, body=b"", headers=None, timeout=15):
        return request(self.port, path, body, headers, timeout)

    def task(self, tid, inp=None, timeout=15, headers=None):
        body = b"" if inp is None else json.dumps({"input": inp}).encode()
        return self.call("/__runner/task/" + tid, body, headers, timeout)

    def event(self, eid, payload=None, return_payload=False):
        b = {"payload": payload}
        if return_payload:
            b["returnPayload"] = True
        return self.call("/__runner/event/" + eid, json.dumps(b).encode())

    def pid(self):
        st, _, body = self.task("app.tasks.whoami")
        assert st == 200, body
        return json.loads(body)["result"]["pid"]


def request(port, path, body=b"", headers=None, timeout=15, method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"x-runner-token": TOKEN, "content-type": "application/json"}
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}  # None: leave the header out
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, data


def envelope(body):
    return json.loads(body)


@pytest.fixture
def gw(procs, tmp_path):
    """Factory: starts `culvert gateway` with the fake worker. At teardown every gateway still running gets
    SIGTERM, must exit 0, and must leave no worker behind."""
    started = []

    def start(workers=1, env=None, extra=(), tuning=FAST, protocol=None, tasks=TASKS, events=EVENTS):
        require_binary()
        log = str(tmp_path / ("worker%d.log" % len(started)))
        e = {"GW_WORKER_LOG": log, "GW_WORKER_ONCE": str(tmp_path / ("once%d" % len(started)))}
        if tuning:
            e["CULVERT_GW_POOL_TUNING"] = tuning
        e.update(env or {})
        args = [CULVERT_BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN,
                "--worker", "%s %s" % (PY, WORKER), "--workers", str(workers)]
        if protocol:
            args += ["--worker-protocol", protocol]
        for t in tasks:
            args += ["--allow-task", t]
        for ev in events:
            args += ["--allow-event", ev]
        args += list(extra)
        p = procs.start(args, env=e, name="gateway")
        m = p.wait_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout=10)
        g = Gateway(p, int(m.group(1)), log, tmp_path)
        started.append(g)
        return g

    yield start
    for g in started:
        if g.proc.alive():
            g.proc.p.send_signal(signal.SIGTERM)
            rc = g.proc.wait_exit(20)
            assert rc == 0, "gateway exited %s after SIGTERM\n%s" % (rc, g.proc.dump())
        time.sleep(0.2)
        for pid in set(g.spawned_pids()):
            assert not pid_alive(pid), "worker %d outlived the gateway" % pid


def pid_alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except (FileNotFoundError, ProcessLookupError):  # gone, or gone while being read
        return False
    return True


def ready(g, n=1):
    """Waits until n workers said hello (a first call then needs no queueing)."""
    g.wait_for(lambda: g.proc.count(r"gateway: worker \d+ ready", stream="err") >= n, what="%d ready workers" % n)


# --------------------------------------------------------------------------------------------------------
# Success paths
# --------------------------------------------------------------------------------------------------------


def test_task_event_success(gw):
    g = gw()
    st, h, body = g.task("app.tasks.add", {"a": 1, "b": 2})
    assert st == 200 and body == b'{"ok":true,"result":3}'
    assert h["content-type"].startswith("application/json")
    assert h.get("x-runner-request-id")
    # The result's bytes reach the client unchanged (no number rewriting).
    st, _, body = g.task("app.tasks.raw")
    assert st == 200
    assert body == b'{"ok":true,"result":{"n":1.50e+3,"big":12345678901234567890,"s":"\\u00e9 x"}}'
    # Invalid UTF-8 from a worker becomes U+FFFD, as Node would decode it.
    st, _, body = g.task("app.tasks.badutf8")
    assert st == 200 and body == b'{"ok":true,"result":"a\xef\xbf\xbdb"}'
    # Context, rid and deadline reach the worker.
    st, h, body = g.task("app.tasks.whoami", {"x": 1}, headers={"x-runner-request-id": "rid-123"})
    r = envelope(body)["result"]
    assert r["rid"] == "rid-123" and r["mode"] == "json" and r["hasInput"]
    assert r["context"]["requestId"] == "rid-123" and r["context"]["method"] == "POST"
    assert "x-runner-token" not in r["context"]["headers"]
    assert 0 < r["deadlineMs"] <= 30000
    # Input bytes reach the worker as sent (compact).
    st, _, body = g.call("/__runner/task/app.tasks.echo", b'{"input": {"v": [1, 2.50, "a b"]}}')
    assert st == 200 and envelope(body)["result"] == {"v": [1, 2.5, "a b"]}
    tasks = g.received("task")
    echo = [t for t in tasks if t["taskId"] == "app.tasks.echo"][0]
    assert echo["input"] == {"v": [1, 2.5, "a b"]}
    # Events.
    st, _, body = g.event("app.events.notify", {"msg": "hi"})
    assert st == 200 and body == b'{"ok":true}'
    st, _, body = g.event("app.events.notify", {"msg": "hi"}, return_payload=True)
    assert st == 200 and envelope(body) == {"ok": True, "result": {"msg": "hi"}}
    ev = g.received("event")
    assert ev[-1]["returnPayload"] is True and ev[-1]["payload"] == {"msg": "hi"}
    # The hello's parallelEvents answer step 9 in the gateway.
    st, _, body = g.event("app.events.par", {"msg": "hi"}, return_payload=True)
    assert st == 400 and envelope(body)["error"]["code"] == "PARALLEL_EVENT_RETURN_UNSUPPORTED"
    assert len([e for e in g.received("event") if e["eventId"] == "app.events.par"]) == 0


def test_errors_sanitised(gw):
    g = gw()
    st, _, body = g.task("app.tasks.fail")
    assert st == 409
    assert envelope(body) == {"ok": False, "error": {"message": "conflict here", "code": "INTERNAL_ERROR",
                                                     "id": "app.errors.AppError", "data": {"x": 1}, "httpCode": 409}}
    st, _, body = g.task("app.tasks.throw")
    assert st == 500
    assert envelope(body) == {"ok": False, "error": {"message": "Internal Error", "code": "INTERNAL_ERROR"}}
    assert b"secret database password" not in body
    st, _, body = g.event("app.events.fail", {})
    assert st == 500 and envelope(body)["error"] == {"message": "Internal Error", "code": "INTERNAL_ERROR"}


def test_hello_lists_drive_not_found(gw):
    g = gw()
    ready(g)
    # Allow-listed, but the hello does not list it: the gateway answers 404 itself.
    st, _, body = g.task("app.tasks.missing")
    assert st == 404
    assert envelope(body)["error"] == {"message": "Task app.tasks.missing not found", "code": "NOT_FOUND"}
    assert not [t for t in g.received("task") if t["taskId"] == "app.tasks.missing"]


def test_hello_without_lists_relays_not_found(gw):
    g = gw(env={"GW_WORKER_LISTS": "0"})
    ready(g)
    st, _, body = g.task("app.tasks.missing")
    assert st == 404
    assert envelope(body)["error"] == {"message": "Task app.tasks.missing not found", "code": "NOT_FOUND"}
    assert [t for t in g.received("task") if t["taskId"] == "app.tasks.missing"]


# --------------------------------------------------------------------------------------------------------
# The §13.4 failure table
# --------------------------------------------------------------------------------------------------------


def test_no_hello_restarts(gw):
    # The first worker never says hello: killed after the hello timeout (1.5 s here), the next one serves the
    # call that waited in the queue.
    g = gw(env={"GW_WORKER_MODE": "nohello"}, extra=["--queue-timeout", "8000"])
    t0 = time.monotonic()
    st, _, body = g.task("app.tasks.add", {"a": 2, "b": 2})
    assert st == 200 and envelope(body)["result"] == 4
    assert time.monotonic() - t0 >= 1.3
    pids = g.spawned_pids()
    assert len(pids) == 2 and pids[0] != pids[1]
    assert not pid_alive(pids[0])
    g.proc.wait_line(r"worker 0 \(pid %d\) sent no hello in time; restarting" % pids[0], stream="err")


def test_invalid_hello_restarts(gw):
    g = gw(env={"GW_WORKER_MODE": "badhello"}, extra=["--queue-timeout", "8000"])
    st, _, body = g.task("app.tasks.add", {"a": 2, "b": 2})
    assert st == 200
    g.proc.wait_line(r"worker 0 sent an invalid hello", stream="err")
    assert len(g.spawned_pids()) == 2


def test_lines_that_are_not_objects_are_dropped(gw):
    g = gw()
    pid = g.pid()
    for tid in ("app.tasks.garbage", "app.tasks.nonobject", "app.tasks.worker0"):
        st, _, body = g.task(tid)
        assert st == 200 and body == b'{"ok":true,"result":1}', tid
    g.proc.wait_line(r"worker 0: dropped a line that is not a JSON object \(not a JSON object\): this is not json",
                     stream="err")
    g.proc.wait_line(r"worker 0: dropped a line that is not a JSON object .*: \[1,2,3\]", stream="err")
    g.proc.wait_line(r"worker 0 says: \{\"id\":0", stream="err")
    assert g.pid() == pid


@pytest.mark.parametrize("variant", ["ok", "noerror", "nomessage", "code", "nocode", "stream"])
def test_bad_shape_gives_502_and_worker_stays(gw, variant):
    g = gw()
    pid = g.pid()
    st, _, body = g.task("app.tasks.bad", {"v": variant})
    assert st == 502
    assert envelope(body) == {"ok": False, "error": {"message": "Invalid worker reply", "code": "WORKER_BAD_REPLY"}}
    assert g.pid() == pid


@pytest.mark.parametrize("tid", ["app.tasks.die", "app.tasks.closeout", "app.tasks.huge"])
def test_worker_death_gives_502_and_respawn(gw, tid):
    g = gw()
    pid = g.pid()
    st, _, body = g.task(tid)
    assert st == 502
    assert envelope(body) == {"ok": False, "error": {"message": "Worker exited", "code": "WORKER_EXITED"}}
    assert not pid_alive(pid) or g.wait_for(lambda: not pid_alive(pid), 5, "old worker gone")
    assert g.pid() != pid  # a new worker serves (never retried: the failed call stays failed)
    assert len([t for t in g.received("task") if t["taskId"] == tid]) == 1


def test_epipe_fails_in_flight_calls_and_respawns(gw):
    # The worker closes its stdin and hangs: the next line written to it gets EPIPE, which fails every call in
    # flight on it with 502 WORKER_EXITED.
    g = gw()
    pid = g.pid()
    res = []
    t = threading.Thread(target=lambda: res.append(g.task("app.tasks.closein")))
    t.start()
    g.wait_for(lambda: g.events("closein"), what="worker closed its stdin")
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1})
    t.join(10)
    assert st == 502 and envelope(body)["error"]["code"] == "WORKER_EXITED"
    assert res and res[0][0] == 502 and envelope(res[0][2])["error"]["code"] == "WORKER_EXITED"
    g.proc.wait_line(r"worker 0 \(pid %d\) closed its stdin \(EPIPE\); restarting" % pid, stream="err")
    assert g.pid() != pid


def test_unsent_over_16_mib_restarts(gw):
    # The worker blocks and stops reading: inputs pile up in its stdin queue, and more than 16 MiB unsent to a
    # worker restarts it, failing what it had in flight.
    g = gw(extra=["--max-body", str(40 * MiB)])
    pid = g.pid()
    res = []
    t = threading.Thread(target=lambda: res.append(g.task("app.tasks.hang")))
    t.start()
    g.wait_for(lambda: g.events("hang"), what="worker blocked")
    outs = parallel([lambda: g.task("app.tasks.echo", "x" * (6 * MiB), timeout=30) for _ in range(3)])
    t.join(15)
    assert [o[0] for o in outs] == [502, 502, 502], outs
    assert all(envelope(o[2])["error"]["code"] == "WORKER_EXITED" for o in outs)
    assert res and res[0][0] == 502
    g.proc.wait_line(r"worker 0 \(pid %d\) has more than 16 MiB unread on its stdin; restarting" % pid,
                     stream="err")
    assert g.pid() != pid


def test_input_over_the_line_limit_is_413_and_worker_stays(gw):
    g = gw(extra=["--max-body", str(40 * MiB)])
    pid = g.pid()
    st, _, body = g.task("app.tasks.echo", "x" * (17 * MiB), timeout=30)
    assert st == 413
    assert envelope(body)["error"] == {"message": "Payload too large", "code": "PAYLOAD_TOO_LARGE"}
    assert g.pid() == pid
    assert not [t for t in g.received("task") if t["taskId"] == "app.tasks.echo"]


def test_deadline_cancel_and_worker_stays_when_alive(gw):
    g = gw(extra=["--deadline", "1000"])
    pid = g.pid()
    t0 = time.monotonic()
    st, _, body = g.task("app.tasks.never")
    assert st == 504
    assert envelope(body)["error"] == {"message": "Task timed out", "code": "TASK_TIMEOUT"}
    assert 0.9 <= time.monotonic() - t0 < 4
    task = [t for t in g.received("task") if t["taskId"] == "app.tasks.never"][0]
    assert task["deadlineMs"] <= 1000
    g.wait_for(lambda: [c for c in g.received("cancel") if c["id"] == task["id"] and c["reason"] == "timeout"],
               what="cancel line with reason timeout")
    time.sleep(1.3)  # past the (shortened) silence window: the worker answered the ping
    assert g.pid() == pid


def test_late_reply_after_cancel_is_dropped(gw):
    g = gw(extra=["--deadline", "1000"])
    pid = g.pid()
    st, _, body = g.task("app.tasks.late")
    assert st == 504
    g.wait_for(lambda: g.received("cancel"), what="cancel")
    time.sleep(0.3)
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1})
    assert st == 200 and envelope(body)["result"] == 2
    assert g.pid() == pid


def test_deadline_silent_worker_restarted(gw):
    # The task blocks the whole worker: it answers neither the cancel nor the ping; restarted after the silence
    # window (1 s here; 5 s by default).
    g = gw(extra=["--deadline", "1000"])
    pid = g.pid()
    st, _, body = g.task("app.tasks.hang")
    assert st == 504
    g.proc.wait_line(r"worker 0 \(pid %d\) stayed silent after a timeout; restarting" % pid, stream="err",
                     timeout=5)
    g.wait_for(lambda: not pid_alive(pid), 5, "hung worker killed")
    assert g.pid() != pid


def test_three_consecutive_timeouts_restart(gw):
    g = gw(extra=["--deadline", "1000"], tuning="silence=20000,kill=500,backoff=50")
    pid = g.pid()
    for _ in range(3):
        st, _, _ = g.task("app.tasks.never")
        assert st == 504
    g.proc.wait_line(r"timed out 3 times in a row; restarting", stream="err", timeout=5)
    assert g.pid() != pid


def test_unanswered_ping_restarts(gw):
    g = gw(env={"GW_WORKER_MODE": "noping"}, tuning="ping=300,pong=300,kill=500,backoff=50")
    ready(g)
    g.proc.wait_line(r"did not answer a ping; restarting", stream="err", timeout=5)
    g.wait_for(lambda: len(g.spawned_pids()) >= 2, what="respawn")
    assert g.received("ping")
    # The respawned worker answers its pings and stays.
    pid = g.pid()
    time.sleep(1.0)
    assert g.pid() == pid


def test_client_disconnect_sends_cancel(gw):
    g = gw()
    ready(g)
    s = socket.create_connection(("127.0.0.1", g.port))
    body = b'{"input":{}}'
    s.sendall(b"POST /__runner/task/app.tasks.never HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\n"
              b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    g.wait_for(lambda: [t for t in g.received("task") if t["taskId"] == "app.tasks.never"], what="task sent")
    s.close()
    task = [t for t in g.received("task") if t["taskId"] == "app.tasks.never"][0]
    g.wait_for(lambda: [c for c in g.received("cancel") if c["id"] == task["id"] and c["reason"] == "client-closed"],
               what="cancel line with reason client-closed")
    st, _, _ = g.task("app.tasks.add", {"a": 1, "b": 1})
    assert st == 200


def test_spawn_failure_backs_off_and_queue_times_out(gw):
    # Every worker exits at start: the pool respawns with a doubling backoff and calls get 503 after the queue
    # timeout.
    g = gw(env={"GW_WORKER_MODE": "exitstart", "GW_WORKER_ONCE": ""}, extra=["--queue-timeout", "700"],
           tuning="hello=1500,kill=500,backoff=100")
    t0 = time.monotonic()
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1})
    assert st == 503
    assert envelope(body)["error"] == {"message": "No worker available", "code": "WORKER_UNAVAILABLE"}
    assert 0.6 <= time.monotonic() - t0 < 3
    time.sleep(1.5)
    n = len(g.spawned_pids())
    # 100, 200, 400, 800 ms ... : a handful of spawns in ~2.2 s, not hundreds.
    assert 2 <= n <= 7, n


def test_stderr_logged_by_line_tagged_and_rate_limited(gw):
    g = gw()
    ready(g)
    st, _, body = g.task("app.tasks.spam", {"lines": 500})
    assert st == 200
    g.proc.wait_line(r"worker 0: spam line 0$", stream="err")
    g.proc.wait_line(r"worker 0: x{4096} \[\.\.\.\]$", stream="err")  # long lines are cut
    assert g.proc.count(r"worker 0: x+$", stream="err") == 0  # ... and their rest dropped
    time.sleep(1.2)
    st, _, body = g.task("app.tasks.spam", {"lines": 1})  # the next window reports the drops
    g.proc.wait_line(r"worker 0: \d+ log lines dropped \(rate limit\)", stream="err")
    logged = g.proc.count(r"worker 0: spam line", stream="err")
    assert 90 <= logged <= 210, logged


# --------------------------------------------------------------------------------------------------------
# Queue and max in-flight
# --------------------------------------------------------------------------------------------------------


def parallel(fns):
    out = [None] * len(fns)

    def run(i, fn):
        try:
            out[i] = fn()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out[i] = e

    ts = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return out


def test_max_in_flight_respected(gw):
    g = gw(workers=1, env={"GW_WORKER_MAX_INFLIGHT": "2"})
    ready(g)
    res = parallel([lambda: g.task("app.tasks.slow", {"ms": 300}) for _ in range(6)])
    assert all(r[0] == 200 and envelope(r[2])["result"] == "slept" for r in res), res
    slow = [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"]
    assert len(slow) == 6
    assert max(e["inflight"] for e in slow) == 2


def test_max_inflight_flag_caps_the_hello(gw):
    # The worker offers 64; --max-inflight 2 caps it on the gateway side.
    g = gw(workers=1, extra=["--max-inflight", "2"])
    g.proc.wait_line(r"worker 0 ready \(pid \d+, maxInFlight 2,", stream="err", timeout=10)
    res = parallel([lambda: g.task("app.tasks.slow", {"ms": 300}) for _ in range(6)])
    assert all(r[0] == 200 and envelope(r[2])["result"] == "slept" for r in res), res
    slow = [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"]
    assert len(slow) == 6
    assert max(e["inflight"] for e in slow) == 2


def test_max_inflight_flag_legacy(gw):
    # No hello to cap: the legacy default (64) is capped instead.
    g = gw(workers=1, protocol="runner-ipc-v1", extra=["--max-inflight", "1"])
    res = parallel([lambda: g.task("app.tasks.slow", {"ms": 200}) for _ in range(3)])
    assert all(r[0] == 200 for r in res), res
    slow = [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"]
    assert len(slow) == 3 and max(e["inflight"] for e in slow) == 1


def test_least_loaded_dispatch(gw):
    g = gw(workers=2)
    ready(g, 2)
    res = parallel([lambda: g.task("app.tasks.slow", {"ms": 2000}) for _ in range(4)])
    assert all(r[0] == 200 for r in res)
    by_index = {}
    for e in g.events("task"):
        if e["taskId"] == "app.tasks.slow":
            by_index[e["index"]] = by_index.get(e["index"], 0) + 1
    assert by_index == {"0": 2, "1": 2}, by_index


def test_queue_full_503_at_once(gw):
    g = gw(workers=1, env={"GW_WORKER_MAX_INFLIGHT": "1"}, extra=["--queue-timeout", "10000", "--queue-max", "2"])
    ready(g)
    holders = []
    for _ in range(3):  # one in flight, two queued
        t = threading.Thread(target=lambda: holders.append(g.task("app.tasks.slow", {"ms": 1500})))
        t.start()
    g.wait_for(lambda: [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"], what="first call")
    time.sleep(0.3)
    t0 = time.monotonic()
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1})
    assert st == 503 and envelope(body)["error"]["code"] == "WORKER_UNAVAILABLE"
    assert time.monotonic() - t0 < 0.5
    g.wait_for(lambda: len(holders) == 3, 15, "queued calls done")
    assert all(h[0] == 200 for h in holders), holders


def test_queue_wait_expires_503(gw):
    g = gw(workers=1, env={"GW_WORKER_MAX_INFLIGHT": "1"}, extra=["--queue-timeout", "600"])
    ready(g)
    holder = []
    t = threading.Thread(target=lambda: holder.append(g.task("app.tasks.slow", {"ms": 2500})))
    t.start()
    g.wait_for(lambda: [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"], what="first call")
    t0 = time.monotonic()
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1})
    waited = time.monotonic() - t0
    assert st == 503
    assert envelope(body)["error"] == {"message": "No worker available", "code": "WORKER_UNAVAILABLE"}
    assert 0.5 <= waited < 2.0, waited
    t.join(10)
    assert holder[0][0] == 200
    # The expired call never reached the worker.
    assert not [e for e in g.events("task") if e["taskId"] == "app.tasks.add"]


# --------------------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------------------

OCTET = {"content-type": "application/octet-stream"}


def test_octet_upload(gw):
    g = gw(env={"GW_WORKER_WINDOW": "65536"})
    ready(g)
    data = os.urandom(3 * MiB + 123)
    st, _, body = g.call("/__runner/task/app.tasks.upload", data, OCTET)
    assert st == 200, body
    r = envelope(body)["result"]
    assert r["bytes"] == len(data) and r["sha256"] == hashlib.sha256(data).hexdigest()
    task = [t for t in g.received("task") if t["taskId"] == "app.tasks.upload"][0]
    assert task["mode"] == "octet" and "input" not in task


def test_streamed_response(gw):
    g = gw()
    ready(g)
    st, h, body = g.call("/__runner/task/app.tasks.stream", b"", OCTET)
    assert st == 201
    assert h["content-type"] == "text/csv"
    assert h["x-custom"] == "yes" and h["x-num"] == "7"
    assert "set-cookie" not in h
    assert h.get("transfer-encoding") == "chunked"
    assert body == b"000001111122222"


def test_streamed_response_truncated_on_error(gw):
    g = gw()
    ready(g)
    c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    c.request("POST", "/__runner/task/app.tasks.streamfail", b"", {"x-runner-token": TOKEN, **OCTET})
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert ei.value.partial == b"partial"


def test_duplex_echo(gw):
    g = gw()
    ready(g)
    data = os.urandom(512 * 1024)
    st, _, body = g.call("/__runner/task/app.tasks.duplex", data, OCTET)
    assert st == 200 and body == data


@pytest.mark.timeout_s(90)
def test_big_stream_flow_control(gw):
    # 24 MiB streamed to a client that stops reading: the worker is held by the window (acks come only once bytes
    # reach the socket), so the gateway holds about a window plus its socket queue, not the stream. (Slow-ish:
    # the Python worker moves a few MB/s on a loaded machine.)
    g = gw(env={"GW_WORKER_WINDOW": "262144"})
    ready(g)
    total = 24 * MiB
    s = socket.create_connection(("127.0.0.1", g.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"POST /__runner/task/app.tasks.big HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\nx-big-bytes: %d\r\n"
              b"content-type: application/octet-stream\r\ncontent-length: 0\r\n\r\n" % total)
    first = s.recv(65536)
    assert b" 200 " in first.split(b"\r\n")[0]
    base = g.proc.rss_kib()

    # The client reads nothing more: the worker must come to a stop, held by its window, long before the end.
    def parked():
        sent = [e["sent"] for e in g.events("big")]
        if sent and len(sent) == parked.n and sent[-1] == parked.last:
            return sent[-1]
        parked.n, parked.last = len(sent), sent[-1] if sent else None
        time.sleep(0.7)
        return None

    parked.n, parked.last = -1, None
    sent = g.wait_for(parked, 30, "the worker to stop sending")
    assert sent < 10 * MiB, sent
    stalled = g.proc.rss_kib()
    if not SANITIZED:
        assert stalled - base < 8 * 1024, (base, stalled)
    s.settimeout(60)
    buf = first
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        if buf.endswith(b"\r\n0\r\n\r\n"):
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = 0
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        n += size
        rest = rest[size + 2:]
    s.close()
    assert n == total


@pytest.mark.timeout_s(60)
def test_upload_flow_control_bounded(gw):
    # A worker that acks slowly: the gateway holds at most its window plus the core's read-ahead, not the body.
    g = gw(env={"GW_WORKER_WINDOW": "131072", "GW_WORKER_ACK_DELAY_MS": "5"})
    ready(g)
    total = 24 * MiB
    data = b"u" * MiB
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"POST /__runner/task/app.tasks.upload HTTP/1.1\r\nHost: x\r\nx-runner-token: secret\r\n"
              b"content-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % total)
    base = g.proc.rss_kib()
    peak = base
    for _ in range(total // MiB):
        s.sendall(data)
        peak = max(peak, g.proc.rss_kib())
    s.settimeout(60)
    resp = b""
    while b"}}" not in resp:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    s.close()
    r = json.loads(resp.partition(b"\r\n\r\n")[2])
    assert r["result"]["bytes"] == total
    if not SANITIZED:
        assert peak - base < 8 * 1024, (base, peak)


def test_multipart_files(gw):
    g = gw()
    ready(g)
    manifest = json.dumps({"input": {"doc": {"$runnerFile": "File", "id": "f1", "meta": {"name": "a.txt"}},
                                     "n": 1}})
    content = os.urandom(200 * 1024)
    b = "----x9"
    body = (("--%s\r\nContent-Disposition: form-data; name=\"__manifest\"\r\n\r\n%s\r\n" % (b, manifest)).encode()
            + ("--%s\r\nContent-Disposition: form-data; name=\"file:f1\"; filename=\"a.txt\"\r\n"
               "Content-Type: text/plain\r\n\r\n" % b).encode() + content + ("\r\n--%s--\r\n" % b).encode())
    st, _, resp = g.call("/__runner/task/app.tasks.files", body, {"content-type": "multipart/form-data; boundary=" + b})
    assert st == 200, resp
    r = envelope(resp)["result"]
    assert r["files"]["f1"]["bytes"] == len(content)
    assert r["files"]["f1"]["meta"]["name"] == "a.txt"
    assert r["input"]["n"] == 1


@pytest.mark.timeout_s(120)
def test_multipart_files_before_manifest_spooled(gw, tmp_path):
    # Two file parts before the manifest (one within the 256 KiB memory budget, one spooled to a file past it)
    # and one after: a worker that acks slowly gets every byte, the replay held by the same flow control as live
    # parts (the gateway's peak memory does not grow with the early parts).
    spool = tmp_path / "spool"
    spool.mkdir()
    g = gw(env={"GW_WORKER_WINDOW": "131072", "GW_WORKER_ACK_DELAY_MS": "2"},
           extra=["--max-file-size", str(32 * MiB), "--spool-dir", str(spool)])
    ready(g)
    b = "----sp"
    small, big, late = os.urandom(200 * 1024), os.urandom(12 * MiB), os.urandom(300 * 1024)
    man = json.dumps({"input": {k: {"$runnerFile": "File", "id": k, "meta": {"name": k}}
                                for k in ("small", "big", "late")}})

    def part(fid, data):
        return (("--%s\r\nContent-Disposition: form-data; name=\"file:%s\"; filename=\"%s\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n") % (b, fid, fid)).encode() + data + b"\r\n"

    body = (part("small", small) + part("big", big)
            + ("--%s\r\nContent-Disposition: form-data; name=\"__manifest\"\r\n\r\n%s\r\n" % (b, man)).encode()
            + part("late", late) + ("--%s--\r\n" % b).encode())
    ct = {"content-type": "multipart/form-data; boundary=" + b}
    warm = (part("small", b"w") + ("--%s\r\nContent-Disposition: form-data; name=\"__manifest\"\r\n\r\n%s\r\n"
                                   % (b, json.dumps({"input": {"$runnerFile": "File", "id": "small"}}))).encode()
            + ("--%s--\r\n" % b).encode())
    st, _, resp = g.call("/__runner/task/app.tasks.files", warm, ct)
    assert st == 200, resp
    hwm0 = hwm(g.proc.pid)
    st, _, resp = g.call("/__runner/task/app.tasks.files", body, ct, timeout=90)
    assert st == 200, resp
    files = envelope(resp)["result"]["files"]
    for k, data in (("small", small), ("big", big), ("late", late)):
        assert (files[k]["bytes"], files[k]["sha256"]) == (len(data), hashlib.sha256(data).hexdigest()), k
    # The files open in the order their parts came (early ones replayed in arrival order).
    opened = [m["stream"] for m in g.received("file")]
    assert opened[-3:] == ["small", "big", "late"], opened
    grown = hwm(g.proc.pid) - hwm0
    print("spool: peak RSS grew by %d KiB for 12 MiB of early parts (pool)" % grown)
    if not SANITIZED:
        assert grown < 8 * 1024, "peak RSS grew by %d KiB for 12 MiB of early parts" % grown
    assert os.listdir(spool) == []


def hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_streams_need_the_feature(gw):
    g = gw(env={"GW_WORKER_FEATURES": "cancel"})
    ready(g)
    st, _, body = g.call("/__runner/task/app.tasks.upload", b"abc", OCTET)
    assert st == 415
    assert envelope(body)["error"] == {"message": "Streaming mode not supported by this backend",
                                       "code": "UNSUPPORTED_MODE"}


# --------------------------------------------------------------------------------------------------------
# Legacy modes
# --------------------------------------------------------------------------------------------------------


def test_legacy_v1(gw):
    g = gw(protocol="runner-ipc-v1", tuning="kill=500,backoff=50")
    st, _, body = g.task("app.tasks.add", {"a": 5, "b": 3})
    assert st == 200 and body == b'{"ok":true,"result":8}'
    t = g.received("task")[0]
    assert set(t) == {"type", "id", "taskId", "input"}
    st, _, body = g.task("app.tasks.notfound")
    assert st == 404 and envelope(body)["error"]["code"] == "NOT_FOUND"
    st, _, body = g.task("app.tasks.invalid")
    assert st == 400 and envelope(body)["error"] == {"message": "bad input", "code": "INVALID_REQUEST"}
    st, _, body = g.task("app.tasks.throw")
    assert st == 500 and envelope(body)["error"] == {"message": "Internal Error", "code": "INTERNAL_ERROR"}
    st, _, body = g.event("app.events.notify", {"m": 1})
    assert st == 200 and body == b'{"ok":true}'
    st, _, body = g.call("/__runner/task/app.tasks.upload", b"abc", OCTET)
    assert st == 415
    pid = g.pid()
    st, _, body = g.task("app.tasks.die")
    assert st == 502 and envelope(body)["error"]["code"] == "WORKER_EXITED"
    assert g.pid() != pid
    assert not g.received("ping")


def test_legacy_v2(gw):
    g = gw(protocol="runner-ipc-v2", tuning="kill=500,backoff=50", extra=["--deadline", "1000"])
    st, _, body = g.task("app.tasks.whoami")
    r = envelope(body)["result"]
    assert r["context"]["method"] == "POST" and r["rid"] is None
    st, _, body = g.task("app.tasks.unauth")
    assert st == 401 and envelope(body)["error"] == {"message": "nope", "code": "UNAUTHORIZED"}
    st, _, body = g.task("app.tasks.notfound")
    assert st == 404 and envelope(body)["error"]["code"] == "NOT_FOUND"
    st, _, body = g.task("app.tasks.never")
    assert st == 504
    assert not g.received("cancel")  # legacy workers have no cancel: the id is forgotten


# --------------------------------------------------------------------------------------------------------
# Shutdown and recycling
# --------------------------------------------------------------------------------------------------------


def test_sigterm_drains(gw):
    g = gw(workers=2)
    ready(g, 2)
    pids = set(g.spawned_pids())
    res = []
    t = threading.Thread(target=lambda: res.append(g.task("app.tasks.slow", {"ms": 1200})))
    t.start()
    g.wait_for(lambda: [e for e in g.events("task") if e["taskId"] == "app.tasks.slow"], what="call in flight")
    g.proc.p.send_signal(signal.SIGTERM)
    t.join(15)
    assert res and res[0][0] == 200 and envelope(res[0][2])["result"] == "slept"
    rc = g.proc.wait_exit(15)
    assert rc == 0, g.proc.dump()
    shut = g.events("shutdown")
    assert {e["pid"] for e in shut} == pids
    assert all(e["inflight"] == 0 for e in shut)
    for pid in pids:
        assert not pid_alive(pid)


def test_sigterm_kills_stubborn_workers(gw):
    g = gw(env={"GW_WORKER_IGNORE_SHUTDOWN": "1"})
    ready(g)
    pid = g.spawned_pids()[0]
    g.proc.p.send_signal(signal.SIGTERM)
    rc = g.proc.wait_exit(20)
    assert rc == 0, g.proc.dump()
    assert not pid_alive(pid)
    assert "ignored SIGTERM; killing it" in g.proc.stderr_text()


def test_recycling_after_max_requests(gw):
    g = gw(extra=["--max-requests", "3"])
    pids = [g.pid() for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] != pids[0]
    g.proc.wait_line(r"recycled after 3 requests", stream="err")
    assert not [l for l in g.proc.stderr_text().splitlines() if "restarting" in l]


# --------------------------------------------------------------------------------------------------------
# Delegated auth (§5.1, §13.4 "auth"): --auth-worker
# --------------------------------------------------------------------------------------------------------

AUTH_FEATURES = {"GW_WORKER_FEATURES": "cancel,streams,auth"}
UNAUTH = {"message": "Unauthorized", "code": "UNAUTHORIZED"}


def test_auth_worker_allows_and_denies(gw):
    g = gw(env=AUTH_FEATURES, extra=["--auth-worker"])
    ready(g)
    # a matching token never asks the worker
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 2})
    assert (st, envelope(body)["result"]) == (200, 3)
    assert g.received("auth") == []
    # no token: the worker admits; the body is read afterwards and the call runs
    st, h, body = g.task("app.tasks.add", {"a": 2, "b": 3}, headers={"x-runner-token": "wrong", "x-auth": "allow",
                                                                     "x-runner-request-id": "auth-1"})
    assert (st, envelope(body)["result"]) == (200, 5)
    assert h["x-runner-request-id"] == "auth-1"
    a = g.received("auth")
    assert len(a) == 1
    assert a[0]["rid"] == "auth-1"
    ctx = a[0]["context"]
    assert (ctx["method"], ctx["path"]) == ("POST", "/__runner/task/app.tasks.add")
    # the auth message carries the auth header; the task message does not
    assert ctx["headers"]["x-runner-token"] == "wrong" and ctx["headers"]["x-auth"] == "allow"
    task = [t for t in g.received("task") if t["rid"] == "auth-1"][0]
    assert "x-runner-token" not in task["context"]["headers"]
    # an empty body (it ends while auth runs) and discovery
    st, _, body = g.call("/__runner/task/app.tasks.whoami", b"", {"x-runner-token": "", "x-auth": "allow"})
    assert st == 200 and envelope(body)["result"]["pid"] > 0
    st, _, body = request(g.port, "/__runner/discovery", None, {"x-runner-token": "x", "x-auth": "allow"}, method="GET")
    assert st == 200 and envelope(body)["result"]["allowList"]["enabled"] is True
    assert g.received("auth")[-1]["context"]["method"] == "GET"
    # after admission the §3 order goes on: 403 for an id not exposed
    st, _, body = g.call("/__runner/task/app.tasks.secret", b"{}", {"x-auth": "allow", "x-runner-token": "x"})
    assert (st, envelope(body)["error"]["code"]) == (403, "FORBIDDEN")
    # every refusal is the same 401 envelope, and the body is never handed to a task
    before = len(g.received("task"))
    for how in ("deny", "forbid", "bad", "stream"):
        st, h, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": how})
        assert (st, envelope(body)) == (401, {"ok": False, "error": UNAUTH}), how
        assert "x-runner-request-id" in h
    st, _, body = g.call("/__runner/task/app.tasks.add", b'{"a":1,"b":1}', {"x-runner-token": None})
    assert (st, envelope(body)["error"]) == (401, UNAUTH)
    assert len(g.received("task")) == before
    # the worker stays (a bad auth reply is not a restart)
    assert len(g.spawned_pids()) == 1


def test_auth_worker_timeout_garbage_and_death_fail_closed(gw):
    g = gw(env=AUTH_FEATURES, extra=["--auth-worker"])
    ready(g)
    for how in ("never", "garbage"):
        st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": how},
                             timeout=30)
        assert (st, envelope(body)["error"]) == (401, UNAUTH), how
    g.proc.wait_line(r"delegated auth for app.tasks.add timed out", stream="err", timeout=5)
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": "die"})
    assert (st, envelope(body)["error"]) == (401, UNAUTH)
    g.wait_for(lambda: len(g.spawned_pids()) >= 2, what="respawn")
    ready(g)
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": "allow"})
    assert (st, envelope(body)["result"]) == (200, 2)


def test_auth_worker_without_the_feature_rejects(gw):
    g = gw(extra=["--auth-worker"])  # the hello has no "auth"
    ready(g)
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": "allow"})
    assert (st, envelope(body)["error"]) == (401, UNAUTH)
    assert g.received("auth") == []
    g.proc.wait_line(r"no \"auth\" feature: rejected", stream="err", timeout=5)
    assert g.task("app.tasks.add", {"a": 1, "b": 1})[0] == 200


def test_auth_worker_legacy_v2(gw):
    g = gw(protocol="runner-ipc-v2", extra=["--auth-worker"])
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": "allow"})
    assert (st, envelope(body)["result"]) == (200, 2)
    st, _, body = g.task("app.tasks.add", {"a": 1, "b": 1}, headers={"x-runner-token": "x", "x-auth": "deny"})
    assert (st, envelope(body)["error"]) == (401, UNAUTH)


# --------------------------------------------------------------------------------------------------------
# Per-id settings: --deadline-for, --no-async-context
# --------------------------------------------------------------------------------------------------------


def test_deadline_for_one_id(gw):
    g = gw(extra=["--deadline", "20000", "--deadline-for", "app.tasks.never=400",
                  "--deadline-for", "app.tasks.whoami=1500", "--deadline-for", "app.events.notify=2500"])
    ready(g)
    st, _, body = g.task("app.tasks.never")
    assert (st, envelope(body)["error"]) == (504, {"message": "Task timed out", "code": "TASK_TIMEOUT"})
    g.wait_for(lambda: [c for c in g.received("cancel") if c.get("reason") == "timeout"], what="cancel")
    # what each call is told it has left
    sent = lambda tid: [t for t in g.received("task") if t["taskId"] == tid][-1]["deadlineMs"]
    g.task("app.tasks.whoami")
    assert 1000 < sent("app.tasks.whoami") <= 1500
    g.task("app.tasks.echo", 1)
    assert 15000 < sent("app.tasks.echo") <= 20000
    g.event("app.events.notify", {"x": 1})
    assert 2000 < g.received("event")[-1]["deadlineMs"] <= 2500
    # the slow id with a short deadline did not disturb the others
    st, _, body = g.task("app.tasks.slow", {"ms": 600})
    assert (st, envelope(body)["result"]) == (200, "slept")


def test_no_async_context_for_one_id(gw):
    g = gw(extra=["--no-async-context", "app.tasks.whoami"])
    ready(g)
    ctx = '{"app.ctx.user":"{\\"id\\":\\"u1\\"}"}'
    st, _, body = g.task("app.tasks.whoami", headers={"x-runner-context": ctx})
    c = envelope(body)["result"]["context"]
    assert st == 200 and "runnerContext" not in c and "x-runner-context" not in c["headers"]
    st, _, body = g.call("/__runner/task/app.tasks.bad", b'{"input":{"v":"ok"}}', {"x-runner-context": ctx})
    task = [t for t in g.received("task") if t["taskId"] == "app.tasks.bad"][-1]
    assert task["context"]["runnerContext"] == ctx


def mp_body(b, manifest, files=(), fields=()):
    out = ("--%s\r\nContent-Disposition: form-data; name=\"__manifest\"\r\n\r\n%s\r\n" % (b, manifest)).encode()
    for name, data in fields:
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n" % (b, name)).encode() + data + b"\r\n"
    for fid, data in files:
        out += (("--%s\r\nContent-Disposition: form-data; name=\"file:%s\"; filename=\"%s.bin\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n") % (b, fid, fid)).encode() + data + b"\r\n"
    return out + ("--%s--\r\n" % b).encode()


def test_multipart_limit_flags(gw):
    g = gw(extra=["--max-file-size", "1000", "--max-files", "2", "--max-fields", "2", "--max-field-size", "300",
                  "--max-parts", "4"])
    ready(g)
    b = "----lim"
    ct = {"content-type": "multipart/form-data; boundary=" + b}

    def man(*ids):
        return json.dumps({"input": {k: {"$runnerFile": "File", "id": k, "meta": {"name": k}} for k in ids}})

    def run(body):
        st, _, resp = g.call("/__runner/task/app.tasks.files", body, ct)
        return st, envelope(resp)

    # within every limit (a 1000-byte file, 2 files, the manifest plus one field, 4 parts)
    st, e = run(mp_body(b, man("a", "b"), files=[("a", b"x" * 1000), ("b", b"y")], fields=[("note", b"n")]))
    assert st == 200 and e["result"]["files"]["a"]["bytes"] == 1000, e
    cases = [
        (mp_body(b, man("a"), files=[("a", b"x" * 1001)]), "File size limit exceeded"),
        (mp_body(b, man("a", "b", "c"), files=[("a", b"1"), ("b", b"2"), ("c", b"3")]), "Files limit exceeded"),
        (mp_body(b, man("a"), files=[("a", b"1")], fields=[("f1", b"1"), ("f2", b"2")]), "Fields limit exceeded"),
        (mp_body(b, json.dumps({"input": {"pad": "p" * 400}})), "Field limit exceeded"),
    ]
    for body, msg in cases:
        st, e = run(body)
        assert (st, e["error"]) == (413, {"message": msg, "code": "PAYLOAD_TOO_LARGE"}), msg
    # parts: 5 parts with the other limits raised
    g2 = gw(extra=["--max-parts", "4", "--max-fields", "10"])
    ready(g2)
    body = mp_body(b, man("a"), files=[("a", b"1")], fields=[("f%d" % i, b"v") for i in range(3)])
    st, _, resp = g2.call("/__runner/task/app.tasks.files", body, ct)
    assert (st, envelope(resp)["error"]["message"]) == (413, "Parts limit exceeded")
