// Interop: the real @bluelibs/runner 5.5.0 clients (createHttpClient,
// createHttpSmartClient, createHttpMixedClient) and raw fetch against every
// target serving the shared test app: Runner's own server (which validates
// the tests), culvert's native example and culvert gateway + Node workers.
//
// Run: node --test tests/gateway/
// Targets: see harness.mjs (unbuilt ones are skipped with the reason).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { PassThrough, Readable } from "node:stream";
import {
  TARGETS, TOKEN, STEP, SLOW, GHOST, REQUIRE, runner, startTarget, raw, post, readAll, pattern, withTimeout,
} from "./harness.mjs";
import { userCtx, AppError, TASK_IDS, EVENT_IDS } from "../../workers/node/example/app.mjs";

const {
  createHttpClient, createHttpSmartClient, createHttpMixedClient, createNodeFile, Serializer,
} = runner;

const T = { timeout: 60000 * SLOW };
const sha256 = (b) => createHash("sha256").update(b).digest("hex");
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function clients(t, extra = {}) {
  const cfg = { baseUrl: t.baseUrl, auth: { token: TOKEN }, serializer: new Serializer(), ...extra };
  return {
    fetch: createHttpClient(cfg),
    smart: createHttpSmartClient(cfg),
    mixed: createHttpMixedClient(cfg),
  };
}

async function rejects(promise, check) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, "expected a rejection");
  check(err);
  return err;
}

const tunnelError = (code, message) => (err) => {
  assert.equal(err.name, "TunnelError", `${err.stack}`);
  assert.equal(err.code, code);
  if (message !== undefined) assert.equal(err.message, message);
};

