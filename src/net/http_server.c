/* HTTP/1.1 front door: listener, request-head dispatch, WebSocket upgrade.
 * Per-connection reading and writing live in ws.c (a server connection is a
 * struct cv_ws in its head phase until it is upgraded or answered). */
#include "net/http_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/ratelimit.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/ws_server.h"

struct cv_http_server {
    uv_tcp_t tcp;
    cv_http_req_cb cb;
    void *data;          /* borrowed */
    struct cv_ws *pending; /* connections still in their head phase */
    uint16_t port;
    uint64_t handshake_ms;
    struct cv_ratelimit *rl; /* NULL: no per-address limit */
    struct cv_tls_ctx *tls;  /* borrowed; NULL: plain HTTP */
    uint64_t limited;
};

struct cv_http_req {
    struct cv_ws *ws; /* borrowed */
    const struct cv_http_head *head;
    bool answered;
    char path[2048];
    const char *query;
};

static void on_head(struct cv_ws *ws, const struct cv_http_head *head, void *srvp)
{
    struct cv_http_server *srv = srvp;
    struct cv_http_req req = {.ws = ws, .head = head};
    size_t n = head->target_len < sizeof req.path - 1 ? head->target_len : sizeof req.path - 1;
    memcpy(req.path, head->target, n);
    req.path[n] = 0;
    char *q = strchr(req.path, '?');
    if (q) {
        *q = 0;
        req.query = q + 1;
    } else {
        req.query = "";
    }
    srv->cb(srv, &req);
    if (!req.answered)
        cv_http_req_respond(&req, 500, "text/plain", "no handler answered\n", 20);
}

static void rate_check(struct cv_http_server *srv, struct cv_ws *ws)
{
    struct sockaddr_storage ss;
    if (cv_ws__peer_addr(ws, &ss) != 0)
        return;
    uint8_t key[16];
    cv_ratelimit_key(&ss, key);
    uint64_t wait = cv_ratelimit_take(srv->rl, key, uv_now(srv->tcp.loop));
    if (wait == 0)
        return;
    srv->limited++;
    cv_log_debug("%s: too many connections, refused (retry in %llu ms)", cv_ws_peer(ws),
                 (unsigned long long)wait);
    static const char body[] = "too many connections from your address: slow down\n";
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
                     "Retry-After: %llu\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     (unsigned long long)(wait + 999) / 1000, sizeof body - 1, body);
    cv_ws__respond(ws, resp, (size_t)n);
}

