// culvert-worker (workers/node) on its own: spawn the example worker and
// speak cwp/1 lines to it (specs/runner-http.md §13.4). No gateway needed.
//
// Run: node --test tests/gateway/
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import path from "node:path";
import { HERE, WORKER, withTimeout, pattern } from "./harness.mjs";

const STEP = 10000;
const T = { timeout: 60000 };
const sha256 = (b) => createHash("sha256").update(b).digest("hex");

// A worker process with a line reader over its stdout.
class W {
  constructor(entry = WORKER) {
    this.proc = spawn(process.execPath, [entry], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, CULVERT_WORKER_PROTOCOL: "cwp/1", CULVERT_WORKER_INDEX: "0" },
    });
    this.lines = [];
    this.raw = [];
    this.waiters = [];
    this.stderr = "";
    let buf = "";
    this.proc.stdout.setEncoding("utf8");
    this.proc.stdout.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.raw.push(line);
        // Every stdout line must be a protocol object.
        const msg = JSON.parse(line);
        this.lines.push(msg);
        this.wake();
      }
    });
    this.proc.stderr.setEncoding("utf8");
    this.proc.stderr.on("data", (d) => { this.stderr += d; });
    this.exit = new Promise((resolve) => this.proc.on("exit", (code, sig) => resolve({ code, sig })));
  }
  wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  send(...msgs) {
    this.proc.stdin.write(msgs.map((m) => (typeof m === "string" ? m : JSON.stringify(m)) + "\n").join(""));
  }
  // Waits for (and removes) the first message matching pred.
  async take(pred, what = "message", ms = STEP) {
    const find = () => {
      const i = this.lines.findIndex(pred);
      return i >= 0 ? this.lines.splice(i, 1)[0] : undefined;
    };
    return withTimeout((async () => {
      for (;;) {
        const m = find();
        if (m) return m;
        await new Promise((resolve) => this.waiters.push(resolve));
      }
    })(), ms, `${what}; stderr:\n${this.stderr}`);
  }
  reply(id) {
    return this.take((m) => m.id === id && m.type === undefined, `reply ${id}`);
  }
  async close() {
    if (this.proc.exitCode === null) {
      this.send({ type: "shutdown", id: 999999, graceMs: 1000 });
      await withTimeout(this.exit, STEP, "worker exit").catch(() => this.proc.kill("SIGKILL"));
    }
  }
}

async function started(entry) {
  const w = new W(entry);
  const hello = await w.take((m) => m.type === "hello", "hello");
  return { w, hello };
}

test("hello first, with the app's allow-list and features", T, async () => {
  const { w, hello } = await started();
  try {
    assert.equal(w.raw.length, 1);
    assert.equal(hello.protocol, "cwp/1");
    assert.equal(hello.pid, w.proc.pid);
    assert.ok(hello.tasks.includes("app.tasks.add"));
    assert.ok(!hello.tasks.includes("app.tasks.hidden"), "hidden is off the allow-list");
    assert.deepEqual(hello.events, ["app.events.notify", "app.events.par"]);
    assert.deepEqual(hello.parallelEvents, ["app.events.par"]);
    assert.equal(hello.maxInFlight, 64);
    assert.deepEqual(hello.features, ["cancel", "streams"]);
    assert.equal(hello.window, 1048576);
  } finally {
    await w.close();
  }
});

