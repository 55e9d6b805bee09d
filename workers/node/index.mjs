// culvert-worker: serves an existing @bluelibs/runner app to `culvert
// gateway --worker` over the cwp/1 line protocol (specs/runner-http.md
// §13.4): one JSON object per line, requests on stdin, replies and frames
// on stdout.
//
//   import { serveWorker } from "culvert-worker";
//   import { app } from "./app.mjs";
//   serveWorker(app);
//
// Tasks run through the Runner runtime (middleware, validation, typed
// errors, async contexts), exactly as nodeExposure runs them: the same
// input selection, x-runner-context hydration, useExposureContext() (req,
// res, signal) for octet and duplex tasks, and the same error mapping and
// sanitisation. The gateway does HTTP, auth and the allow-list; the worker
// only executes.
import { createRequire } from "node:module";
import { Console } from "node:console";
import { Readable, Writable } from "node:stream";

// stdout carries protocol lines only. Keep the real writer for them and
// send everything else that writes to stdout (console, loggers, stray
// process.stdout.write) to stderr, which the gateway logs per worker.
const rawStdoutWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = (...args) => process.stderr.write(...args);
const errConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
for (const k of ["log", "info", "debug", "warn", "error", "trace", "dir", "table"]) {
  console[k] = errConsole[k].bind(errConsole);
}

export const PROTOCOL = "cwp/1";
const DEFAULT_WINDOW = 1024 * 1024;
const MAX_FRAME = 64 * 1024; // decoded bytes per data frame (§13.4)
const INTERNAL = { message: "Internal Error", code: "INTERNAL_ERROR" };
const INVALID_JSON = { message: "Invalid JSON body", code: "INVALID_JSON" };
// A line needs Runner's serializer only if it may hold typed records,
// escaped keys, graphs or keys the serializer drops; anything else decodes
// to the same value with JSON.parse alone (the hot path).
const NEEDS_SERIALIZER = /__type|\$runner\.escape::|__graph|__proto__|"constructor"|"prototype"/;
const BLOCKED_HEADERS = new Set([
  "set-cookie", "access-control-allow-origin", "access-control-allow-credentials",
  "x-content-type-options", "x-frame-options", "content-length", "transfer-encoding",
  "connection", "x-runner-request-id",
]);
const EXPOSURE_CTX_ID = "platform.node.ctx.exposureRequest";

const allEnded = (call) => {
  if (call.streams) for (const s of call.streams.values()) if (!s.ended) return false;
  return true;
};
const isReadable = (v) => !!v && typeof v.pipe === "function";
const isStreamingResponse = (v) => !!v && typeof v === "object" && isReadable(v.stream);
const validHttpCode = (v) => Number.isInteger(v) && v >= 100 && v <= 599;

function loadRunner() {
  // The CommonJS build: Runner 5.5.0's ESM Node build fails at import.
  return createRequire(import.meta.url)("@bluelibs/runner");
}

// The allow-list of the app's server-mode HTTP tunnel resources, as
// nodeExposure computes it (src/node/tunnel/allowlist.ts in 5.5.0).
function computeAllowList(store, tunnelTagId) {
  const tasks = new Set();
  const events = new Set();
  const taskCtx = new Map();
  const eventCtx = new Map();
  let enabled = false;
  const merge = (map, id, ok) => map.set(id, map.has(id) ? map.get(id) && ok : ok);
  const pick = (sel, all, set, ctxMap, ok) => {
    if (typeof sel === "function") {
      for (const item of all) {
        try {
          if (sel(item)) { set.add(item.id); merge(ctxMap, item.id, ok); }
        } catch (err) {
          console.warn(`[culvert-worker] allow-list selector failed for ${item.id}:`, err);
        }
      }
    } else if (Array.isArray(sel)) {
      for (const it of sel) {
        const id = typeof it === "string" ? it : it && it.id;
        if (id) { set.add(id); merge(ctxMap, id, ok); }
      }
    }
  };
  for (const entry of store.resources.values()) {
    if (!entry.resource.tags?.some((t) => t?.id === tunnelTagId)) continue;
    const v = entry.value;
    if (!v || typeof v !== "object") continue;
    if (v.mode !== "server" && v.mode !== "both") continue;
    if (v.transport && v.transport !== "http") continue;
    enabled = true;
    const ok = v.allowAsyncContext !== false;
    pick(v.tasks, [...store.tasks.values()].map((e) => e.task), tasks, taskCtx, ok);
    pick(v.events, [...store.events.values()].map((e) => e.event), events, eventCtx, ok);
  }
  return { enabled, tasks, events, taskCtx, eventCtx };
}

