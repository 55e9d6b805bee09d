// CORS (spec §5.5) against Runner 5.5.0's own server: for each configuration
// that both support, Runner's server and culvert gateway (with the Node
// worker) get the same requests, and the CORS header lines of the replies
// (Vary, Access-Control-*: names, casing, values and order) must be equal.
// Preflights, a 200, a 401 and a routing 404 are compared, with an Origin
// that matches, one that does not, and none.
//
// Differences by design (§14.1): without configured methods culvert's
// preflight lists GET too, so every configuration here sets methods.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { SLOW, TARGETS, TOKEN, startTarget } from "./harness.mjs";

const T = { timeout: 90000 * SLOW };

// name -> [Runner's http.cors, culvert gateway flags]
const CONFIGS = {
  list: [
    { origin: ["https://a.example", "https://b.example"], methods: ["POST", "GET", "OPTIONS"] },
    ["--cors-origin", "https://a.example", "--cors-origin", "https://b.example", "--cors-methods", "POST, GET, OPTIONS"],
  ],
  regexCredentials: [
    { originRegex: "^https://[a-z]+\\.dev$", credentials: true, exposedHeaders: ["x-a", "x-b"], maxAge: 600,
      methods: ["POST"], allowedHeaders: ["content-type", "x-runner-token"] },
    ["--cors-origin-regex", "^https://[a-z]+\\.dev$", "--cors-credentials", "--cors-expose", "x-a,x-b",
      "--cors-max-age", "600", "--cors-methods", "POST", "--cors-allowed-headers", "content-type, x-runner-token"],
  ],
  credentialsNoOrigin: [
    { credentials: true, methods: ["POST", "OPTIONS"] },
    ["--cors-credentials", "--cors-methods", "POST, OPTIONS"],
  ],
  noVary: [
    { origin: ["https://a.example"], varyOrigin: false, methods: ["POST", "OPTIONS"] },
    ["--cors-origin", "https://a.example", "--cors-origin-regex", "^$", "--cors-no-vary", "--cors-methods", "POST, OPTIONS"],
  ],
  fixed: [
    { origin: "https://fixed.example", credentials: true, methods: ["POST", "OPTIONS"] },
    ["--cors-origin", "https://fixed.example", "--cors-credentials", "--cors-methods", "POST, OPTIONS"],
  ],
};

const ORIGINS = [undefined, "https://a.example", "https://b.example", "https://x.dev", "https://evil.example"];

// One raw request; resolves with the CORS header lines of the reply, in order.
function corsLines(origin, method, path, headers, body = "") {
  return new Promise((resolve, reject) => {
    const u = new URL(origin);
    const s = net.connect(Number(u.port), u.hostname);
    let buf = "";
    s.setEncoding("latin1");
    s.on("data", (d) => {
      buf += d;
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      s.destroy();
      const lines = buf.slice(0, end).split("\r\n");
      const status = Number(lines[0].split(" ")[1]);
      resolve({ status, cors: lines.slice(1).filter((l) => /^(vary|access-control-)/i.test(l)) });
    });
    s.on("error", reject);
    const h = { Host: u.host, ...headers };
    const head = Object.entries(h).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    s.write(`${method} ${path} HTTP/1.1\r\n${head}\r\n${body}`);
  });
}

async function probe(t) {
  const out = [];
  for (const o of ORIGINS) {
    out.push(["preflight", o, await corsLines(t.origin, "OPTIONS", "/__runner/task/app.tasks.add",
      { Origin: o, "Access-Control-Request-Headers": "content-type, x-runner-token" })]);
    out.push(["preflight-bare", o, await corsLines(t.origin, "OPTIONS", "/__runner/task/app.tasks.add", { Origin: o })]);
    const body = '{"input":{"a":1,"b":2}}';
    const json = { "content-type": "application/json", "content-length": String(body.length), Origin: o };
    const ok = await corsLines(t.origin, "POST", "/__runner/task/app.tasks.add", { ...json, "x-runner-token": TOKEN }, body);
    out.push(["200", o, ok]);
    out.push(["401", o, await corsLines(t.origin, "POST", "/__runner/task/app.tasks.add", json, body)]);
    out.push(["404", o, await corsLines(t.origin, "POST", "/__runner/nothing/here", { ...json, "x-runner-token": TOKEN }, body)]);
  }
  return out;
}

for (const [name, [runnerCors, flags]] of Object.entries(CONFIGS)) {
  test(`CORS ${name}: culvert's header lines equal Runner's`, { ...T, skip: TARGETS.pool.skip ?? false }, async () => {
    const ref = await startTarget("runner", ["--cors", JSON.stringify(runnerCors)]);
    let got;
    let want;
    try {
      want = await probe(ref);
    } finally {
      await ref.stop();
    }
    const gw = await startTarget("pool", [...flags, "--workers", "1"]);
    try {
      got = await probe(gw);
    } finally {
      await gw.stop();
    }
    // The probe is not vacuous: some replies carry an echoed origin or Vary.
    assert.ok(want.some(([, , r]) => r.cors.length > 0));
    for (let i = 0; i < want.length; i++) {
      assert.deepEqual(got[i], want[i], `${want[i][0]} with Origin ${want[i][1]}`);
    }
  });
}
