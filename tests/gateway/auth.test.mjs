// Delegated auth end to end (spec §5.1, §13.4 "auth"): culvert gateway
// --auth-worker in front of the real Node worker, whose app
// (fixtures/big_worker.mjs) has a Runner authValidator task admitting
// requests with "x-fixture-key: open" under /__runner/. A token still
// passes without asking; everything else is a 401 envelope; the real
// Runner client with a wrong token but the key header gets through.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { BIN, HERE, SLOW, TARGETS, TOKEN, runner, withTimeout } from "./harness.mjs";

const T = { timeout: 90000 * SLOW, skip: TARGETS.pool.skip ?? false };
const FIXTURE = path.join(HERE, "fixtures", "big_worker.mjs");
const DIST = '{"input":{"__type":"Distance","value":{"value":2,"unit":"m"}}}';

async function start() {
  const proc = spawn(BIN, ["gateway", "--listen", "127.0.0.1:0", "--token", TOKEN, "--auth-worker",
    "--allow-task", "fx.tasks.double", "--worker", `${process.execPath} ${FIXTURE}`, "--workers", "1"],
  { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  proc.stdout.setEncoding("utf8");
  proc.stderr.setEncoding("utf8");
  proc.stdout.on("data", (d) => { out += d; });
  proc.stderr.on("data", (d) => { out += d; });
  const exited = new Promise((resolve) => proc.on("exit", (code, sig) => resolve(code ?? sig)));
  await withTimeout((async () => {
    while (!/worker 0 ready/.test(out) || !/listening on/.test(out)) await new Promise((r) => setTimeout(r, 50));
  })(), 30000 * SLOW, `gateway and worker to start:\n${out}`);
  const port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)[1]);
  return {
    origin: `http://127.0.0.1:${port}`,
    output: () => out,
    async stop() {
      proc.kill("SIGTERM");
      return withTimeout(exited, 15000 * SLOW, "gateway to exit");
    },
  };
}

async function call(g, headers, body = DIST, pathname = "/__runner/task/fx.tasks.double") {
  const res = await fetch(g.origin + pathname, {
    method: body === null ? "GET" : "POST",
    headers: { "content-type": "application/json", ...headers },
    body: body === null ? undefined : body,
  });
  return { status: res.status, text: await res.text() };
}

const UNAUTH = '{"ok":false,"error":{"message":"Unauthorized","code":"UNAUTHORIZED"}}';
const DOUBLED = '{"ok":true,"result":{"__type":"Distance","value":{"value":4,"unit":"m"}}}';

test("delegated auth: the app's authValidator admits and refuses through the gateway", T, async () => {
  const g = await start();
  try {
    assert.match(g.output(), /worker 0 ready \(.*auth\)/);
    assert.deepEqual(await call(g, { "x-runner-token": TOKEN }), { status: 200, text: DOUBLED });
    assert.deepEqual(await call(g, { "x-runner-token": "wrong", "x-fixture-key": "open" }), { status: 200, text: DOUBLED });
    assert.deepEqual(await call(g, { "x-fixture-key": "open" }), { status: 200, text: DOUBLED });
    assert.deepEqual(await call(g, { "x-fixture-key": "shut" }), { status: 401, text: UNAUTH });
    assert.deepEqual(await call(g, {}), { status: 401, text: UNAUTH });
    // discovery goes through the same auth
    assert.equal((await call(g, { "x-fixture-key": "open" }, null, "/__runner/discovery")).status, 200);
    assert.deepEqual(await call(g, { "x-fixture-key": "no" }, null, "/__runner/discovery"), { status: 401, text: UNAUTH });
    // the real fetch client (with the app's custom type), a wrong token and the key header
    class Distance {
      constructor(value, unit) {
        this.value = value;
        this.unit = unit;
      }
    }
    const serializer = new runner.Serializer();
    serializer.addType({
      id: "Distance",
      is: (v) => v instanceof Distance,
      serialize: (d) => ({ value: d.value, unit: d.unit }),
      deserialize: (j) => new Distance(j.value, j.unit),
      strategy: "value",
    });
    const withKey = runner.createHttpClient({ baseUrl: `${g.origin}/__runner`, auth: { token: "nope" }, serializer,
      onRequest: ({ headers }) => { headers["x-fixture-key"] = "open"; } });
    const d = await withKey.task("fx.tasks.double", new Distance(2.5, "km"));
    assert.ok(d instanceof Distance);
    assert.deepEqual({ ...d }, { value: 5, unit: "km" });
    const refused = await runner.createHttpClient({ baseUrl: `${g.origin}/__runner`, auth: { token: "nope" }, serializer })
      .task("fx.tasks.double", new Distance(1, "m")).then(() => null, (e) => e);
    assert.equal(refused?.code, "UNAUTHORIZED");
  } finally {
    assert.equal(await g.stop(), 0);
  }
});
