/* Internal to net/: the server half of struct cv_ws, used by http_server.c.
 * A server connection starts by reading one HTTP request head; the server
 * then answers it (cv_ws__respond) or upgrades it (cv_ws__upgrade). */
#ifndef CV_WS_SERVER_H
#define CV_WS_SERVER_H

#include <stdbool.h>
#include <uv.h>

#include "codec/http.h"
#include "net/ws.h"

/* A request head arrived on ws. head and its slices are valid during the
 * call only; the callee must call cv_ws__respond or cv_ws__upgrade. */
typedef void (*cv_ws__head_cb)(struct cv_ws *ws, const struct cv_http_head *head, void *srv);

/* Accepts a connection from listener and starts reading its request head,
 * which must be complete within handshake_ms (0: CV_LIMIT_HANDSHAKE_MS),
 * else the connection is closed without an answer.
 * While in the head phase the connection is linked into *pending (a list
 * owned by the server, newest first) so the server can abandon it when it
 * stops. tls: a server context (borrowed) to speak TLS first (the
 * handshake counts toward handshake_ms), or NULL for plain TCP.
 * Returns 0 or a libuv error (nothing left allocated). */
int cv_ws__accept(uv_stream_t *listener, cv_ws__head_cb cb, void *srv, struct cv_ws **pending,
                  uint64_t handshake_ms, struct cv_tls_ctx *tls);
/* The peer's address. Returns 0 or a libuv error. */
int cv_ws__peer_addr(struct cv_ws *ws, struct sockaddr_storage *ss);
/* Sends raw bytes (a whole HTTP response) and closes once they are written
 * (over TLS once its handshake is done; before it, just closes). */
void cv_ws__respond(struct cv_ws *ws, const void *bytes, size_t n);
/* Sends the 101 response with accept and turns ws into an open WebSocket.
 * subprotocol: the client offered opts->subprotocol, so the 101 accepts it. */
void cv_ws__upgrade(struct cv_ws *ws, const char *accept, bool subprotocol,
                    const struct cv_ws_opts *opts, const struct cv_ws_cbs *cbs, void *data);
/* Detaches ws from its server and closes it if it is still in the head
 * phase (the server is going away). */
void cv_ws__abandon(struct cv_ws *ws);

#endif