static void on_connection(uv_stream_t *s, int status)
{
    struct cv_http_server *srv = s->data;
    if (status < 0) {
        cv_log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    int rc = cv_ws__accept(s, on_head, srv, &srv->pending, srv->handshake_ms, srv->tls);
    if (rc < 0) {
        cv_log_warn("accept failed: %s", cv_strerror(rc));
        return;
    }
    if (srv->rl != NULL)
        rate_check(srv, srv->pending); /* the newest connection heads the list */
}

void cv_http_server_set_tls(struct cv_http_server *srv, struct cv_tls_ctx *tls)
{
    srv->tls = tls;
}

int cv_http_server_start(uv_loop_t *loop, const char *host, uint16_t port, cv_http_req_cb cb,
                         void *data, struct cv_http_server **out)
{
    struct sockaddr_storage ss;
    if (cv_addr_from(host, port, &ss) != 0)
        return CV_EINVAL;
    struct cv_http_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return CV_ENOMEM;
    srv->cb = cb;
    srv->data = data;
    int rc = cv_tcp_listen(loop, &srv->tcp, (struct sockaddr *)&ss, 1024, on_connection, &ss);
    srv->tcp.data = srv;
    if (rc < 0) {
        uv_close((uv_handle_t *)&srv->tcp, (uv_close_cb)free);
        return rc;
    }
    srv->port = cv_addr_port((struct sockaddr *)&ss);
    *out = srv;
    return 0;
}

int cv_http_server_set_limits(struct cv_http_server *srv, const struct cv_http_server_limits *l)
{
    if (l->rate_per_ip < 0 || (l->rate_per_ip > 0 && l->burst_per_ip < 1))
        return CV_EINVAL;
    struct cv_ratelimit *rl = NULL;
    if (l->rate_per_ip > 0 && (rl = cv_ratelimit_new(l->rate_per_ip, l->burst_per_ip, 4096)) == NULL)
        return CV_ENOMEM;
    cv_ratelimit_free(srv->rl);
    srv->rl = rl;
    srv->handshake_ms = l->handshake_ms;
    return 0;
}

uint64_t cv_http_server_rate_limited(const struct cv_http_server *srv) { return srv->limited; }

uint16_t cv_http_server_port(const struct cv_http_server *srv) { return srv->port; }
void *cv_http_server_data(const struct cv_http_server *srv) { return srv->data; }

void cv_http_server_close(struct cv_http_server *srv)
{
    if (srv == NULL)
        return;
    while (srv->pending)
        cv_ws__abandon(srv->pending);
    cv_ratelimit_free(srv->rl);
    srv->rl = NULL;
    uv_close((uv_handle_t *)&srv->tcp, (uv_close_cb)free);
}

const struct cv_http_head *cv_http_req_head(const struct cv_http_req *req) { return req->head; }
const char *cv_http_req_path(const struct cv_http_req *req) { return req->path; }
const char *cv_http_req_query(const struct cv_http_req *req) { return req->query; }
const char *cv_http_req_peer(const struct cv_http_req *req) { return cv_ws_peer(req->ws); }

void cv_http_req_respond(struct cv_http_req *req, int status, const char *ctype, const void *body,
                         size_t len)
{
    if (req->answered)
        return;
    req->answered = true;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, cv_http_reason(status), ctype, len,
                     status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "");
    bool is_head = req->head->method_len == 4 && memcmp(req->head->method, "HEAD", 4) == 0;
    size_t total = (size_t)n + (is_head ? 0 : len);
    char *buf = malloc(total);
    if (buf == NULL) {
        cv_ws__respond(req->ws, head, (size_t)n);
        return;
    }
    memcpy(buf, head, (size_t)n);
    if (!is_head && len)
        memcpy(buf + n, body, len);
    cv_ws__respond(req->ws, buf, total);
    free(buf);
}

static const char *check_upgrade(const struct cv_http_head *h, int *status)
{
    *status = 400;
    if (h->method_len != 3 || memcmp(h->method, "GET", 3) != 0)
        return "WebSocket handshake must use GET\n";
    if (h->version_major != 1 || h->version_minor < 1)
        return "WebSocket handshake needs HTTP/1.1\n";
    const struct cv_http_header *up = cv_http_find(h, "Upgrade");
    const struct cv_http_header *conn = cv_http_find(h, "Connection");
    if (up == NULL || !cv_http_has_token(up->value, up->value_len, "websocket") || conn == NULL ||
        !cv_http_has_token(conn->value, conn->value_len, "upgrade"))
        return "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)\n";
    const struct cv_http_header *ver = cv_http_find(h, "Sec-WebSocket-Version");
    if (ver == NULL || ver->value_len != 2 || memcmp(ver->value, "13", 2) != 0) {
        *status = 426;
        return "unsupported Sec-WebSocket-Version (need 13)\n";
    }
    const struct cv_http_header *key = cv_http_find(h, "Sec-WebSocket-Key");
    if (key == NULL || !cv_ws_key_is_valid(key->value, key->value_len))
        return "missing or malformed Sec-WebSocket-Key\n";
    return NULL;
}

int cv_http_req_upgrade(struct cv_http_req *req, const struct cv_ws_opts *opts,
                        const struct cv_ws_cbs *cbs, void *data, struct cv_ws **out)
{
    int status;
    const char *err = check_upgrade(req->head, &status);
    if (err != NULL) {
        cv_log_info("refused handshake from %s: %.*s", cv_ws_peer(req->ws),
                    (int)strlen(err) - 1, err);
        cv_http_req_respond(req, status, "text/plain", err, strlen(err));
        return CV_EPROTO;
    }
    const struct cv_http_header *key = cv_http_find(req->head, "Sec-WebSocket-Key");
    char accept[CV_WS_ACCEPT_LEN];
    cv_ws_accept_key(key->value, key->value_len, accept);
    bool sub = false;
    const struct cv_http_header *proto = cv_http_find(req->head, "Sec-WebSocket-Protocol");
    if (opts->subprotocol && proto)
        sub = cv_http_has_token(proto->value, proto->value_len, opts->subprotocol);
    req->answered = true;
    cv_ws__upgrade(req->ws, accept, sub, opts, cbs, data);
    *out = req->ws;
    return 0;
}
