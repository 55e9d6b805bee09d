#!/usr/bin/python3
"""A scriptable fake worker for `culvert gateway --worker` (spec §13).

Speaks cwp/1 (or runner-ipc-v1/v2, from CULVERT_WORKER_PROTOCOL) on
stdin/stdout. Stdlib only. Well-behaved tasks, and misbehaviour chosen by
task id or by environment, so that the tests can walk every row of the
§13.4 failure table.

Environment:
  GW_WORKER_LOG=path       append every line received (and events such as
                           "spawn") as JSON lines, for the tests to read
  GW_WORKER_MODE=m         nohello | exitstart | badhello | noping | slowhello
  GW_WORKER_ONCE=path      apply GW_WORKER_MODE only while path does not
                           exist (created on first use): the restarted
                           worker behaves
  GW_WORKER_FEATURES=a,b   hello features (default cancel,streams)
  GW_WORKER_MAX_INFLIGHT=n hello maxInFlight (default 64)
  GW_WORKER_WINDOW=n       hello window (default 1048576)
  GW_WORKER_LISTS=0        omit tasks/events lists from the hello
  GW_WORKER_IGNORE_SHUTDOWN=1  ignore shutdown lines and SIGTERM

Tasks (by taskId; input is the decoded "input"):
  app.tasks.add {a,b} -> a+b          app.tasks.echo -> input
  app.tasks.raw -> a result with numbers JSON.parse would not round-trip
  app.tasks.badutf8 -> a result string with an invalid UTF-8 byte
  app.tasks.whoami -> {pid,index,rid,mode,context,deadlineMs}
  app.tasks.slow {ms} -> "slept" after ms (the loop keeps turning)
  app.tasks.never -> no reply, loop keeps turning
  app.tasks.hang -> blocks the process (silent: no pings answered)
  app.tasks.late -> replies only after its cancel (a late reply)
  app.tasks.fail -> typed error, status 409
  app.tasks.throw -> untyped error with a secret message
  app.tasks.notfound -> NOT_FOUND 404 "Task x not found"
  app.tasks.garbage -> a non-JSON line, then 1
  app.tasks.nonobject -> a JSON array line, then 1
  app.tasks.worker0 -> an id-0 worker message, then 1
  app.tasks.bad {v} -> a reply with a bad shape (v picks which)
  app.tasks.die -> exits (status 3) mid-request
  app.tasks.closeout -> closes stdout, keeps running
  app.tasks.spam {lines} -> a 10000-byte stderr line, then that many short ones
  app.tasks.closein -> closes stdin and blocks (the next write is EPIPE)
  app.tasks.huge -> a line over 16 MiB
  app.tasks.stream {chunks,size} -> stream reply (201, text/csv, x-custom)
  app.tasks.upload -> octet: counts the body, acks as it reads -> {bytes,sha256}
  app.tasks.duplex -> octet: stream reply at once, echoes the body back
  app.tasks.files -> multipart: {input, files: {id: {meta, bytes, sha256}}}
  app.tasks.big {bytes} (or header x-big-bytes) -> streams that many bytes, honouring the window
Events: app.events.notify (returns payload), app.events.par (parallel),
  app.events.fail (error).
Auth messages (feature "auth" in GW_WORKER_FEATURES): the verdict comes
  from the request's x-auth header: allow | deny (401) | forbid (403) |
  bad (bad shape) | garbage (a non-JSON line, no reply) | stream | die |
  never (no reply); absent: deny.
"""
import base64
import hashlib
import heapq
import json
import os
import select
import signal
import sys
import time

PROTO = os.environ.get("CULVERT_WORKER_PROTOCOL", "cwp/1")
INDEX = os.environ.get("CULVERT_WORKER_INDEX", "?")
LOG = os.environ.get("GW_WORKER_LOG")
MODE = os.environ.get("GW_WORKER_MODE", "")
ONCE = os.environ.get("GW_WORKER_ONCE")
WINDOW = int(os.environ.get("GW_WORKER_WINDOW", "1048576"))
CWP = PROTO == "cwp/1"
V1 = PROTO == "runner-ipc-v1"

if MODE and ONCE:
    if os.path.exists(ONCE):
        MODE = ""
    else:
        open(ONCE, "w").close()

out = sys.stdout.buffer
stdin_fd = sys.stdin.fileno()


def log(kind, **kw):
    if LOG:
        kw["ev"] = kind
        kw["pid"] = os.getpid()
        kw["index"] = INDEX
        with open(LOG, "a") as f:
            f.write(json.dumps(kw) + "\n")


def send(obj):
    out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    out.flush()


def send_raw(b):
    out.write(b)
    out.flush()


timers = []  # (when, seq, fn)
seq = 0


def later(ms, fn):
    global seq
    seq += 1
    heapq.heappush(timers, (time.monotonic() + ms / 1000.0, seq, fn))


