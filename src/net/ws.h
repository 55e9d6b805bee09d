/* WebSocket connections over TCP, on libuv: the client handshake, the
 * framing codec, message reassembly, automatic pong, keepalive pings, the
 * close handshake, and a transmit queue with high/low marks.
 *
 * Lifecycle: a struct cv_ws comes from cv_ws_connect (client) or
 * cv_http_req_upgrade (server). Its close_cb fires exactly once when the
 * connection has ended for any reason; the object is freed right after
 * close_cb returns, so the owner must drop its pointer there. Calls made on
 * a closing connection fail with CV_ECLOSED. No callback fires
 * synchronously inside the call that registered it. */
#ifndef CV_NET_WS_H
#define CV_NET_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec/ws.h"

struct cv_ws;
struct cv_tls_ctx;

/* Client only: the handshake finished. status 0, or an error (then close_cb
 * follows with the reason and the object is freed). */
typedef void (*cv_ws_open_cb)(struct cv_ws *ws, int status);
/* A whole message (fragments reassembled; TEXT already UTF-8 checked).
 * data is valid only during the call and may be modified in place. */
typedef void (*cv_ws_msg_cb)(struct cv_ws *ws, uint8_t opcode, uint8_t *data, size_t len);
/* The connection ended. code: the peer's close code, or the code we sent, or
 * CV_WS_ABNORMAL (1006) when the TCP connection just went away. reason: a
 * short text for logs (never NULL). */
typedef void (*cv_ws_close_cb)(struct cv_ws *ws, uint16_t code, const char *reason);
/* The transmit queue fell below tx_low after having reached tx_high. */
typedef void (*cv_ws_drain_cb)(struct cv_ws *ws);

struct cv_ws_cbs {
    cv_ws_open_cb on_open;   /* client only; may be NULL */
    cv_ws_msg_cb on_msg;     /* required */
    cv_ws_close_cb on_close; /* required */
    cv_ws_drain_cb on_drain; /* may be NULL */
};

struct cv_ws_opts {
    uint64_t max_msg;          /* larger incoming message: close 1009 */
    uint32_t ping_interval_ms; /* 0: never ping */
    uint32_t pong_timeout_ms;  /* no pong this long after a ping: close 1011 */
    uint32_t idle_timeout_ms;  /* client: nothing received this long: close 1006; 0 off */
    size_t tx_high;            /* cv_ws_is_writable turns false at this queue size */
    size_t tx_low;             /* on_drain fires when the queue falls below this */
    size_t tx_max;             /* hard cap: a send past it fails CV_ETOOBIG */
    const char *user_agent;    /* client: NULL sends no User-Agent (spec §2) */
    const char *subprotocol;   /* client: offered; server: accepted if offered; NULL: none */
    const char *bearer;        /* client: sends Authorization: Bearer <bearer>; NULL: none */
    struct cv_tls_ctx *tls;    /* client, wss://: context (borrowed); NULL: the process-wide
                                  one of net/tls.h (cv_tls_client_setup, else system CAs) */
};

/* Fills opts with defaults (16 MiB messages, no pings, 1 MiB/256 KiB marks,
 * 64 MiB hard cap). */
void cv_ws_opts_default(struct cv_ws_opts *opts);

/* Starts a client connection to a ws:// URL. Sends exactly the handshake of
 * specs/kohaku-tunnel.md §2 (Host, Connection, Upgrade, Version, Key).
 * wss:// runs it over TLS (net/tls.h): SNI and certificate checks against
 * the URL's host; a failed handshake reaches on_open with a reason such as
 * "TLS handshake failed: certificate verify failed: ...".
 * On success *out is set and on_open fires later. Returns 0, CV_EINVAL for a
 * bad URL (or a wss:// URL without a usable TLS context), or a libuv error;
 * on failure no callback fires. */
int cv_ws_connect(uv_loop_t *loop, const char *url, const struct cv_ws_opts *opts,
                  const struct cv_ws_cbs *cbs, void *data, struct cv_ws **out);

/* The negotiated subprotocol (borrowed from the opts), or NULL. */
const char *cv_ws_subprotocol(const struct cv_ws *ws);

void *cv_ws_data(const struct cv_ws *ws);
void cv_ws_set_data(struct cv_ws *ws, void *data);
/* Peer address "ip:port" for log lines. */
const char *cv_ws_peer(const struct cv_ws *ws);
/* uv_hrtime() when the connection was accepted (server) or started (client). */
uint64_t cv_ws_born_ns(const struct cv_ws *ws);
/* Wire bytes read from the socket / queued for it (frames, handshake included). */
uint64_t cv_ws_rx_bytes(const struct cv_ws *ws);
uint64_t cv_ws_tx_bytes(const struct cv_ws *ws);

/* Queues one message made of a followed by b (either may be empty), as a
 * single frame. Copies the bytes (masking them for a client). Returns 0,
 * CV_ECLOSED, or CV_ETOOBIG if the queue would pass tx_max. */
int cv_ws_send2(struct cv_ws *ws, uint8_t opcode, const void *a, size_t alen, const void *b,
                size_t blen);
static inline int cv_ws_send(struct cv_ws *ws, uint8_t opcode, const void *p, size_t n)
{
    return cv_ws_send2(ws, opcode, p, n, NULL, 0);
}
/* Bytes queued but not yet written to the socket. */
size_t cv_ws_tx_pending(const struct cv_ws *ws);
/* True while the queue is below tx_high (callers should stop producing
 * otherwise and wait for on_drain). */
bool cv_ws_is_writable(const struct cv_ws *ws);

/* Stops/resumes reading from the peer (backpressure). */
void cv_ws_pause(struct cv_ws *ws);
void cv_ws_resume(struct cv_ws *ws);

/* Starts the close handshake with code and reason (reason may be NULL).
 * Queued data is written first. on_close fires when done (or after a 5 s
 * grace period). Safe to call more than once. */
void cv_ws_close(struct cv_ws *ws, uint16_t code, const char *reason);

#endif
