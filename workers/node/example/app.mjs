// The example Runner app served by culvert's Node worker, and the shared
// test app of the interop suite (tests/gateway/): the same ids and
// semantics are implemented natively in examples/gateway_native.c, so the
// tests run unchanged against Runner's own server, the native example and
// the worker pool.
//
// Nothing here knows about culvert: it is plain @bluelibs/runner 5.5.0
// code (tasks, events + hooks, an async context, a typed error, an octet
// and a duplex task using useExposureContext()), exposed by a server-mode
// tunnel resource, the way a Runner app declares its allow-list.
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { Readable } from "node:stream";

// Runner 5.5.0's ESM Node build (dist/node/node.mjs) throws at import
// ('Dynamic require of "events" is not supported', from its bundled
// express), so ESM code loads the CommonJS build.
const require = createRequire(import.meta.url);
const { r, globals, useExposureContext } = require("@bluelibs/runner");

// Async context propagated by clients in the x-runner-context header.
export const userCtx = r.asyncContext("app.ctx.user").build();

// A typed error: 409 with data; clients with an errorRegistry rethrow it.
export const AppError = r.error("app.errors.AppError").httpCode(409).build();

const add = r
  .task("app.tasks.add")
  .run(async (input) => input.a + input.b)
  .build();

const whoami = r
  .task("app.tasks.whoami")
  .run(async () => {
    let user = null;
    try {
      user = userCtx.use();
    } catch {
      // No context provided for this call.
    }
    return { user };
  })
  .build();

const echo = r
  .task("app.tasks.echo")
  .run(async (input) => input)
  .build();

const noop = r
  .task("app.tasks.noop")
  .run(async () => undefined)
  .build();

const fail = r
  .task("app.tasks.fail")
  .run(async () => {
    AppError.throw({ code: "X1", why: "dup" });
  })
  .build();

const boom = r
  .task("app.tasks.boom")
  .run(async () => {
    throw new Error("secret database detail");
  })
  .build();

// Multipart: input.file is an InputFile with a single-use stream.
const upload = r
  .task("app.tasks.upload")
  .run(async (input) => {
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of input.file.stream()) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    return {
      name: input.file.name,
      type: input.file.type,
      bytes,
      sha256: hash.digest("hex"),
    };
  })
  .build();

// Octet stream: the input is undefined, the body is the request stream.
const octet = r
  .task("app.tasks.octet")
  .run(async () => {
    const { req } = useExposureContext();
    let receivedBytes = 0;
    for await (const chunk of req) receivedBytes += chunk.length;
    return { receivedBytes };
  })
  .build();

// A streamed response.
const stream = r
  .task("app.tasks.stream")
  .run(async () => Readable.from([Buffer.from("chunk1\n"), Buffer.from("chunk2\n")]))
  .build();

// Duplex: writes the upper-cased body while it is still arriving.
const duplex = r
  .task("app.tasks.duplex")
  .run(async () => {
    const { req, res } = useExposureContext();
    res.statusCode = 200;
    res.setHeader("content-type", "application/octet-stream");
    await new Promise((resolve, reject) => {
      req.on("data", (chunk) => res.write(Buffer.from(chunk.toString("latin1").toUpperCase(), "latin1")));
      req.on("end", () => {
        res.end();
        resolve();
      });
      req.on("error", reject);
    });
  })
  .build();

const slow = r
  .task("app.tasks.slow")
  .run(async (input) => {
    // Stops early when the caller goes away (the exposure's abort signal).
    const { signal } = useExposureContext();
    await new Promise((resolve, reject) => {
      const t = setTimeout(resolve, input?.ms ?? 0);
      signal.addEventListener("abort", () => {
        clearTimeout(t);
        reject(new Error("aborted"));
      }, { once: true });
    });
    return "done";
  })
  .build();

// Registered but left off the allow-list: 403 over HTTP.
const hidden = r
  .task("app.tasks.hidden")
  .run(async () => "should not be reachable")
  .build();

const notify = r.event("app.events.notify").build();
const par = r.event("app.events.par").parallel(true).build();

const touch = r
  .hook("app.hooks.touch")
  .on(notify)
  .run(async (event) => {
    if (event.data && typeof event.data === "object") event.data.touched = true;
  })
  .build();

const parHook = r
  .hook("app.hooks.par")
  .on(par)
  .run(async () => {})
  .build();

// The allow-list. (Runner refuses, at init, a tunnel naming an id that is
// not registered; culvert's gateway may allow-list ids no backend serves.)
export const TASK_IDS = [
  "app.tasks.add", "app.tasks.whoami", "app.tasks.echo", "app.tasks.noop",
  "app.tasks.fail", "app.tasks.boom", "app.tasks.upload", "app.tasks.octet",
  "app.tasks.stream", "app.tasks.duplex", "app.tasks.slow",
];
export const EVENT_IDS = ["app.events.notify", "app.events.par"];

// The server-mode tunnel resource is the app's allow-list.
const exposure = r
  .resource("app.tunnels.exposure")
  .tags([globals.tags.tunnel])
  .init(async () => ({
    transport: "http",
    mode: "server",
    tasks: TASK_IDS,
    events: EVENT_IDS,
  }))
  .build();

export const items = [
  userCtx, AppError, add, whoami, echo, noop, fail, boom, upload, octet,
  stream, duplex, slow, hidden, notify, par, touch, parHook, exposure,
];

// The app root. extra: more registrations (e.g. nodeExposure for the
// reference server).
export function buildApp(extra = []) {
  return r.resource("app").register([...items, ...extra]).build();
}

export const app = buildApp();
