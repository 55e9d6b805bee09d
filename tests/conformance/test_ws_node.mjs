// WebSocket interop: culvert's server and client against Node `ws` (pinned in
// tests/package-lock.json; `npm ci` in tests/ installs it).
//
// Run: node --test tests/conformance/
// Binaries: $CULVERT_BUILD (default build/) must hold ws_echo_server, ws_client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');
const { WebSocketServer } = WebSocket;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const BUILD = path.resolve(REPO, process.env.CULVERT_BUILD || 'build');
const STEP = 5000; // ceiling for one expected event, ms
const TEST = { timeout: 30000 }; // ceiling for one test

function tool(name) {
  const p = path.join(BUILD, name);
  if (!existsSync(p)) throw new Error(`${p} not found: build it or set CULVERT_BUILD`);
  return p;
}

function pattern(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i % 251;
  return b;
}

const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const binaryLine = (b) =>
  b.length > 1024 ? `binary-len ${b.length} sha256 ${sha256(b)}` : `binary ${b.toString('hex')}`;

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Line reader over a child's stdout: next() resolves with the next line
// (without '\n') or null at EOF.
class Lines {
  constructor(stream) {
    this.buf = '';
    this.queue = [];
    this.waiters = [];
    this.eof = false;
    this.all = [];
    stream.setEncoding('utf8');
    stream.on('data', (d) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
    });
    stream.on('end', () => {
      this.eof = true;
      while (this.waiters.length) this.waiters.shift()(null);
    });
  }
  push(line) {
    this.all.push(line);
    if (this.waiters.length) this.waiters.shift()(line);
    else this.queue.push(line);
  }
  next(ms = STEP) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.eof) return Promise.resolve(null);
    return withTimeout(new Promise((res) => this.waiters.push(res)), ms,
      `next line (so far: ${JSON.stringify(this.all)})`);
  }
}

function exited(proc, ms = STEP) {
  if (proc.exitCode !== null || proc.signalCode !== null)
    return Promise.resolve(proc.exitCode);
  return withTimeout(new Promise((res) => proc.once('exit', (code) => res(code))), ms,
    'process exit');
}

function killProc(proc) {
  if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}

async function startEchoServer(t, ...args) {
  const proc = spawn(tool('ws_echo_server'), ['--listen', '127.0.0.1:0', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const srv = { proc, stopped: false, stderr: () => stderr };
  proc.stderr.on('data', (d) => { stderr += d; });
  const lines = new Lines(proc.stdout);
  t.after(async () => {
    if (srv.stopped) return killProc(proc);
    const alive = proc.exitCode === null && proc.signalCode === null;
    proc.kill('SIGTERM');
    let code;
    try { code = await exited(proc, 8000); } finally { killProc(proc); }
    assert.ok(alive, `ws_echo_server died during the test:\n${stderr}`);
    assert.equal(code, 0, `ws_echo_server exit status after SIGTERM:\n${stderr}`);
  });
  const first = await lines.next();
  const m = /^listening on 127\.0\.0\.1:(\d+)$/.exec(first || '');
  assert.ok(m, `ws_echo_server did not announce its port: ${first}`);
  srv.port = Number(m[1]);
  srv.url = `ws://127.0.0.1:${srv.port}`;
  return srv;
}

function startClient(t, url, ...args) {
  const proc = spawn(tool('ws_client'), [url, ...args], { stdio: ['pipe', 'pipe', 'ignore'] });
  const lines = new Lines(proc.stdout);
  t.after(() => killProc(proc));
  return {
    proc,
    lines,
    send(cmd) { proc.stdin.write(cmd + '\n'); },
    async expect(want) {
      const got = await lines.next();
      assert.equal(got, want, `ws_client lines so far: ${JSON.stringify(lines.all)}`);
    },
    async expectClose(code, reason) {
      const got = await lines.next();
      assert.ok(got && got.startsWith('close '), `expected close, got ${got}`);
      const [, c, ...rest] = got.split(' ');
      assert.equal(Number(c), code, `close line: ${got}`);
      if (reason !== undefined) assert.equal(rest.join(' '), reason, `close line: ${got}`);
    },
    exited: (ms) => exited(proc, ms),
  };
}

// A ws client with helpers: next message as {data, isBinary}; close event.
function connect(url, opts = {}) {
  const ws = new WebSocket(url, { perMessageDeflate: false, ...opts });
  const msgs = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift()(m);
    else msgs.push(m);
  });
  ws.on('error', () => {}); // surfaced through 'close'
  const closed = new Promise((res) => ws.on('close', (code, reason) =>
    res({ code, reason: reason.toString() })));
  const opened = withTimeout(new Promise((res, rej) => {
    ws.once('open', res);
    ws.once('close', (code) => rej(new Error(`closed ${code} before open`)));
  }), STEP, 'open');
  return {
    ws, opened,
    closed: (ms = STEP) => withTimeout(closed, ms, 'close event'),
    next: (ms = STEP) => (msgs.length ? Promise.resolve(msgs.shift())
      : withTimeout(new Promise((res) => waiters.push(res)), ms, 'message')),
  };
}

