/* A small HTTP/1.1 server on libuv: accepts TCP connections, reads one
 * request head (size limit, handshake timeout), and hands it to a callback
 * that either answers it with a short response or upgrades it to a
 * WebSocket. Plain responses close the connection. */
#ifndef CV_HTTP_SERVER_H
#define CV_HTTP_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "codec/http.h"
#include "net/ws.h"

struct cv_http_server;
struct cv_http_req;

/* A request head arrived. The callback must, before returning, call exactly
 * one of cv_http_req_respond or cv_http_req_upgrade. req is invalid after. */
typedef void (*cv_http_req_cb)(struct cv_http_server *srv, struct cv_http_req *req);

/* Listens on host:port (port 0: ephemeral). Returns 0 or a libuv error
 * (e.g. UV_EADDRINUSE); on error nothing is left running. */
int cv_http_server_start(uv_loop_t *loop, const char *host, uint16_t port, cv_http_req_cb cb,
                         void *data, struct cv_http_server **out);
/* Abuse limits, checked from accept on. */
struct cv_http_server_limits {
    uint64_t handshake_ms;  /* request head within this, else silent close (0: 10 s) */
    double rate_per_ip;     /* new connections per second per client address (0: no limit) */
    double burst_per_ip;    /* ... of which this many at once; beyond: 429 + close */
};
/* Applies to connections accepted from now on. Returns 0, CV_EINVAL or CV_ENOMEM. */
int cv_http_server_set_limits(struct cv_http_server *srv, const struct cv_http_server_limits *l);
/* Connections refused by the per-address rate limit so far. */
uint64_t cv_http_server_rate_limited(const struct cv_http_server *srv);
/* Speak TLS (server context, borrowed until the next call or close: each
 * connection takes its own reference) on connections accepted from now on;
 * NULL: plain. Calling it again replaces the certificates for new
 * connections only. */
void cv_http_server_set_tls(struct cv_http_server *srv, struct cv_tls_ctx *tls);
/* The bound port. */
uint16_t cv_http_server_port(const struct cv_http_server *srv);
void *cv_http_server_data(const struct cv_http_server *srv);
/* Stops listening and closes connections still in their handshake;
 * upgraded WebSockets are not affected. Frees srv asynchronously. */
void cv_http_server_close(struct cv_http_server *srv);

const struct cv_http_head *cv_http_req_head(const struct cv_http_req *req);
/* Request path without the query (borrowed, NUL-terminated, percent-escapes
 * kept), and the query after '?' ("" if none). */
const char *cv_http_req_path(const struct cv_http_req *req);
const char *cv_http_req_query(const struct cv_http_req *req);
const char *cv_http_req_peer(const struct cv_http_req *req);

/* Sends status with the given body (content type ctype) and closes. */
void cv_http_req_respond(struct cv_http_req *req, int status, const char *ctype, const void *body,
                         size_t len);
/* Validates the WebSocket handshake and answers 101. On success *out is the
 * new connection (callbacks as in net/ws.h) and 0 is returned. On a bad
 * handshake it answers 400 (or 426 for a wrong version) itself and returns
 * CV_EPROTO. */
int cv_http_req_upgrade(struct cv_http_req *req, const struct cv_ws_opts *opts,
                        const struct cv_ws_cbs *cbs, void *data, struct cv_ws **out);

#endif