calls = {}  # id -> state dict for calls in progress
big = {}  # id -> streaming state for app.tasks.big


def ok(i, result=None, has_result=True):
    m = {"id": i, "ok": True}
    if has_result:
        m["result"] = result
    send(m)
    calls.pop(i, None)


def err(i, status, error):
    m = {"id": i, "ok": False, "error": error}
    if status is not None and CWP:
        m["status"] = status
    send(m)
    calls.pop(i, None)


def legacy_err(i, code, code_name, message):
    if V1:
        send({"id": i, "ok": False, "error": {"message": message, "code": code_name}})
    else:
        send({"id": i, "ok": False, "error": {"message": message, "code": code, "codeName": code_name}})
    calls.pop(i, None)


def data(i, stream, b):
    send({"type": "data", "id": i, "stream": stream, "b64": base64.b64encode(b).decode()})


def end(i, stream, error=None):
    m = {"type": "end", "id": i, "stream": stream}
    if error is not None:
        m["error"] = error
    send(m)


def ack(i, stream, n):
    send({"type": "ack", "id": i, "stream": stream, "bytes": n})


def big_pump(i):
    st = big.get(i)
    if st is None:
        return
    while st["left"] > 0 and st["unacked"] < WINDOW:
        n = min(65536, st["left"], WINDOW - st["unacked"])
        data(i, "out", b"z" * n)
        st["left"] -= n
        st["unacked"] += n
        st["sent"] += n
    log("big", sent=st["sent"], unacked=st["unacked"])
    if st["left"] == 0 and not st.get("ended"):
        st["ended"] = True
        end(i, "out")
        big.pop(i, None)
        calls.pop(i, None)


def run_task(m):
    i = m["id"]
    tid = m.get("taskId")
    inp = m.get("input")
    calls[i] = {"task": tid, "msg": m, "bytes": 0, "sha": hashlib.sha256(), "files": {}}
    log("task", id=i, taskId=tid, inflight=len(calls))
    if tid == "app.tasks.add":
        ok(i, inp["a"] + inp["b"])
    elif tid == "app.tasks.raw":
        send_raw(b'{"id":%d,"ok":true,"result":{"n":1.50e+3,"big":12345678901234567890,"s":"\\u00e9 x"}}\n' % i)
        calls.pop(i, None)
    elif tid == "app.tasks.badutf8":
        send_raw(b'{"id":%d,"ok":true,"result":"a\xffb"}\n' % i)
        calls.pop(i, None)
    elif tid == "app.tasks.echo":
        ok(i, inp)
    elif tid == "app.tasks.whoami":
        ok(i, {"pid": os.getpid(), "index": INDEX, "rid": m.get("rid"), "mode": m.get("mode"),
               "context": m.get("context"), "deadlineMs": m.get("deadlineMs"),
               "hasBody": "body" in m, "hasInput": "input" in m})
    elif tid == "app.tasks.slow":
        later(inp.get("ms", 100), lambda: ok(i, "slept") if i in calls else None)
    elif tid == "app.tasks.never":
        pass
    elif tid == "app.tasks.hang":
        log("hang")
        time.sleep(3600)
    elif tid == "app.tasks.late":
        calls[i]["late"] = True
    elif tid == "app.tasks.fail":
        err(i, 409, {"message": "conflict here", "code": "INTERNAL_ERROR", "id": "app.errors.AppError",
                     "data": {"x": 1}, "httpCode": 409, "stack": "at secret.js:1"})
    elif tid == "app.tasks.throw":
        err(i, None, {"message": "secret database password", "code": "INTERNAL_ERROR", "stack": "x"})
    elif tid == "app.tasks.notfound":
        if CWP:
            err(i, 404, {"message": "Task app.tasks.x not found", "code": "NOT_FOUND"})
        else:
            legacy_err(i, 404, "NOT_FOUND", "Task app.tasks.x not found")
    elif tid == "app.tasks.invalid":
        legacy_err(i, 400, "INVALID_REQUEST", "bad input")
    elif tid == "app.tasks.unauth":
        legacy_err(i, 401, "UNAUTHORIZED", "nope")
    elif tid == "app.tasks.garbage":
        send_raw(b"this is not json at all\n")
        ok(i, 1)
    elif tid == "app.tasks.nonobject":
        send_raw(b"[1,2,3]\n")
        ok(i, 1)
    elif tid == "app.tasks.worker0":
        send({"id": 0, "ok": False, "error": {"message": "worker could not parse a line", "code": "INVALID_REQUEST"}})
        ok(i, 1)
    elif tid == "app.tasks.bad":
        v = (inp or {}).get("v", "ok")
        if v == "ok":
            send({"id": i, "ok": "yes"})
        elif v == "noerror":
            send({"id": i, "ok": False})
        elif v == "nomessage":
            send({"id": i, "ok": False, "error": {"code": "X"}})
        elif v == "code":
            send({"id": i, "ok": False, "error": {"message": "m", "code": {"x": 1}}})
        elif v == "nocode":
            send({"id": i, "ok": False, "error": {"message": "m"}})
        elif v == "stream":
            send({"id": i, "ok": True, "stream": 5})
        calls.pop(i, None)
    elif tid == "app.tasks.die":
        log("die")
        os._exit(3)
    elif tid == "app.tasks.closeout":
        log("closeout")
        os.close(1)
    elif tid == "app.tasks.spam":
        n = (inp or {}).get("lines", 500)
        sys.stderr.write("x" * 10000 + "\n")
        sys.stderr.write("".join("spam line %d\n" % k for k in range(n)))
        sys.stderr.flush()
        ok(i, n)
    elif tid == "app.tasks.closein":
        # Stops reading for good: the gateway's next write gets EPIPE.
        log("closein")
        os.close(0)
        while True:
            time.sleep(3600)
    elif tid == "app.tasks.huge":
        send_raw(b'{"id":%d,"ok":true,"result":"' % i + b"x" * (17 * 1024 * 1024) + b'"}\n')
    elif tid == "app.tasks.stream":
        chunks = (inp or {}).get("chunks", 3)
        size = (inp or {}).get("size", 5)
        send({"id": i, "ok": True, "stream": {"status": 201, "contentType": "text/csv",
                                              "headers": {"x-custom": "yes", "set-cookie": "a=b", "x-num": 7}}})
        for k in range(chunks):
            data(i, "out", (str(k) * size).encode())
        end(i, "out")
        calls.pop(i, None)
    elif tid == "app.tasks.streamfail":
        send({"id": i, "ok": True, "stream": {}})
        data(i, "out", b"partial")
        end(i, "out", {"message": "broke"})
        calls.pop(i, None)
    elif tid == "app.tasks.big":
        send({"id": i, "ok": True, "stream": {"contentType": "application/octet-stream"}})
        hdrs = (m.get("context") or {}).get("headers") or {}
        size = hdrs.get("x-big-bytes") or (inp or {}).get("bytes") or (1 << 20)
        big[i] = {"left": int(size), "unacked": 0, "sent": 0}
        big_pump(i)
    elif tid == "app.tasks.duplex":
        send({"id": i, "ok": True, "stream": {"status": 200, "contentType": "application/octet-stream"}})
        calls[i]["duplex"] = True
    elif tid in ("app.tasks.upload", "app.tasks.files"):
        pass  # answered at the end of the streams
    else:
        if CWP:
            err(i, 404, {"message": "Task %s not found" % tid, "code": "NOT_FOUND"})
        else:
            legacy_err(i, 404, "NOT_FOUND", "Task %s not found" % tid)