test("tasks: results, records byte-for-byte, undefined, errors", T, async () => {
  const { w } = await started();
  try {
    w.send({ type: "ping", id: 1 });
    assert.deepEqual(await w.reply(1), { id: 1, ok: true });
    w.send(
      '{"type":"task","id":2,"taskId":"app.tasks.add","rid":"r-2","mode":"json","input":{"a":5,"b":3},"context":{},"deadlineMs":30000}',
      '{"type":"task","id":3,"taskId":"app.tasks.echo","mode":"json","input":{"d":{"__type":"Date","value":"1970-01-01T00:00:00.005Z"},"m":{"__type":"Map","value":[[{"__type":"BigInt","value":"12345678901234567890"},{"$runner.escape::__type":"x","value":1}]]}}}',
      '{"type":"task","id":4,"taskId":"app.tasks.echo","mode":"json","input":{"x":{"__type":"NoSuchType","value":1}}}',
      '{"type":"task","id":5,"taskId":"app.tasks.noop","mode":"json","input":{"__type":"Undefined","value":null}}',
      '{"type":"task","id":6,"taskId":"app.tasks.fail","mode":"json","input":{}}',
      '{"type":"task","id":7,"taskId":"app.tasks.boom","rid":"r-7","mode":"json","input":{}}',
      '{"type":"task","id":8,"taskId":"app.tasks.nothing","mode":"json","input":{}}',
      '{"type":"task","id":9,"taskId":"app.tasks.hidden","mode":"json","input":{}}',
      '{"type":"task","id":10,"taskId":"app.tasks.echo","mode":"json","body":{"__graph":true,"version":1,"root":{"__ref":"obj_1"},"nodes":{"obj_1":{"kind":"object","value":{"input":{"n":1}}}}}}',
      '{"type":"task","id":11,"taskId":"app.tasks.echo","mode":"json","input":"h\\u00e9 \\ud83d\\ude00"}',
    );
    assert.equal(JSON.stringify(await w.reply(2)), '{"id":2,"ok":true,"result":8}');
    assert.equal(JSON.stringify(await w.reply(3)),
      '{"id":3,"ok":true,"result":{"d":{"__type":"Date","value":"1970-01-01T00:00:00.005Z"},"m":{"__type":"Map","value":[[{"__type":"BigInt","value":"12345678901234567890"},{"$runner.escape::__type":"x","value":1}]]}}}');
    assert.deepEqual(await w.reply(4), { id: 4, ok: false, status: 400, error: { message: "Invalid JSON body", code: "INVALID_JSON" } });
    assert.deepEqual(await w.reply(5), { id: 5, ok: true });
    assert.deepEqual(await w.reply(6), {
      id: 6, ok: false, status: 409,
      error: { message: '{"code":"X1","why":"dup"}', code: "INTERNAL_ERROR", id: "app.errors.AppError", data: { code: "X1", why: "dup" }, httpCode: 409 },
    });
    assert.deepEqual(await w.reply(7), { id: 7, ok: false, status: 500, error: { message: "Internal Error", code: "INTERNAL_ERROR" } });
    assert.deepEqual(await w.reply(8), { id: 8, ok: false, status: 404, error: { message: "Task app.tasks.nothing not found", code: "NOT_FOUND" } });
    assert.deepEqual(await w.reply(9), { id: 9, ok: false, status: 403, error: { message: "Task app.tasks.hidden not exposed", code: "FORBIDDEN" } });
    assert.deepEqual(await w.reply(10), { id: 10, ok: true, result: { n: 1 } });
    assert.deepEqual(await w.reply(11), { id: 11, ok: true, result: "h\u00e9 \ud83d\ude00" });
    // The real error text goes to stderr with the request id, never stdout.
    assert.match(w.stderr, /r-7 app\.tasks\.boom failed: Error: secret database detail/);
    assert.ok(!w.raw.join("\n").includes("secret database detail"));
  } finally {
    await w.close();
  }
});