// A request stream fed by data/end frames (the octet body or a multipart
// file). Bytes are acknowledged once the consumer has taken them: at once
// while the readable buffer has room, else when it asks for more.
class InStream extends Readable {
  constructor(onAck) {
    super({ highWaterMark: 64 * 1024 });
    this._onAck = onAck;
    this._pendingAck = 0;
    this.ended = false;
    // Once the consumer has read everything (or the stream is destroyed),
    // no _read() follows: release what is still held.
    const release = () => this._read();
    this.once("end", release);
    this.once("close", release);
  }
  feed(buf) {
    if (this.destroyed || this.ended) {
      this._onAck(buf.length);
      return;
    }
    if (this.push(buf)) this._onAck(buf.length);
    else this._pendingAck += buf.length;
  }
  finish(error) {
    if (this.ended) return;
    this.ended = true;
    if (error) this.destroy(Object.assign(new Error(error.message || "stream error"), { code: error.code }));
    else this.push(null);
  }
  _read() {
    if (this._pendingAck > 0) {
      const n = this._pendingAck;
      this._pendingAck = 0;
      this._onAck(n);
    }
  }
  // After the call: throw away whatever still arrives, acknowledging it.
  drain() {
    this.on("error", () => {});
    this.resume();
  }
}

class Worker {
  constructor(runner, runtime, opts) {
    this.runner = runner;
    this.runtime = runtime;
    this.store = runtime.store;
    this.taskRunner = runtime.getResourceValue("globals.resources.taskRunner");
    this.eventManager = runtime.getResourceValue("globals.resources.eventManager");
    this.serializer = runtime.getResourceValue("globals.resources.serializer");
    this.window = opts.window ?? DEFAULT_WINDOW;
    this.maxInFlight = opts.maxInFlight ?? 64;
    this.exposureCtx = runner.asyncContext({ id: EXPOSURE_CTX_ID });
    this.NodeInputFile = runner.NodeInputFile;
    this.cancellationError = runner.cancellationError;
    this.errorHelpers = [...this.store.errors.values()];
    const tags = runner.globals.tags;
    this.allow = computeAllowList(this.store, tags.tunnel.id);
    this.validators = this.store.getTasksWithTag(tags.authValidator.id);
    this.tasks = this.served(opts.tasks, this.store.tasks, (e) => e.task, this.allow.tasks, tags.system.id);
    this.events = this.served(opts.events, this.store.events, (e) => e.event, this.allow.events, tags.system.id);
    this.calls = new Map(); // cwp id -> in-flight call
    this.out = [];
    this.flushScheduled = false;
    this.inFlight = 0;
    this.shuttingDown = false;
    this.idleWaiters = [];
  }

  // Ids this worker serves: explicit options, else the app's allow-list
  // (ids that exist), else every registered id that is not Runner's own.
  served(explicit, map, unwrap, allowSet, systemTagId) {
    if (explicit) return new Set(explicit.filter((id) => map.has(id)));
    if (this.allow.enabled) return new Set([...allowSet].filter((id) => map.has(id)));
    const ids = new Set();
    for (const [id, e] of map) {
      // Runner's own items (globals.*, platform.*) are never served.
      if (id.startsWith("globals.") || id.startsWith("platform.")) continue;
      if (!unwrap(e).tags?.some((t) => t?.id === systemTagId)) ids.add(id);
    }
    return ids;
  }

  hello() {
    const parallel = [...this.events].filter((id) => this.store.events.get(id).event.parallel);
    const features = ["cancel", "streams"];
    if (this.validators.length > 0) features.push("auth");
    return {
      type: "hello",
      protocol: PROTOCOL,
      pid: process.pid,
      tasks: [...this.tasks],
      events: [...this.events],
      parallelEvents: parallel,
      maxInFlight: this.maxInFlight,
      features,
      window: this.window,
    };
  }