def run_auth(m):
    """Delegated auth: the verdict named by the request's x-auth header."""
    i = m["id"]
    how = ((m.get("context") or {}).get("headers") or {}).get("x-auth", "deny")
    log("auth", id=i, how=how)
    if how == "allow":
        ok(i, has_result=False)
    elif how == "deny":
        err(i, 401, {"message": "Unauthorized", "code": "UNAUTHORIZED"})
    elif how == "forbid":
        err(i, 403, {"message": "no", "code": "FORBIDDEN"})
    elif how == "bad":
        send({"id": i, "ok": "yes"})
    elif how == "garbage":
        send_raw(b"not json\n")
    elif how == "stream":
        send({"id": i, "ok": True, "stream": {}})
    elif how == "die":
        log("die")
        os._exit(3)
    # "never": no reply (the gateway's 5 s auth timeout rejects)


def run_event(m):
    i = m["id"]
    eid = m.get("eventId")
    if eid == "app.events.fail":
        err(i, None, {"message": "hook failed", "code": "INTERNAL_ERROR"})
    elif m.get("returnPayload"):
        ok(i, m.get("payload"))
    else:
        ok(i, has_result=False)


def on_frame(m):
    i = m["id"]
    c = calls.get(i)
    t = m["type"]
    if t == "ack" and m.get("stream") == "out" and i in big:
        big[i]["unacked"] -= m["bytes"]
        big_pump(i)
        return
    if c is None:
        return
    s = m.get("stream")
    if t == "file":
        c["files"][s] = {"meta": m.get("meta"), "bytes": 0, "sha": hashlib.sha256()}
    elif t == "data":
        b = base64.b64decode(m["b64"])
        if s in c["files"]:
            c["files"][s]["bytes"] += len(b)
            c["files"][s]["sha"].update(b)
        else:
            c["bytes"] += len(b)
            c["sha"].update(b)
        if c.get("duplex"):
            data(i, "out", b)
        delay = int(os.environ.get("GW_WORKER_ACK_DELAY_MS", "0"))
        if delay:
            later(delay, lambda: ack(i, s, len(b)))
        else:
            ack(i, s, len(b))
    elif t == "end":
        if c.get("duplex"):
            end(i, "out")
            calls.pop(i, None)
        elif c["task"] == "app.tasks.upload" and s == "body":
            ok(i, {"bytes": c["bytes"], "sha256": c["sha"].hexdigest(), "error": m.get("error")})
        elif c["task"] == "app.tasks.files":
            if s in c["files"]:
                c["files"][s]["done"] = True
            want = set(sentinels(c["msg"].get("input")))
            if want and all(c["files"].get(k, {}).get("done") for k in want):
                ok(i, {"input": c["msg"].get("input"),
                       "files": {k: {"meta": f["meta"], "bytes": f["bytes"], "sha256": f["sha"].hexdigest()}
                                 for k, f in c["files"].items()}})