test("events: emit, returnPayload, parallel refusal; context header", T, async () => {
  const { w } = await started();
  try {
    const ctx = JSON.stringify({ "app.ctx.user": JSON.stringify({ id: "u2", since: { __type: "Date", value: "1970-01-01T00:00:00.005Z" } }) });
    w.send(
      { type: "event", id: 1, eventId: "app.events.notify", payload: { message: "hi" }, returnPayload: false, context: {} },
      { type: "event", id: 2, eventId: "app.events.notify", payload: { message: "hi2" }, returnPayload: true, context: {} },
      { type: "event", id: 3, eventId: "app.events.par", payload: 1, returnPayload: true },
      { type: "event", id: 4, eventId: "app.events.nope", payload: 1 },
      { type: "task", id: 5, taskId: "app.tasks.whoami", mode: "json", input: {}, context: { runnerContext: ctx } },
      { type: "task", id: 6, taskId: "app.tasks.whoami", mode: "json", input: {}, context: { runnerContext: "{junk" } },
      { type: "task", id: 7, taskId: "app.tasks.whoami", mode: "json", input: {}, context: {} },
    );
    assert.deepEqual(await w.reply(1), { id: 1, ok: true });
    assert.deepEqual(await w.reply(2), { id: 2, ok: true, result: { message: "hi2", touched: true } });
    assert.deepEqual(await w.reply(3), {
      id: 3, ok: false, status: 400,
      error: { message: "Event app.events.par is marked parallel; returning a payload is not supported.", code: "PARALLEL_EVENT_RETURN_UNSUPPORTED" },
    });
    assert.deepEqual(await w.reply(4), { id: 4, ok: false, status: 404, error: { message: "Event app.events.nope not found", code: "NOT_FOUND" } });
    assert.equal(JSON.stringify(await w.reply(5)),
      '{"id":5,"ok":true,"result":{"user":{"id":"u2","since":{"__type":"Date","value":"1970-01-01T00:00:00.005Z"}}}}');
    assert.deepEqual(await w.reply(6), { id: 6, ok: true, result: { user: null } });
    assert.deepEqual(await w.reply(7), { id: 7, ok: true, result: { user: null } });
  } finally {
    await w.close();
  }
});

test("octet body frames are acknowledged as consumed", T, async () => {
  const { w } = await started();
  try {
    w.send({ type: "task", id: 1, taskId: "app.tasks.octet", mode: "octet", context: {} });
    const body = pattern(300 * 1024);
    let acked = 0;
    for (let off = 0; off < body.length; off += 64 * 1024) {
      w.send({ type: "data", id: 1, stream: "body", b64: body.subarray(off, off + 64 * 1024).toString("base64") });
    }
    w.send({ type: "end", id: 1, stream: "body" });
    assert.deepEqual(await w.reply(1), { id: 1, ok: true, result: { receivedBytes: body.length } });
    for (const m of w.lines.filter((x) => x.type === "ack")) {
      assert.equal(m.id, 1);
      assert.equal(m.stream, "body");
      acked += m.bytes;
    }
    assert.equal(acked, body.length);
  } finally {
    await w.close();
  }
});

test("duplex: the stream reply precedes the end of the body", T, async () => {
  const { w } = await started();
  try {
    w.send({ type: "task", id: 1, taskId: "app.tasks.duplex", mode: "octet", rid: "d1", context: { headers: {} } });
    w.send({ type: "data", id: 1, stream: "body", b64: Buffer.from("abc").toString("base64") });
    const head = await w.reply(1);
    assert.deepEqual(head, { id: 1, ok: true, stream: { status: 200, contentType: "application/octet-stream", headers: {} } });
    const d1 = await w.take((m) => m.type === "data" && m.stream === "out", "first out frame");
    assert.equal(Buffer.from(d1.b64, "base64").toString(), "ABC");
    w.send({ type: "data", id: 1, stream: "body", b64: Buffer.from("def").toString("base64") });
    const d2 = await w.take((m) => m.type === "data" && m.stream === "out", "second out frame");
    assert.equal(Buffer.from(d2.b64, "base64").toString(), "DEF");
    w.send({ type: "end", id: 1, stream: "body" });
    assert.deepEqual(await w.take((m) => m.type === "end", "out end"), { type: "end", id: 1, stream: "out" });
  } finally {
    await w.close();
  }
});