  // ---- output: lines are batched per loop turn ----
  send(line) {
    this.out.push(line);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }
  flush() {
    this.flushScheduled = false;
    if (this.out.length === 0) return;
    const text = this.out.join("\n") + "\n";
    this.out = [];
    rawStdoutWrite(text);
  }
  sendJson(obj) {
    this.send(JSON.stringify(obj));
  }
  // errorText: the error object already encoded by the serializer.
  replyError(id, status, errorText) {
    this.send(`{"id":${id},"ok":false,"status":${status},"error":${errorText}}`);
  }
  replyFixed(id, status, code, message) {
    this.replyError(id, status, JSON.stringify({ message, code }));
  }

  // ---- input ----
  onLine(line) {
    if (line.length === 0) return;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      console.error(`[culvert-worker] unparseable line: ${line.slice(0, 200)}`);
      this.sendJson({ id: 0, ok: false, error: { message: "Unparseable line", code: "INVALID_REQUEST" } });
      return;
    }
    if (!msg || typeof msg !== "object" || !Number.isSafeInteger(msg.id)) {
      this.sendJson({ id: 0, ok: false, error: { message: "Message without an id", code: "INVALID_REQUEST" } });
      return;
    }
    const logFailure = (err) => console.error("[culvert-worker] internal error:", err);
    switch (msg.type) {
      case "task": return void this.onTask(msg, line).catch(logFailure);
      case "event": return void this.onEvent(msg, line).catch(logFailure);
      case "data": return this.onData(msg);
      case "end": return this.onEnd(msg);
      case "file": return this.onFile(msg);
      case "ack": return this.onAck(msg);
      case "cancel": return this.onCancel(msg);
      case "ping": return this.sendJson({ id: msg.id, ok: true });
      case "auth": return void this.onAuth(msg).catch(logFailure);
      case "shutdown": return void this.onShutdown(msg).catch(logFailure);
      default:
        this.replyFixed(msg.id, 400, "INVALID_REQUEST", `Unknown message type ${String(msg.type)}`);
    }
  }

  // Decodes a tree-format value that arrived inside a JSON line.
  decode(value, line) {
    if (value === undefined) return undefined;
    if (!NEEDS_SERIALIZER.test(line)) return value;
    return this.serializer.parse(JSON.stringify(value));
  }

  // ---- calls ----
  newCall(msg) {
    const call = {
      id: msg.id,
      rid: msg.rid,
      cancelled: false,
      done: false,
      ac: null,
      streams: null, // name -> InStream, made on first use
      res: null,
      unacked: 0,
      ackWaiters: [],
    };
    this.calls.set(msg.id, call);
    this.inFlight++;
    return call;
  }
  endCall(call) {
    if (call.done) return;
    call.done = true;
    this.inFlight--;
    if (call.streams) for (const s of call.streams.values()) if (!s.ended) s.drain();
    // Keep routing frames to unfinished request streams (to acknowledge
    // them); forget the call once they are all over.
    if (allEnded(call)) this.calls.delete(call.id);
    if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }
  signal(call) {
    if (!call.ac) call.ac = new AbortController();
    return call.ac.signal;
  }
  inStream(call, name) {
    if (!call.streams) call.streams = new Map();
    let s = call.streams.get(name);
    if (!s) {
      s = new InStream((n) => this.send(`{"type":"ack","id":${call.id},"stream":${JSON.stringify(name)},"bytes":${n}}`));
      call.streams.set(name, s);
    }
    return s;
  }

  onData(msg) {
    const call = this.calls.get(msg.id);
    const buf = Buffer.from(typeof msg.b64 === "string" ? msg.b64 : "", "base64");
    if (!call || typeof msg.stream !== "string") {
      // Late data for a finished call: acknowledge so nothing waits on it.
      if (buf.length) this.sendJson({ type: "ack", id: msg.id, stream: msg.stream, bytes: buf.length });
      return;
    }
    const s = this.inStream(call, msg.stream);
    if (call.done && !s.ended) s.drain();
    s.feed(buf);
  }
  onEnd(msg) {
    const call = this.calls.get(msg.id);
    if (!call || typeof msg.stream !== "string") return;
    this.inStream(call, msg.stream).finish(msg.error);
    if (call.done && allEnded(call)) this.calls.delete(call.id);
  }
  onFile(msg) {
    const call = this.calls.get(msg.id);
    if (!call || typeof msg.stream !== "string") return;
    const known = call.files?.get(msg.stream);
    if (!known) {
      // A file part no sentinel asked for: discard it.
      this.inStream(call, msg.stream).drain();
      return;
    }
    // Metadata: the manifest wins, the part headers only fill gaps (§8.3).
    const meta = msg.meta && typeof msg.meta === "object" ? msg.meta : {};
    const { file, manifestMeta } = known;
    for (const k of ["name", "type", "size", "lastModified", "extra"]) {
      if (meta[k] === undefined || manifestMeta[k] !== undefined) continue;
      if (k === "name" ? !file.name || file.name === "upload" : file[k] === undefined) file[k] = meta[k];
    }
  }
  onAck(msg) {
    const call = this.calls.get(msg.id);
    if (!call || msg.stream !== "out" || !(msg.bytes > 0)) return;
    call.unacked = Math.max(0, call.unacked - msg.bytes);
    while (call.ackWaiters.length && call.unacked < this.window) call.ackWaiters.shift()();
  }
  onCancel(msg) {
    const call = this.calls.get(msg.id);
    if (!call || call.done) return;
    call.cancelled = true;
    if (call.ac) call.ac.abort(new Error(`cancelled: ${msg.reason ?? "unknown"}`));
    if (call.streams) for (const s of call.streams.values()) if (!s.ended) s.finish({ message: "cancelled" });
    for (const w of call.ackWaiters.splice(0)) w();
    if (call.res && !call.res.destroyed) call.res.destroy();
    this.endCall(call);
  }

  // x-runner-context, applied as nodeExposure's contextWrapper does:
  // unknown ids and unparseable values are ignored.
  withUserContexts(runnerContext, allowed, fn) {
    if (!allowed || typeof runnerContext !== "string" || !runnerContext) return fn();
    let map;
    try {
      map = this.serializer.parse(runnerContext);
    } catch {
      return fn();
    }
    if (!map || typeof map !== "object") return fn();
    let wrapped = fn;
    for (const [id, ctx] of this.store.asyncContexts.entries()) {
      const raw = map[id];
      if (typeof raw !== "string") continue;
      try {
        const value = ctx.parse(raw);
        const prev = wrapped;
        wrapped = async () => await ctx.provide(value, prev);
      } catch {
        // ignore this context
      }
    }
    return wrapped();
  }

  async onTask(msg, line) {
    const call = this.newCall(msg);
    const taskId = msg.taskId;
    const entry = typeof taskId === "string" ? this.store.tasks.get(taskId) : undefined;
    if (!entry) {
      this.replyFixed(call.id, 404, "NOT_FOUND", `Task ${taskId} not found`);
      return this.endCall(call);
    }
    if (!this.tasks.has(taskId)) {
      this.replyFixed(call.id, 403, "FORBIDDEN", `Task ${taskId} not exposed`);
      return this.endCall(call);
    }
    const mode = msg.mode === "multipart" || msg.mode === "octet" ? msg.mode : "json";
    let input;
    try {
      if (mode === "octet") {
        input = undefined;
        this.inStream(call, "body");
      } else if (msg.body !== undefined) {
        // A graph body: decode it whole, then select the input (§8.2).
        const v = this.serializer.parse(JSON.stringify(msg.body));
        input = v && typeof v === "object" && Object.prototype.hasOwnProperty.call(v, "input") ? v.input : v;
      } else {
        input = this.decode(msg.input, line);
      }
      if (mode === "multipart") input = this.hydrateFiles(call, input);
    } catch (err) {
      if (mode === "multipart") {
        this.replyFixed(call.id, 400, "INVALID_MULTIPART", "Invalid manifest");
      } else {
        this.replyError(call.id, 400, JSON.stringify(INVALID_JSON));
      }
      return this.endCall(call);
    }
    const allowCtx = this.allow.taskCtx.get(taskId) ?? true;
    const exposure = new ExposureValue(this, call, msg, mode);
    let result;
    try {
      result = await this.withUserContexts(msg.context?.runnerContext, allowCtx, () =>
        this.exposureCtx.provide(exposure, () => this.taskRunner.run(entry.task, input)),
      );
    } catch (err) {
      if (call.cancelled) return;
      if (call.res && call.res.headSent) {
        // The task failed after starting its own response: truncate it.
        console.error(`[culvert-worker] ${call.rid ?? "-"} ${taskId} failed mid-response:`, err);
        call.res.fail(err);
        return;
      }
      this.replyCaughtError(call, err, taskId);
      return this.endCall(call);
    }
    if (call.cancelled) return;
    if (call.res && (call.res.headSent || call.res.writableEnded || call.res.destroyed)) {
      // The task answered through useExposureContext().res (duplex): the
      // response ends when it ends the writer.
      return;
    }
    if (isReadable(result) || isStreamingResponse(result)) {
      this.streamResult(call, result);
      return;
    }
    this.replyResult(call, result);
    this.endCall(call);
  }

  hydrateFiles(call, input) {
    call.files = new Map();
    const visit = (v) => {
      if (!v || typeof v !== "object") return v;
      // "$ejson" is how clients before 2026 tagged the same sentinel.
      if ((v.$runnerFile === "File" || (v.$runnerFile === undefined && v.$ejson === "File")) &&
          typeof v.id === "string") {
        const manifestMeta = v.meta && typeof v.meta === "object" ? v.meta : {};
        let known = call.files.get(v.id);
        if (!known) {
          const stream = this.inStream(call, v.id);
          const file = new this.NodeInputFile({ name: manifestMeta.name ?? "upload" }, stream);
          for (const k of ["type", "size", "lastModified", "extra"]) {
            if (manifestMeta[k] !== undefined) file[k] = manifestMeta[k];
          }
          known = { file, manifestMeta };
          call.files.set(v.id, known);
        }
        return known.file;
      }
      if (Array.isArray(v)) return v.map(visit);
      const out = {};
      for (const k of Object.keys(v)) out[k] = visit(v[k]);
      return out;
    };
    return visit(input);
  }

  replyResult(call, result) {
    if (result === undefined) {
      this.send(`{"id":${call.id},"ok":true}`);
      return;
    }
    let text;
    const t = typeof result;
    if (t === "string" || t === "boolean" || result === null || (t === "number" && Number.isFinite(result))) {
      text = JSON.stringify(result);
    } else {
      try {
        text = this.serializer.stringify(result);
      } catch (err) {
        console.error(`[culvert-worker] ${call.rid ?? "-"} result not serializable:`, err);
        this.replyError(call.id, 500, JSON.stringify(INTERNAL));
        return;
      }
    }
    this.send(`{"id":${call.id},"ok":true,"result":${text}}`);
  }

  // Error mapping of nodeExposure (handlers/errorHandlers.ts): typed
  // errors keep their message, id, data and httpCode (status = httpCode);
  // anything else is a sanitised 500.
  replyCaughtError(call, err, what) {
    for (const helper of this.errorHelpers) {
      let matched = false;
      try {
        matched = helper.is(err);
      } catch {
        matched = false;
      }
      if (!matched) continue;
      const isObj = err && typeof err === "object";
      const id = isObj && typeof err.name === "string" ? err.name : undefined;
      const httpCode = isObj && validHttpCode(err.httpCode)
        ? err.httpCode
        : validHttpCode(helper.httpCode) ? helper.httpCode : undefined;
      const status = httpCode ?? 500;
      let message = err instanceof Error && err.message ? err.message : "Internal Error";
      if (status === 500 && typeof id !== "string") message = "Internal Error";
      const body = { message, code: "INTERNAL_ERROR" };
      if (id !== undefined) body.id = id;
      if (isObj && err.data !== undefined) body.data = err.data;
      if (httpCode !== undefined) body.httpCode = httpCode;
      let text;
      try {
        text = this.serializer.stringify(body);
      } catch {
        text = JSON.stringify({ message, code: "INTERNAL_ERROR", id });
      }
      this.replyError(call.id, status, text);
      return;
    }
    console.error(`[culvert-worker] ${call.rid ?? "-"} ${what} failed:`, err);
    this.replyError(call.id, 500, JSON.stringify(INTERNAL));
  }

  // ---- streamed responses ----
  responseFor(call) {
    if (!call.res) call.res = new OutResponse(this, call);
    return call.res;
  }
  streamResult(call, value) {
    const res = this.responseFor(call);
    let stream = value;
    if (!isReadable(value)) {
      stream = value.stream;
      if (validHttpCode(value.status)) res.statusCode = value.status;
      if (typeof value.contentType === "string") res.setHeader("content-type", value.contentType);
      if (value.headers && typeof value.headers === "object") {
        for (const [k, v] of Object.entries(value.headers)) {
          if (!BLOCKED_HEADERS.has(k.toLowerCase()) && k.toLowerCase() !== "content-type") res.setHeader(k, String(v));
        }
      }
    }
    stream.on("error", (err) => {
      console.error(`[culvert-worker] ${call.rid ?? "-"} response stream failed:`, err);
      res.fail(err);
    });
    res.sendHead();
    stream.pipe(res);
  }
  // Sends the stream head and one or more data frames, waiting for acks
  // when the window is full.
  async writeOut(call, buf) {
    for (let off = 0; off < buf.length; off += MAX_FRAME) {
      if (call.cancelled) return;
      const part = buf.subarray(off, Math.min(off + MAX_FRAME, buf.length));
      while (call.unacked + part.length > this.window && call.unacked > 0 && !call.cancelled) {
        await new Promise((resolve) => call.ackWaiters.push(resolve));
      }
      if (call.cancelled) return;
      call.unacked += part.length;
      this.send(`{"type":"data","id":${call.id},"stream":"out","b64":"${part.toString("base64")}"}`);
    }
  }

  // ---- events ----
  async onEvent(msg, line) {
    const call = this.newCall(msg);
    const eventId = msg.eventId;
    const entry = typeof eventId === "string" ? this.store.events.get(eventId) : undefined;
    if (!entry) {
      this.replyFixed(call.id, 404, "NOT_FOUND", `Event ${eventId} not found`);
      return this.endCall(call);
    }
    if (!this.events.has(eventId)) {
      this.replyFixed(call.id, 403, "FORBIDDEN", `Event ${eventId} not exposed`);
      return this.endCall(call);
    }
    let payload;
    try {
      payload = this.decode(msg.payload, line);
    } catch {
      this.replyError(call.id, 400, JSON.stringify(INVALID_JSON));
      return this.endCall(call);
    }
    const returnPayload = Boolean(msg.returnPayload);
    if (returnPayload && entry.event.parallel) {
      this.replyFixed(call.id, 400, "PARALLEL_EVENT_RETURN_UNSUPPORTED",
        `Event ${eventId} is marked parallel; returning a payload is not supported.`);
      return this.endCall(call);
    }
    const allowCtx = this.allow.eventCtx.get(eventId) ?? true;
    try {
      const out = await this.withUserContexts(msg.context?.runnerContext, allowCtx, async () => {
        if (returnPayload) return await this.eventManager.emitWithResult(entry.event, payload, "exposure:http");
        await this.eventManager.emit(entry.event, payload, "exposure:http");
        return undefined;
      });
      if (call.cancelled) return;
      if (returnPayload) this.replyResult(call, out);
      else this.send(`{"id":${call.id},"ok":true}`);
    } catch (err) {
      if (call.cancelled) return;
      this.replyCaughtError(call, err, eventId);
    }
    this.endCall(call);
  }

  // ---- delegated auth: the app's globals.tags.authValidator tasks ----
  async onAuth(msg) {
    const ctx = msg.context && typeof msg.context === "object" ? msg.context : {};
    const path = typeof ctx.path === "string" ? ctx.path : "/";
    let q = ctx.query;
    if (q && typeof q === "object") q = new URLSearchParams(q).toString();
    const input = {
      headers: ctx.headers || {},
      method: ctx.method || "POST",
      url: path + (q ? `?${q}` : ""),
      path,
    };
    for (const task of this.validators) {
      try {
        const r = await this.taskRunner.run(task, input);
        if (r && r.ok) {
          this.sendJson({ id: msg.id, ok: true });
          return;
        }
      } catch {
        // a throwing validator rejects; try the next one
      }
    }
    this.replyFixed(msg.id, 401, "UNAUTHORIZED", "Unauthorized");
  }

  async onShutdown(msg) {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const grace = Number.isFinite(msg.graceMs) ? msg.graceMs : 10000;
    if (this.inFlight > 0) {
      await Promise.race([
        new Promise((resolve) => this.idleWaiters.push(resolve)),
        new Promise((resolve) => setTimeout(resolve, grace).unref()),
      ]);
    }
    if (msg.id > 0) this.sendJson({ id: msg.id, ok: true });
    this.flush();
    await this.exit(0);
  }

  async exit(code) {
    this.flush();
    const timer = setTimeout(() => process.exit(code), 2000);
    try {
      await this.runtime.dispose();
    } catch (err) {
      console.error("[culvert-worker] dispose failed:", err);
    }
    clearTimeout(timer);
    // Let stdout drain before exiting.
    process.stdout.once?.("drain", () => process.exit(code));
    if (process.stdout.writableLength === 0) process.exit(code);
  }
}

// useExposureContext() for worker calls, as nodeExposure provides it:
// req (the octet body stream, else an empty one), res, url, basePath,
// headers, method, signal. Everything is built on first use: most tasks
// never look.
class ExposureValue {
  constructor(worker, call, msg, mode) {
    this._worker = worker;
    this._call = call;
    this._ctx = msg.context && typeof msg.context === "object" ? msg.context : {};
    this._taskId = msg.taskId;
    this._mode = mode;
    this._req = null;
    this._url = null;
    this._headers = null;
  }
  get _path() {
    return typeof this._ctx.path === "string" ? this._ctx.path : `/__runner/task/${encodeURIComponent(this._taskId)}`;
  }
  get headers() {
    if (!this._headers) {
      this._headers = { ...(this._ctx.headers || {}) };
      if (this._call.rid) this._headers["x-runner-request-id"] = this._call.rid;
    }
    return this._headers;
  }
  get method() {
    return this._ctx.method || "POST";
  }
  get req() {
    if (!this._req) {
      const req = this._mode === "octet" ? this._worker.inStream(this._call, "body") : Readable.from([]);
      this._req = Object.assign(req, { headers: this.headers, method: this.method, url: this._path });
    }
    return this._req;
  }
  get res() {
    return this._worker.responseFor(this._call);
  }
  get url() {
    if (!this._url) {
      let q = this._ctx.query;
      if (q && typeof q === "object") q = new URLSearchParams(q).toString();
      const search = q ? (String(q).startsWith("?") ? q : `?${q}`) : "";
      this._url = new URL(this._path + search, `http://${this.headers.host || "localhost"}`);
    }
    return this._url;
  }
  get basePath() {
    const path = this._path;
    const i = path.indexOf("/task/");
    return i >= 0 ? path.slice(0, i) : "/__runner";
  }
  get signal() {
    return this._worker.signal(this._call);
  }
}