async function startWsServer(t, opts = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, ...opts });
  await new Promise((res) => wss.once('listening', res));
  t.after(() => new Promise((res) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => res());
  }));
  const conns = [];
  const waiters = [];
  wss.on('connection', (ws) => {
    const c = { ws, msgs: [], closed: null };
    c.closed = new Promise((res) => ws.on('close', (code, reason) =>
      res({ code, reason: reason.toString() })));
    ws.on('message', (data, isBinary) => c.msgs.push({ data, isBinary }));
    ws.on('error', () => {});
    if (waiters.length) waiters.shift()(c);
    else conns.push(c);
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    conn: (ms = STEP) => (conns.length ? Promise.resolve(conns.shift())
      : withTimeout(new Promise((res) => waiters.push(res)), ms, 'server connection')),
  };
}

// ===========================================================================
// Our server, Node ws client
// ===========================================================================

test('server: text and binary echo keep their opcode', TEST, async (t) => {
  const srv = await startEchoServer(t);
  const c = connect(srv.url);
  await c.opened;
  const cases = [['hello', false], ['héllo ✓ 🚀', false], ['', false],
    [Buffer.from([0, 255, 16]), true], [Buffer.alloc(0), true], [Buffer.from('text-ish'), true]];
  for (const [data, binary] of cases) {
    c.ws.send(data, { binary });
    const m = await c.next();
    assert.equal(m.isBinary, binary);
    assert.ok(Buffer.from(data).equals(m.data), `echo of ${JSON.stringify(data)}`);
  }
  c.ws.close(1000);
  assert.equal((await c.closed()).code, 1000);
});

test('server: sizes 125/126/65535/65536/1MiB', TEST, async (t) => {
  const srv = await startEchoServer(t);
  const c = connect(srv.url);
  await c.opened;
  for (const n of [125, 126, 65535, 65536, 1 << 20]) {
    const data = pattern(n);
    c.ws.send(data);
    const m = await c.next();
    assert.ok(m.isBinary && m.data.length === n && sha256(m.data) === sha256(data), `size ${n}`);
    const text = 'x'.repeat(n);
    c.ws.send(text);
    const mt = await c.next();
    assert.ok(!mt.isBinary && mt.data.toString() === text, `text size ${n}`);
  }
  c.ws.close(1000);
  await c.closed();
});