def sentinels(v):
    if isinstance(v, dict):
        if v.get("$runnerFile") == "File" and isinstance(v.get("id"), str):
            yield v["id"]
        for x in v.values():
            yield from sentinels(x)
    elif isinstance(v, list):
        for x in v:
            yield from sentinels(x)


def on_line(line):
    try:
        m = json.loads(line)
    except ValueError:
        if not V1 and not CWP:
            return
        send({"id": 0, "ok": False, "error": {"message": "unparseable line: %r" % line[:200], "code": "INVALID_REQUEST"}})
        return
    t = m.get("type")
    log("rx", msg=m if len(line) < 4096 else {"type": t, "id": m.get("id"), "stream": m.get("stream")})
    if t == "task":
        run_task(m)
    elif t == "event":
        run_event(m)
    elif t == "ping":
        if MODE != "noping":
            ok(m["id"], has_result=False)
    elif t == "cancel":
        c = calls.pop(m["id"], None)
        if c is not None and c.get("late"):
            send({"id": m["id"], "ok": True, "result": "too late"})
    elif t == "shutdown":
        if os.environ.get("GW_WORKER_IGNORE_SHUTDOWN"):
            return
        grace = m.get("graceMs", 0)
        log("shutdown", graceMs=grace, inflight=len(calls))
        ok(m["id"], has_result=False)
        sys.exit(0)
    elif t in ("data", "end", "file", "ack"):
        on_frame(m)
    elif t == "auth":
        run_auth(m)


def main():
    log("spawn", mode=MODE, proto=PROTO)
    if os.environ.get("GW_WORKER_IGNORE_SHUTDOWN"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "exitstart":
        sys.stderr.write("gw_worker: exiting at start\n")
        sys.exit(1)
    if CWP and MODE not in ("nohello",):
        if MODE == "badhello":
            send({"type": "hello", "protocol": "cwp/9"})
        else:
            if MODE == "slowhello":
                time.sleep(0.5)
            feats = os.environ.get("GW_WORKER_FEATURES", "cancel,streams")
            hello = {"type": "hello", "protocol": "cwp/1", "pid": os.getpid(),
                     "maxInFlight": int(os.environ.get("GW_WORKER_MAX_INFLIGHT", "64")),
                     "features": [f for f in feats.split(",") if f], "window": WINDOW}
            if os.environ.get("GW_WORKER_LISTS", "1") != "0":
                hello["tasks"] = ["app.tasks.add", "app.tasks.raw", "app.tasks.badutf8", "app.tasks.echo", "app.tasks.whoami", "app.tasks.slow",
                                  "app.tasks.never", "app.tasks.hang", "app.tasks.late", "app.tasks.fail",
                                  "app.tasks.throw", "app.tasks.notfound", "app.tasks.garbage",
                                  "app.tasks.nonobject", "app.tasks.worker0", "app.tasks.bad", "app.tasks.die",
                                  "app.tasks.closeout", "app.tasks.closein", "app.tasks.spam", "app.tasks.huge", "app.tasks.stream",
                                  "app.tasks.streamfail", "app.tasks.big", "app.tasks.duplex",
                                  "app.tasks.upload", "app.tasks.files"]
                hello["events"] = ["app.events.notify", "app.events.par", "app.events.fail"]
                hello["parallelEvents"] = ["app.events.par"]
            send(hello)
    sys.stderr.write("gw_worker %s ready (pid %d, %s)\n" % (INDEX, os.getpid(), PROTO))
    sys.stderr.flush()
    buf = b""
    while True:
        timeout = None
        if timers:
            timeout = max(0.0, timers[0][0] - time.monotonic())
        r, _, _ = select.select([stdin_fd], [], [], timeout)
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            fn()
        if not r:
            continue
        chunk = os.read(stdin_fd, 1 << 20)
        if not chunk:
            log("eof")
            return
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            on_line(line)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass
