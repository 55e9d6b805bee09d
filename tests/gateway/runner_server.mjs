// Runner's own Node server (nodeExposure) serving the shared test app: the
// reference the interop tests validate themselves against, and the
// baseline of bench/gateway/run.
// Usage: node tests/gateway/runner_server.mjs [PORT] [--token T] [--cors JSON]
// (--cors: Runner's http.cors object; "originRegex": S becomes origin: new RegExp(S))
// Prints "listening on http://127.0.0.1:PORT" once ready.
import { createRequire } from "node:module";
import { buildApp } from "../../workers/node/example/app.mjs";

// The CommonJS build: the ESM one fails to load in 5.5.0 (see app.mjs).
const { run, nodeExposure } = createRequire(import.meta.url)("@bluelibs/runner");

const args = process.argv.slice(2);
let token = "secret";
let port = 0;
let cors;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--token") token = args[++i];
  else if (args[i] === "--cors") cors = JSON.parse(args[++i]);
  else port = Number(args[i]);
}
if (cors && typeof cors.originRegex === "string") {
  cors.origin = new RegExp(cors.originRegex);
  delete cors.originRegex;
}

const app = buildApp([
  nodeExposure.with({
    http: { basePath: "/__runner", listen: { port, host: "127.0.0.1" }, auth: { token }, ...(cors ? { cors } : {}) },
  }),
]);
let runtime;
try {
  runtime = await run(app, { logs: { printThreshold: null }, shutdownHooks: false });
} catch (err) {
  // (Runner's error boundary would otherwise let the process end with 0.)
  console.error("runner_server: cannot start:", err);
  process.exit(1);
}
const exposure = runtime.getResourceValue(nodeExposure);
const addr = exposure.server.address();
process.stdout.write(`listening on http://127.0.0.1:${addr.port}\n`);

const stop = async () => {
  await runtime.dispose();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