test('server: fragmented messages are reassembled', TEST, async (t) => {
  const srv = await startEchoServer(t);
  const c = connect(srv.url);
  await c.opened;
  c.ws.send('ab', { fin: false });
  c.ws.send('cd', { fin: false });
  c.ws.send('ef', { fin: true });
  let m = await c.next();
  assert.equal(m.isBinary, false);
  assert.equal(m.data.toString(), 'abcdef');
  // A code point split across fragments.
  const e = Buffer.from('é');
  c.ws.send(Buffer.concat([Buffer.from('h'), e.subarray(0, 1)]), { binary: false, fin: false });
  c.ws.send(Buffer.concat([e.subarray(1), Buffer.from('llo')]), { binary: false, fin: true });
  m = await c.next();
  assert.equal(m.isBinary, false);
  assert.equal(m.data.toString(), 'héllo');
  const a = pattern(70000);
  const b = Buffer.from(pattern(500)).reverse();
  c.ws.send(a, { binary: true, fin: false });
  c.ws.send(b, { binary: true, fin: true });
  m = await c.next();
  assert.ok(m.isBinary && m.data.equals(Buffer.concat([a, b])));
  c.ws.close(1000);
  await c.closed();
});

test('server: ping is answered with the same payload', TEST, async (t) => {
  const srv = await startEchoServer(t);
  const c = connect(srv.url);
  await c.opened;
  for (const payload of [Buffer.from('abc'), Buffer.alloc(0), pattern(125)]) {
    const pong = withTimeout(new Promise((res) => c.ws.once('pong', res)), STEP, 'pong');
    c.ws.ping(payload);
    assert.ok((await pong).equals(payload));
  }
  c.ws.close(1000);
  await c.closed();
});

for (const [code, reason] of [[1000, 'bye'], [1001, ''], [3000, 'x'], [4999, 'ünï']]) {
  test(`server: close ${code} is echoed`, TEST, async (t) => {
    const srv = await startEchoServer(t);
    const c = connect(srv.url);
    await c.opened;
    c.ws.close(code, reason);
    const cl = await c.closed();
    assert.equal(cl.code, code);
  });
}

test('server: message over --max-msg closes 1009', TEST, async (t) => {
  const srv = await startEchoServer(t, '--max-msg', '1000');
  let c = connect(srv.url);
  await c.opened;
  c.ws.send(pattern(1000));
  assert.ok((await c.next()).data.equals(pattern(1000)));
  c.ws.send(pattern(1001));
  assert.equal((await c.closed()).code, 1009);
  // Fragments add up.
  c = connect(srv.url);
  await c.opened;
  c.ws.send(pattern(600), { fin: false });
  c.ws.send(pattern(600), { fin: true });
  assert.equal((await c.closed()).code, 1009);
});

test('server: a Node client with maxPayload refuses a big echo (1009)', TEST, async (t) => {
  const srv = await startEchoServer(t);
  const c = connect(srv.url, { maxPayload: 1000 });
  await c.opened;
  c.ws.send(pattern(1001));
  // ws stops parsing after its own 1009, so its close event says 1006; the
  // echo server logs the code it received ("closed CODE REASON").
  await c.closed();
  const deadline = Date.now() + STEP;
  while (!/closed 1009\b/.test(srv.stderr()) && Date.now() < deadline)
    await new Promise((res) => setTimeout(res, 50));
  assert.match(srv.stderr(), /closed 1009\b/, 'echo server did not get close 1009');
  // The server is fine afterwards.
  const d = connect(srv.url);
  await d.opened;
  d.ws.send('alive');
  assert.equal((await d.next()).data.toString(), 'alive');
  d.ws.close(1000);
  await d.closed();
});

// ===========================================================================
// Our client, Node ws server
// ===========================================================================

test('client: echo through a ws server', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url + '/some/path?q=1');
  const conn = await s.conn();
  conn.ws.on('message', (data, isBinary) => conn.ws.send(data, { binary: isBinary }));
  await cl.expect('open');
  const steps = [
    ['text hello', 'text hello', 'hello', false],
    ['text héllo ✓', 'text héllo ✓', 'héllo ✓', false],
    ['text', 'text ', '', false],
    ['binary 00ff10', 'binary 00ff10', Buffer.from([0, 255, 16]), true],
    ['binary', 'binary ', Buffer.alloc(0), true],
    ['big 1025', binaryLine(pattern(1025)), pattern(1025), true],
    ['big 1048576', binaryLine(pattern(1 << 20)), pattern(1 << 20), true],
  ];
  for (const [cmd, want, sent, binary] of steps) {
    cl.send(cmd);
    await cl.expect(want);
    const got = conn.msgs.at(-1);
    assert.equal(got.isBinary, binary, cmd);
    assert.ok(got.data.equals(Buffer.from(sent)), cmd);
  }
  cl.send('close 1000 done');
  await cl.expectClose(1000);
  assert.equal(await cl.exited(), 0);
  const sc = await withTimeout(conn.closed, STEP, 'server close');
  assert.deepEqual(sc, { code: 1000, reason: 'done' });
});