for (const [name, target] of Object.entries(TARGETS)) {
  if (REQUIRE && target.skip) {
    test(`gateway interop: ${name} is available`, () => assert.fail(`${name}: ${target.skip}`));
    continue;
  }
  describe(`gateway interop: ${name}`, { skip: target.skip ? `${name}: ${target.skip}` : false }, () => {
    let t;
    let c;
    before(async () => {
      t = await startTarget(name);
      c = clients(t);
    });
    after(async () => {
      if (!t) return;
      const r = await t.stop();
      // culvert must exit 0 on SIGTERM (under ASan: no leaks).
      if (name !== "runner") assert.equal(r.code, 0, `${name} exit ${r.code ?? r.sig}:\n${t.output().slice(-4000)}`);
    });

    test("task over fetch, smart, mixed clients and globals.tunnels.http", T, async () => {
      for (const k of ["fetch", "smart", "mixed"]) {
        assert.equal(await c[k].task("app.tasks.add", { a: 5, b: 3 }), 8, k);
      }
      const tunnel = runner.globals.tunnels.http.createClient({
        url: t.baseUrl, auth: { token: TOKEN }, serializer: new Serializer(),
      });
      assert.equal(await tunnel.task("app.tasks.add", { a: 2, b: 40 }), 42);
      assert.equal(await tunnel.event("app.events.notify", { message: "x" }), undefined);
      assert.deepEqual(await tunnel.eventWithResult("app.events.notify", { n: 1 }), { n: 1, touched: true });
      const r = await post(t, "/__runner/task/app.tasks.add", '{"input":{"a":5,"b":3}}');
      assert.equal(r.status, 200);
      assert.equal(r.text, '{"ok":true,"result":8}');
      assert.equal(r.headers.get("content-type"), "application/json; charset=utf-8");
      assert.equal(r.headers.get("access-control-allow-origin"), "*");
      assert.equal(r.headers.get("x-content-type-options"), "nosniff");
      assert.equal(r.headers.get("x-frame-options"), "DENY");
    });

    test("undefined result is the Undefined record", T, async () => {
      assert.equal(await c.fetch.task("app.tasks.noop"), undefined);
      assert.equal(await c.smart.task("app.tasks.noop"), undefined);
      const r = await post(t, "/__runner/task/app.tasks.noop", "");
      assert.equal(r.text, '{"ok":true,"result":{"__type":"Undefined","value":null}}');
    });

    test("events, returnPayload and parallel events", T, async () => {
      for (const k of ["fetch", "smart", "mixed"]) {
        assert.equal(await c[k].event("app.events.notify", { message: "hi", at: new Date(0) }), undefined, k);
        assert.deepEqual(await c[k].eventWithResult("app.events.notify", { message: "hi2" }),
          { message: "hi2", touched: true }, k);
      }
      await c.fetch.event("app.events.par", { x: 1 });
      await rejects(c.fetch.eventWithResult("app.events.par", { x: 1 }), tunnelError(
        "PARALLEL_EVENT_RETURN_UNSUPPORTED",
        "Event app.events.par is marked parallel; returning a payload is not supported."));
      const r = await post(t, "/__runner/event/app.events.notify", '{"payload":{"message":"hi"}}');
      assert.equal(r.text, '{"ok":true}');
      const p = await post(t, "/__runner/event/app.events.par", '{"payload":1,"returnPayload":true}');
      assert.equal(p.status, 400);
    });

    test("CORS preflight and headers on errors", T, async () => {
      const p = await raw(t, "/__runner/task/app.tasks.add", {
        method: "OPTIONS",
        headers: { origin: "http://example.test", "access-control-request-method": "POST",
          "access-control-request-headers": "content-type,x-runner-token" },
      });
      assert.equal(p.status, 204);
      assert.equal(p.headers.get("access-control-allow-origin"), "*");
      assert.match(p.headers.get("access-control-allow-methods"), /\bPOST\b/);
      assert.equal(p.headers.get("access-control-allow-headers"), "content-type,x-runner-token");
      const e = await raw(t, "/__runner/task/app.tasks.add", { method: "POST", body: "{}" });
      assert.equal(e.status, 401);
      assert.equal(e.headers.get("access-control-allow-origin"), "*");
      assert.ok(e.headers.get("x-runner-request-id"));
    });

    test("discovery lists the allow-list", T, async () => {
      const r = await raw(t, "/__runner/discovery", { headers: { "x-runner-token": TOKEN } });
      assert.equal(r.status, 200);
      assert.equal(r.json.ok, true);
      assert.equal(r.json.result.allowList.enabled, true);
      const tasks = name === "runner" ? TASK_IDS : [...TASK_IDS, GHOST];
      assert.deepEqual([...r.json.result.allowList.tasks].sort(), [...tasks].sort());
      assert.deepEqual([...r.json.result.allowList.events].sort(), [...EVENT_IDS].sort());
      const p = await raw(t, "/__runner/discovery", { method: "POST", headers: { "x-runner-token": TOKEN } });
      assert.equal(p.status, 405);
      assert.equal(p.json.error.code, "METHOD_NOT_ALLOWED");
      const u = await raw(t, "/__runner/discovery");
      assert.equal(u.status, 401);
    });

    test("serializer round trips through app.tasks.echo", T, async () => {
      const value = {
        date: new Date("2024-01-02T03:04:05.678Z"),
        map: new Map([["k", 1], [2, new Date(5)]]),
        set: new Set([1, "two"]),
        big: 12345678901234567890n,
        bytes: new Uint8Array([0, 1, 254, 255]),
        re: /a+b/gi,
        nan: NaN,
        inf: -Infinity,
        nested: { u: undefined, arr: [1, null, "x"] },
        lookalike: { __type: "Date", value: "not-a-date" },
        unicode: "h\u00e9llo \u2603 \ud83d\ude00",
      };
      for (const k of ["fetch", "smart", "mixed"]) {
        const back = await c[k].task("app.tasks.echo", value);
        assert.deepEqual(back, value, k);
      }
      // Records travel byte-for-byte; an unknown type is refused.
      const ok = await post(t, "/__runner/task/app.tasks.echo",
        '{"input":{"d":{"__type":"Date","value":"1970-01-01T00:00:00.005Z"}}}');
      assert.equal(ok.text, '{"ok":true,"result":{"d":{"__type":"Date","value":"1970-01-01T00:00:00.005Z"}}}');
      const bad = await post(t, "/__runner/task/app.tasks.echo", '{"input":{"__type":"Nope","value":1}}');
      assert.equal(bad.status, 400);
      assert.equal(bad.text, '{"ok":false,"error":{"message":"Invalid JSON body","code":"INVALID_JSON"}}');
      const syntax = await post(t, "/__runner/task/app.tasks.echo", '{"input":');
      assert.equal(syntax.status, 400);
      assert.equal(syntax.json.error.code, "INVALID_JSON");
    });

    test("file upload: smart and mixed (Node files), fetch (Blob)", T, async () => {
      const small = Buffer.from("hello world");
      const big = pattern(3 * 1024 * 1024 + 17);
      const cases = [
        ["smart", c.smart, createNodeFile({ name: "hello.txt", type: "text/plain" }, { buffer: small }, "F1"), small],
        ["mixed", c.mixed, createNodeFile({ name: "big.bin", type: "application/octet-stream" },
          { stream: Readable.from([big.subarray(0, 1 << 20), big.subarray(1 << 20)]) }, "F2"), big],
      ];
      for (const [k, client, file, bytes] of cases) {
        const r = await client.task("app.tasks.upload", { note: { when: new Date(1) }, file });
        assert.deepEqual(r, { name: file.meta.name, type: file.meta.type, bytes: bytes.length, sha256: sha256(bytes) }, k);
      }
      const blob = new Blob([small], { type: "text/plain" });
      const webFile = { $runnerFile: "File", id: "W1", meta: { name: "web.txt", type: "text/plain" }, _web: { blob } };
      const r = await c.fetch.task("app.tasks.upload", { file: webFile });
      assert.deepEqual(r, { name: "web.txt", type: "text/plain", bytes: small.length, sha256: sha256(small) });
    });

    test("streamed response (smart client, octet call)", T, async () => {
      const out = await withTimeout(c.smart.task("app.tasks.stream", Readable.from([Buffer.from("x")])), STEP, "stream");
      assert.equal(typeof out.pipe, "function");
      assert.equal((await readAll(out)).toString(), "chunk1\nchunk2\n");
    });

    test("octet-stream request body (smart client)", T, async () => {
      const r = await c.smart.task("app.tasks.octet", Readable.from([pattern(1000)]));
      assert.deepEqual(r, { receivedBytes: 1000 });
      const big = pattern(5 * 1024 * 1024 + 3);
      const chunks = [];
      for (let i = 0; i < big.length; i += 256 * 1024) chunks.push(big.subarray(i, i + 256 * 1024));
      assert.deepEqual(await c.mixed.task("app.tasks.octet", Readable.from(chunks)), { receivedBytes: big.length });
    });

    test("duplex: the reply starts before the request body ends", T, async () => {
      const body = new PassThrough();
      body.write("abc");
      // The smart client resolves on the response head, so this only
      // settles if the server answers while the body is still open.
      const res = await withTimeout(c.smart.task("app.tasks.duplex", body), STEP, "duplex response head");
      const first = await withTimeout(new Promise((resolve) => res.once("data", resolve)), STEP, "first chunk");
      assert.equal(first.toString(), "ABC");
      const rest = readAll(res);
      body.write("def");
      body.end("gh");
      assert.equal((await withTimeout(rest, STEP, "rest")).toString(), "DEFGH");
    });

    test("auth: missing or wrong token is UNAUTHORIZED", T, async () => {
      const bad = clients(t, { auth: { token: "wrong" } });
      await rejects(bad.fetch.task("app.tasks.add", { a: 1, b: 2 }), tunnelError("UNAUTHORIZED", "Unauthorized"));
      await rejects(bad.smart.task("app.tasks.add", { a: 1, b: 2 }), tunnelError("UNAUTHORIZED", "Unauthorized"));
      await rejects(bad.fetch.event("app.events.notify", {}), tunnelError("UNAUTHORIZED"));
      const none = await raw(t, "/__runner/task/app.tasks.add", { method: "POST", body: "{}" });
      assert.equal(none.status, 401);
      assert.equal(none.text, '{"ok":false,"error":{"message":"Unauthorized","code":"UNAUTHORIZED"}}');
    });

    test("403 for an id left off the allow-list", T, async () => {
      await rejects(c.fetch.task("app.tasks.hidden"), tunnelError("FORBIDDEN", "Task app.tasks.hidden not exposed"));
      await rejects(c.smart.task("app.tasks.hidden"), tunnelError("FORBIDDEN", "Task app.tasks.hidden not exposed"));
      await rejects(c.fetch.event("app.events.hidden"), tunnelError("FORBIDDEN", "Event app.events.hidden not exposed"));
      const r = await post(t, "/__runner/task/app.tasks.hidden", "{}");
      assert.equal(r.status, 403);
    });

    test("404 for an allow-listed id nobody serves, and for bad routes", T, async () => {
      if (name !== "runner") {
        await rejects(c.fetch.task(GHOST), tunnelError("NOT_FOUND", `Task ${GHOST} not found`));
        const r = await post(t, `/__runner/task/${GHOST}`, "{}");
        assert.equal(r.status, 404);
      }
      const route = await post(t, "/__runner/nothing/here", "{}");
      assert.equal(route.status, 404);
      assert.equal(route.text, '{"ok":false,"error":{"message":"Not Found","code":"NOT_FOUND"}}');
    });

    test("x-runner-context reaches the async context", T, async () => {
      const cc = clients(t, { contexts: [userCtx] });
      const user = { id: "u1", since: new Date(5) };
      for (const k of ["fetch", "smart", "mixed"]) {
        const r = await userCtx.provide(user, () => cc[k].task("app.tasks.whoami", {}));
        assert.deepEqual(r, { user }, k);
      }
      assert.deepEqual(await c.fetch.task("app.tasks.whoami", {}), { user: null });
      // Unknown or unparseable entries are ignored.
      const junk = await post(t, "/__runner/task/app.tasks.whoami", "{}", { "x-runner-context": "{not json" });
      assert.equal(junk.text, '{"ok":true,"result":{"user":null}}');
      const raw2 = await post(t, "/__runner/task/app.tasks.whoami", "{}",
        { "x-runner-context": '{"app.ctx.user":"{\\"id\\":\\"u2\\"}","app.ctx.other":"1"}' });
      assert.equal(raw2.text, '{"ok":true,"result":{"user":{"id":"u2"}}}');
    });

    test("request id is echoed, or generated", T, async () => {
      const r = await post(t, "/__runner/task/app.tasks.add", '{"input":{"a":1,"b":1}}',
        { "x-runner-request-id": "req-42.a:b_c" });
      assert.equal(r.headers.get("x-runner-request-id"), "req-42.a:b_c");
      const g = await post(t, "/__runner/task/app.tasks.add", '{"input":{"a":1,"b":1}}',
        { "x-runner-request-id": "bad id!" });
      assert.match(g.headers.get("x-runner-request-id"), UUID4);
      const e = await post(t, "/__runner/task/app.tasks.boom", "{}", { "x-runner-request-id": "err-1" });
      assert.equal(e.headers.get("x-runner-request-id"), "err-1");
      // Through a real client: onRequest adds the header, fetchImpl sees the reply.
      let seen;
      const cl = createHttpClient({
        baseUrl: t.baseUrl, auth: { token: TOKEN }, serializer: new Serializer(),
        onRequest: ({ headers }) => { headers["x-runner-request-id"] = "client-7"; },
        fetchImpl: async (...a) => {
          const res = await fetch(...a);
          seen = res.headers.get("x-runner-request-id");
          return res;
        },
      });
      assert.equal(await cl.task("app.tasks.add", { a: 2, b: 2 }), 4);
      assert.equal(seen, "client-7");
    });

    test("typed errors: status, shape, errorRegistry rethrow", T, async () => {
      const r = await post(t, "/__runner/task/app.tasks.fail", "{}");
      assert.equal(r.status, 409);
      assert.equal(r.text, '{"ok":false,"error":{"message":"{\\"code\\":\\"X1\\",\\"why\\":\\"dup\\"}",'
        + '"code":"INTERNAL_ERROR","id":"app.errors.AppError","data":{"code":"X1","why":"dup"},"httpCode":409}}');
      await rejects(c.fetch.task("app.tasks.fail"), (err) => {
        tunnelError("INTERNAL_ERROR")(err);
        assert.equal(err.id, "app.errors.AppError");
        assert.deepEqual(err.data, { code: "X1", why: "dup" });
        assert.equal(err.httpCode, 409);
      });
      const typed = clients(t, { errorRegistry: new Map([[AppError.id, AppError]]) });
      for (const k of ["fetch", "smart", "mixed"]) {
        await rejects(typed[k].task("app.tasks.fail"), (err) => {
          assert.ok(AppError.is(err), `${k}: ${err.stack}`);
          assert.deepEqual(err.data, { code: "X1", why: "dup" });
        });
      }
    });

    test("untyped failures are a sanitised 500", T, async () => {
      const r = await post(t, "/__runner/task/app.tasks.boom", "{}");
      assert.equal(r.status, 500);
      assert.equal(r.text, '{"ok":false,"error":{"message":"Internal Error","code":"INTERNAL_ERROR"}}');
      await rejects(c.fetch.task("app.tasks.boom"), tunnelError("INTERNAL_ERROR", "Internal Error"));
      await rejects(c.smart.task("app.tasks.boom"), tunnelError("INTERNAL_ERROR", "Internal Error"));
    });

    test("pool: killed workers fail their calls with 502 and are respawned", {
      ...T, skip: name !== "pool" && "pool only",
    }, async () => {
      const kids = () => readFileSync(`/proc/${t.proc.pid}/task/${t.proc.pid}/children`, "utf8")
        .trim().split(/\s+/).filter(Boolean).map(Number);
      const before = kids();
      assert.equal(before.length, 2, `worker pids ${before}`);
      // Settled handlers attached at once: both reject about together.
      // (fetch clients: the smart client's node:http requests inherit the
      // global agent's 5 s socket timeout on Node 20 -> REQUEST_TIMEOUT.)
      const calls = [c.fetch.task("app.tasks.slow", { ms: 20000 }), c.mixed.task("app.tasks.slow", { ms: 20000 })]
        .map((p) => p.then(() => assert.fail("a call on a killed worker succeeded"), (e) => e));
      // Let both calls reach the workers (dispatch takes milliseconds).
      await new Promise((r) => setTimeout(r, 1000 * SLOW));
      for (const pid of before) process.kill(pid, "SIGKILL");
      for (const err of await Promise.all(calls)) tunnelError("WORKER_EXITED", "Worker exited")(err);
      // Respawned (after a backoff) and serving again.
      const until = Date.now() + 60000 * SLOW;
      for (;;) {
        try {
          assert.equal(await c.fetch.task("app.tasks.add", { a: 2, b: 3 }), 5);
          break;
        } catch (err) {
          if (Date.now() > until) throw err;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      assert.ok(kids().every((pid) => !before.includes(pid)));
    });

    test("a client timeout does not disturb later calls", T, async () => {
      const quick = clients(t, { timeoutMs: 200 });
      await rejects(quick.fetch.task("app.tasks.slow", { ms: 3000 }), (err) => assert.ok(err));
      assert.equal(await c.fetch.task("app.tasks.slow", { ms: 10 }), "done");
      const many = await Promise.all(Array.from({ length: 50 }, (_, i) => c.fetch.task("app.tasks.add", { a: i, b: 1 })));
      assert.deepEqual(many, Array.from({ length: 50 }, (_, i) => i + 1));
    });
  });
}