// useExposureContext().res for worker calls: a Writable with the parts of
// http.ServerResponse tasks use (statusCode, setHeader, writeHead, write,
// end). The first write sends the stream reply, data goes out as "out"
// frames under the ack window.
class OutResponse extends Writable {
  constructor(worker, call) {
    super({ highWaterMark: 64 * 1024 });
    this.worker = worker;
    this.call = call;
    this.statusCode = 200;
    this.statusMessage = undefined;
    this.headSent = false;
    this.failed = false;
    this._headers = new Map();
  }
  get headersSent() {
    return this.headSent;
  }
  setHeader(name, value) {
    this._headers.set(String(name).toLowerCase(), Array.isArray(value) ? value.join(", ") : String(value));
    return this;
  }
  getHeader(name) {
    return this._headers.get(String(name).toLowerCase());
  }
  getHeaders() {
    return Object.fromEntries(this._headers);
  }
  hasHeader(name) {
    return this._headers.has(String(name).toLowerCase());
  }
  removeHeader(name) {
    this._headers.delete(String(name).toLowerCase());
  }
  writeHead(status, msgOrHeaders, maybeHeaders) {
    this.statusCode = status;
    const headers = typeof msgOrHeaders === "object" && msgOrHeaders ? msgOrHeaders : maybeHeaders;
    if (headers) {
      const pairs = Array.isArray(headers) ? [] : Object.entries(headers);
      for (const [k, v] of pairs) this.setHeader(k, v);
    }
    return this;
  }
  flushHeaders() {
    this.sendHead();
  }
  sendHead() {
    if (this.headSent || this.call.cancelled) return;
    this.headSent = true;
    const headers = {};
    let contentType = "application/octet-stream";
    for (const [k, v] of this._headers) {
      if (k === "content-type") contentType = v;
      else if (!BLOCKED_HEADERS.has(k)) headers[k] = v;
    }
    const status = validHttpCode(this.statusCode) ? this.statusCode : 200;
    this.worker.sendJson({ id: this.call.id, ok: true, stream: { status, contentType, headers } });
  }
  _write(chunk, _enc, cb) {
    this.sendHead();
    this.worker.writeOut(this.call, Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)).then(() => cb(), cb);
  }
  _final(cb) {
    this.sendHead();
    if (!this.call.cancelled && !this.failed) {
      this.worker.send(`{"type":"end","id":${this.call.id},"stream":"out"}`);
    }
    this.worker.endCall(this.call);
    cb();
  }
  // Ends the response with an error: the gateway truncates it.
  fail(err) {
    if (this.failed || this.call.cancelled || this.call.done) return;
    this.failed = true;
    if (!this.headSent) {
      this.worker.replyCaughtError(this.call, err, "stream");
    } else {
      this.worker.sendJson({ type: "end", id: this.call.id, stream: "out", error: { message: "Internal Error", code: "STREAM_ERROR" } });
    }
    this.worker.endCall(this.call);
    this.destroy();
  }
}