test('client: fragmented messages from the server', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url);
  const conn = await s.conn();
  await cl.expect('open');
  conn.ws.send('hé', { fin: false });
  conn.ws.send('llo', { fin: true });
  await cl.expect('text héllo');
  conn.ws.send(Buffer.from('ab'), { binary: true, fin: false });
  conn.ws.send(Buffer.from('cd'), { binary: true, fin: false });
  conn.ws.send(Buffer.alloc(0), { binary: true, fin: true });
  await cl.expect('binary 61626364');
  const big = [pattern(800), Buffer.from(pattern(800)).reverse()];
  conn.ws.send(big[0], { binary: true, fin: false });
  conn.ws.send(big[1], { binary: true, fin: true });
  await cl.expect(binaryLine(Buffer.concat(big)));
  cl.send('close 1000');
  await cl.expectClose(1000);
  assert.equal(await cl.exited(), 0);
});

test('client: answers the server ping', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url);
  const conn = await s.conn();
  await cl.expect('open');
  for (const payload of [Buffer.from('abc'), Buffer.alloc(0), pattern(125)]) {
    const pong = withTimeout(new Promise((res) => conn.ws.once('pong', res)), STEP, 'pong');
    conn.ws.ping(payload);
    assert.ok((await pong).equals(payload));
  }
  conn.ws.send('still-open');
  await cl.expect('text still-open');
  cl.send('close 1000');
  await cl.expectClose(1000);
  assert.equal(await cl.exited(), 0);
});

test('client: server-initiated close 4001 with reason', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url);
  const conn = await s.conn();
  await cl.expect('open');
  conn.ws.close(4001, 'reason');
  await cl.expectClose(4001, 'reason');
  assert.equal(await cl.exited(), 0);
  const sc = await withTimeout(conn.closed, STEP, 'server close');
  assert.notEqual(sc.code, 1006, 'client dropped TCP without answering the close');
});

test('client: message over --max-msg closes 1009', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url, '--max-msg', '1000');
  const conn = await s.conn();
  await cl.expect('open');
  conn.ws.send(pattern(1000));
  await cl.expect(binaryLine(pattern(1000)));
  conn.ws.send(pattern(1001));
  await cl.expectClose(1009);
  assert.equal(await cl.exited(), 0);
  const sc = await withTimeout(conn.closed, STEP, 'server close');
  assert.equal(sc.code, 1009);
});

test('client: fragmented message over --max-msg closes 1009', TEST, async (t) => {
  const s = await startWsServer(t);
  const cl = startClient(t, s.url, '--max-msg', '1000');
  const conn = await s.conn();
  await cl.expect('open');
  conn.ws.send(pattern(600), { binary: true, fin: false });
  conn.ws.send(pattern(600), { binary: true, fin: true });
  await cl.expectClose(1009);
  assert.equal(await cl.exited(), 0);
  assert.equal((await withTimeout(conn.closed, STEP, 'server close')).code, 1009);
});

test('client: exit 1 when the server refuses the upgrade', TEST, async (t) => {
  const s = await startWsServer(t, { verifyClient: () => false });
  const cl = startClient(t, s.url);
  assert.equal(await cl.exited(), 1);
  while ((await cl.lines.next()) !== null);
  const lines = cl.lines.all;
  assert.ok(!lines.includes('open'), JSON.stringify(lines));
  assert.ok(lines.some((l) => l.startsWith('error ')), JSON.stringify(lines));
});
