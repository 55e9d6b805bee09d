// The bare node:http line of the bench (specs/runner-http.md §16): the
// same request and reply as app.tasks.add, with no Runner: read the body,
// JSON.parse it, answer {"ok":true,"result":a+b}.
// Usage: node bench/gateway/node_echo.mjs PORT
import http from "node:http";

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let status = 200;
    let body;
    try {
      const { input } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      body = JSON.stringify({ ok: true, result: input.a + input.b });
    } catch {
      status = 400;
      body = '{"ok":false,"error":{"message":"Invalid JSON body","code":"INVALID_JSON"}}';
    }
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  });
});
server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