test("streamed result and multipart files", T, async () => {
  const { w } = await started();
  try {
    w.send({ type: "task", id: 1, taskId: "app.tasks.stream", mode: "octet", context: {} });
    w.send({ type: "end", id: 1, stream: "body" });
    assert.deepEqual(await w.reply(1), { id: 1, ok: true, stream: { status: 200, contentType: "application/octet-stream", headers: {} } });
    let text = "";
    for (;;) {
      const m = await w.take((x) => x.id === 1 && (x.type === "data" || x.type === "end"), "out frames");
      if (m.type === "end") {
        assert.equal(m.error, undefined);
        break;
      }
      text += Buffer.from(m.b64, "base64").toString();
    }
    assert.equal(text, "chunk1\nchunk2\n");

    // Multipart: the task starts on the manifest; metadata from the
    // manifest wins, the file frame fills gaps; bytes are counted.
    const data = pattern(200 * 1024 + 5);
    w.send({ type: "task", id: 2, taskId: "app.tasks.upload", mode: "multipart", context: {},
      input: { note: { when: { __type: "Date", value: "1970-01-01T00:00:00.001Z" } }, file: { $runnerFile: "File", id: "F1", meta: { name: "a.bin", size: 1 } } } });
    w.send({ type: "file", id: 2, stream: "F1", meta: { name: "ignored.bin", type: "application/x-test", size: 1 } });
    for (let off = 0; off < data.length; off += 65536) {
      w.send({ type: "data", id: 2, stream: "F1", b64: data.subarray(off, off + 65536).toString("base64") });
    }
    w.send({ type: "end", id: 2, stream: "F1" });
    assert.deepEqual(await w.reply(2), { id: 2, ok: true, result: { name: "a.bin", type: "application/x-test", bytes: data.length, sha256: sha256(data) } });

    // The same with the sentinel tag of clients before 2026 ("$ejson").
    const old = pattern(3000);
    w.send({ type: "task", id: 3, taskId: "app.tasks.upload", mode: "multipart", context: {},
      input: { file: { $ejson: "File", id: "F2", meta: { name: "old.bin", type: "text/plain" } } } });
    w.send({ type: "file", id: 3, stream: "F2", meta: { name: "old.bin" } });
    w.send({ type: "data", id: 3, stream: "F2", b64: old.toString("base64") });
    w.send({ type: "end", id: 3, stream: "F2" });
    assert.deepEqual(await w.reply(3), { id: 3, ok: true, result: { name: "old.bin", type: "text/plain", bytes: old.length, sha256: sha256(old) } });
  } finally {
    await w.close();
  }
});

test("out stream respects the ack window", T, async () => {
  const { w, hello } = await started(path.join(HERE, "fixtures", "big_worker.mjs"));
  try {
    assert.equal(hello.window, 65536);
    const size = 1024 * 1024;
    w.send({ type: "task", id: 1, taskId: "fx.tasks.big", mode: "json", input: size });
    assert.equal((await w.reply(1)).stream.contentType, "application/x-big");
    const received = [];
    let unacked = 0;
    let total = 0;
    for (;;) {
      // Give the worker time to overshoot the window if it were to.
      await new Promise((r) => setTimeout(r, 20));
      const frames = w.lines.filter((m) => m.id === 1 && (m.type === "data" || m.type === "end"));
      w.lines = w.lines.filter((m) => !frames.includes(m));
      let ended = false;
      for (const m of frames) {
        if (m.type === "end") {
          ended = true;
          continue;
        }
        const b = Buffer.from(m.b64, "base64");
        assert.ok(b.length <= 65536);
        received.push(b);
        unacked += b.length;
        total += b.length;
      }
      assert.ok(unacked <= hello.window, `unacked ${unacked} > window`);
      if (ended) break;
      if (frames.length === 0 && unacked === 0) {
        await w.take((m) => m.id === 1, "more frames");
      }
      // Acknowledge half at a time (incremental counts).
      if (unacked > 0) {
        const k = Math.ceil(unacked / 2);
        w.send({ type: "ack", id: 1, stream: "out", bytes: k });
        unacked -= k;
      }
    }
    assert.equal(total, size);
    assert.equal(sha256(Buffer.concat(received)), sha256(pattern(size)));
  } finally {
    await w.close();
  }
});