// Runs app (a Runner root resource) and serves it on stdin/stdout until
// the gateway sends shutdown or closes stdin. options: runner (the
// @bluelibs/runner module, default: resolved from here), runOptions
// (passed to run()), tasks / events (ids to serve; default: the app's
// allow-list, else every non-system id), maxInFlight, window.
export async function serveWorker(app, options = {}) {
  // Signal handlers first: a signal's default action would kill the
  // process at once, even between the hello and the rest of the setup.
  let worker = null;
  process.on("SIGTERM", () => {
    if (worker) worker.onShutdown({ id: 0, graceMs: 2000 });
    else process.exit(0);
  });
  // Ctrl-C in a terminal reaches the whole process group: leave the drain
  // to the gateway (it sends shutdown, or closes stdin), so calls in
  // flight still finish.
  process.on("SIGINT", () => {});
  const runner = options.runner ?? loadRunner();
  const runtime = await runner.run(app, {
    shutdownHooks: false,
    logs: { printThreshold: "warn" },
    ...(options.runOptions || {}),
  });
  worker = new Worker(runner, runtime, options);
  rawStdoutWrite(JSON.stringify(worker.hello()) + "\n");

  let pending = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    pending += chunk;
    let nl;
    let start = 0;
    while ((nl = pending.indexOf("\n", start)) >= 0) {
      const line = pending.slice(start, nl);
      start = nl + 1;
      try {
        worker.onLine(line);
      } catch (err) {
        console.error("[culvert-worker] internal error:", err);
      }
    }
    pending = start === 0 ? pending : pending.slice(start);
  });
  // EPIPE and friends: the gateway is gone, so is the point of running.
  process.stdout.on("error", () => process.exit(0));
  process.stdin.on("end", () => {
    // The gateway went away: nobody can read replies any more.
    worker.exit(0);
  });
  return worker;
}
