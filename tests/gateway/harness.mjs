// Shared helpers of the gateway interop tests: the three targets that serve
// the shared test app (workers/node/example/app.mjs), and small utilities.
//
//   runner  Runner's own Node server (tests/gateway/runner_server.mjs): the
//           reference, which validates the tests themselves
//   native  $CULVERT_BUILD/gateway_native (examples/gateway_native.c)
//   pool    $CULVERT_BIN gateway --worker 'node workers/node/example/worker.mjs'
//
// A target whose binary is not built is skipped with the reason, unless
// CULVERT_GATEWAY_REQUIRE=1 (scripts/test sets it): then it fails.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, lstatSync, symlinkSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

// workers/node resolves its peer @bluelibs/runner through a link to the
// test install (scripts/setup makes it; so does this, for worktrees that
// did not run setup).
const HERE0 = path.dirname(fileURLToPath(import.meta.url));
const LINK = path.resolve(HERE0, "..", "..", "workers", "node", "node_modules");
try {
  lstatSync(LINK);
} catch {
  symlinkSync("../../tests/node_modules", LINK);
}

export const require = createRequire(import.meta.url);
export const runner = require("@bluelibs/runner");

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
export const BUILD = path.resolve(REPO, process.env.CULVERT_BUILD || "build");
export const BIN = path.resolve(REPO, process.env.CULVERT_BIN || path.join(BUILD, "culvert"));
export const WORKER = path.join(REPO, "workers", "node", "example", "worker.mjs");
export const TOKEN = "secret";
// Sanitized builds are several times slower.
export const SLOW = process.env.CULVERT_SANITIZED ? 3 : 1;
export const STEP = 10000 * SLOW;
export const REQUIRE = process.env.CULVERT_GATEWAY_REQUIRE === "1";

const LISTEN_RE = /listening on (?:https?:\/\/)?(\[[^\]]+\]|[\d.]+|localhost):(\d+)/;

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function gatewayMissing() {
  if (!existsSync(BIN)) return `${BIN} not built (set CULVERT_BIN)`;
  const r = spawnSync(BIN, ["gateway", "--help"], { encoding: "utf8", timeout: 10000 });
  const text = `${r.stdout}${r.stderr}`;
  if (!/--worker/.test(text)) return `${BIN} has no 'gateway --worker' command yet`;
  return null;
}

// culvert targets also allow-list app.tasks.ghost, which no backend serves
// (404 "Task app.tasks.ghost not found"); Runner cannot be configured so.
export const GHOST = "app.tasks.ghost";

export async function allowArgs() {
  const { TASK_IDS, EVENT_IDS } = await import("../../workers/node/example/app.mjs");
  const args = [];
  for (const id of [...TASK_IDS, GHOST]) args.push("--allow-task", id);
  for (const id of EVENT_IDS) args.push("--allow-event", id);
  return args;
}

// name -> { skip: reason } or { argv: async () => [cmd, ...args] }
export const TARGETS = {
  runner: {
    skip: null,
    argv: async () => [process.execPath, path.join(HERE, "runner_server.mjs"), "0", "--token", TOKEN],
  },
  native: {
    skip: existsSync(path.join(BUILD, "gateway_native"))
      ? null
      : `${path.join(BUILD, "gateway_native")} not built (examples/gateway_native.c)`,
    argv: async () => [path.join(BUILD, "gateway_native"), "--listen", "127.0.0.1:0", "--token", TOKEN,
      ...(await allowArgs())],
  },
  pool: {
    skip: gatewayMissing(),
    argv: async () => [BIN, "gateway", "--listen", "127.0.0.1:0", "--token", TOKEN,
      ...(await allowArgs()),
      "--worker", `${process.execPath} ${WORKER}`, "--workers", "2"],
  },
};

// Starts a target (extra: arguments appended to its command line);
// resolves with { origin, baseUrl, proc, output(), stop() }.
export async function startTarget(name, extra = []) {
  const [cmd, ...args] = [...(await TARGETS[name].argv()), ...extra];
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: process.env });
  let out = "";
  const onData = (d) => { out += d; };
  proc.stdout.setEncoding("utf8");
  proc.stderr.setEncoding("utf8");
  proc.stdout.on("data", onData);
  proc.stderr.on("data", onData);
  const exited = new Promise((resolve) => proc.on("exit", (code, sig) => resolve({ code, sig })));
  const port = await withTimeout(new Promise((resolve, reject) => {
    const check = () => {
      const m = LISTEN_RE.exec(out);
      if (m) resolve(Number(m[2]));
    };
    proc.stdout.on("data", check);
    proc.stderr.on("data", check);
    exited.then(({ code, sig }) => reject(new Error(`${name} exited (${code ?? sig}) before listening:\n${out}`)));
  }), 20000 * SLOW, `${name} to listen`);
  const origin = `http://127.0.0.1:${port}`;
  // Listening is not ready: the pool's Node workers may still be loading
  // (seconds on a busy machine, past the 5 s queue timeout). Wait until a
  // call succeeds.
  const until = Date.now() + 60000 * SLOW;
  for (;;) {
    let status = 0;
    try {
      const r = await fetch(`${origin}/__runner/task/app.tasks.add`, {
        method: "POST",
        headers: { "content-type": "application/json; charset=utf-8", "x-runner-token": TOKEN },
        body: '{"input":{"a":1,"b":2}}',
      });
      status = r.status;
      await r.text();
    } catch {
      status = 0;
    }
    if (status === 200) break;
    if (Date.now() > until) throw new Error(`${name} not ready (last status ${status}):\n${out}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    name,
    origin,
    baseUrl: `${origin}/__runner`,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      const r = await withTimeout(exited, 15000 * SLOW, `${name} to exit on SIGTERM`).catch((e) => {
        proc.kill("SIGKILL");
        throw e;
      });
      return r;
    },
  };
}

// Raw HTTP with fetch (no Runner client): { status, headers, text, json }.
export async function raw(t, pathname, init = {}) {
  const res = await fetch(t.origin + pathname, { redirect: "manual", ...init });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export function post(t, pathname, body, headers = {}) {
  return raw(t, pathname, {
    method: "POST",
    headers: { "content-type": "application/json; charset=utf-8", "x-runner-token": TOKEN, ...headers },
    body,
  });
}

export async function readAll(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}

export function pattern(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + 3) % 251;
  return b;
}