test("cancel aborts the task and drops its reply; console stays off stdout", T, async () => {
  const { w } = await started(path.join(HERE, "fixtures", "big_worker.mjs"));
  try {
    w.send({ type: "task", id: 1, taskId: "fx.tasks.wait", mode: "json", input: {}, context: {} });
    await new Promise((r) => setTimeout(r, 100));
    w.send({ type: "cancel", id: 1, reason: "client-closed" });
    w.send({ type: "task", id: 2, taskId: "fx.tasks.wait", mode: "json", input: {}, context: {} });
    w.send({ type: "cancel", id: 2, reason: "timeout" });
    w.send({ type: "ping", id: 3 });
    assert.deepEqual(await w.reply(3), { id: 3, ok: true });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(w.lines.filter((m) => m.id === 1 || m.id === 2).length, 0, JSON.stringify(w.lines));
    assert.match(w.stderr, /fx: aborted client-closed/);
    assert.match(w.stderr, /fx: loaded/);
    // Malformed lines: a worker-level error, and the worker carries on.
    w.send("not json", { type: "frobnicate", id: 4 }, { type: "ping", id: 5 });
    assert.equal((await w.take((m) => m.id === 0, "id 0 error")).ok, false);
    assert.equal((await w.reply(4)).status, 400);
    assert.deepEqual(await w.reply(5), { id: 5, ok: true });
  } finally {
    await w.close();
  }
});

test("auth: the app's authValidator tasks decide", T, async () => {
  const { w, hello } = await started(path.join(HERE, "fixtures", "big_worker.mjs"));
  try {
    assert.deepEqual(hello.features, ["cancel", "streams", "auth"]);
    // No tunnel allow-list in this app: every registered id but Runner's own.
    assert.deepEqual(hello.tasks, ["fx.tasks.big", "fx.tasks.wait", "fx.tasks.keyCheck", "fx.tasks.double"]);
    assert.deepEqual(hello.events, []);
    const ctx = (headers) => ({ method: "POST", path: "/__runner/task/fx.tasks.big", query: {}, headers, requestId: "a1", remote: "127.0.0.1:1" });
    w.send({ type: "auth", id: 1, rid: "a1", context: ctx({ "x-fixture-key": "open" }) });
    w.send({ type: "auth", id: 2, rid: "a2", context: ctx({ "x-fixture-key": "shut" }) });
    assert.deepEqual(await w.reply(1), { id: 1, ok: true });
    assert.deepEqual(await w.reply(2), { id: 2, ok: false, status: 401, error: { message: "Unauthorized", code: "UNAUTHORIZED" } });
  } finally {
    await w.close();
  }
});

test("custom serializer types of the app decode and encode", T, async () => {
  const { w } = await started(path.join(HERE, "fixtures", "big_worker.mjs"));
  try {
    w.send('{"type":"task","id":1,"taskId":"fx.tasks.double","mode":"json","input":{"__type":"Distance","value":{"value":1.5,"unit":"m"}}}');
    assert.equal(JSON.stringify(await w.reply(1)), '{"id":1,"ok":true,"result":{"__type":"Distance","value":{"value":3,"unit":"m"}}}');
  } finally {
    await w.close();
  }
});

test("shutdown: reply, then exit 0; stdin EOF also exits 0; SIGINT ignored", T, async () => {
  const { w } = await started();
  // SIGINT (a terminal's Ctrl-C) is left to the gateway.
  w.proc.kill("SIGINT");
  w.send({ type: "ping", id: 3 });
  assert.deepEqual(await w.reply(3), { id: 3, ok: true });
  w.send({ type: "task", id: 1, taskId: "app.tasks.slow", mode: "json", input: { ms: 200 }, context: {} });
  w.send({ type: "shutdown", id: 2, graceMs: 5000 });
  // In-flight work finishes first, then the acknowledgement.
  assert.deepEqual(await w.reply(1), { id: 1, ok: true, result: "done" });
  assert.deepEqual(await w.reply(2), { id: 2, ok: true });
  assert.deepEqual(await withTimeout(w.exit, STEP, "exit"), { code: 0, sig: null });

  const { w: w2 } = await started();
  w2.proc.stdin.end();
  assert.deepEqual(await withTimeout(w2.exit, STEP, "exit on EOF"), { code: 0, sig: null });
});
