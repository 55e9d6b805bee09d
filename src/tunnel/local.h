/* Local endpoints of a KohakuRiver tunnel (specs/kohaku-tunnel.md §5, §6.6,
 * §11): the TCP connections and UDP flows that the agent opens towards
 * 127.0.0.1 and that `forward` accepts, each carrying one client_id over
 * one WebSocket.
 *
 * A struct cv_local (the "hub") owns every endpoint of one WebSocket:
 *   - an id table (client_id -> endpoint);
 *   - one shared read buffer of CV_LIMIT_NATIVE_PAYLOAD bytes: every read
 *     is copied into the WebSocket's transmit queue synchronously by
 *     cv_ws_send2 before the next read can happen, so one buffer suffices;
 *   - backpressure: when the WebSocket's queue passes its high mark every
 *     local socket stops being read; cv_local_resume (from the WebSocket's
 *     on_drain) starts them again;
 *   - one coarse timer (connect timeout, linger, idle UDP expiry).
 *
 * The hub sends the tunnel messages that follow from local events itself:
 * DATA for each read, CLOSE on EOF or error, CONNECTED or ERROR when an
 * agent-side connect finishes, CONNECT when forward accepts a socket or
 * sees a new UDP peer. The owner feeds it the messages from the relay
 * (cv_local_write, cv_local_peer_close, cv_local_peer_error).
 *
 * Lifetime: endpoints are freed from their handles' close callbacks, never
 * inside a callback made on their behalf. No callback of this module fires
 * synchronously inside the call that started the operation. */
#ifndef CV_LOCAL_H
#define CV_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct cv_ws;
struct cv_local;
struct cv_lconn;

struct cv_local_opts {
    /* Bytes queued towards one local endpoint before that one connection is
     * aborted (spec §9). 0: CV_LIMIT_CONN_PENDING. */
    size_t conn_pending_max;
    /* After local EOF, keep the id (still writing relay DATA to the socket)
     * until the peer's CLOSE or this long (agent, spec §11.3: 30 s). 0: drop
     * the id at once, flush and close (forward). */
    uint32_t eof_hold_ms;
    /* Forward: the protocol has no half-close, so a local EOF is held (the id
     * stays open, relay DATA is still written) until no DATA came for the id
     * for this long; then CLOSE is sent. 0: CLOSE at once. */
    uint32_t eof_quiet_ms;
    /* Soft backpressure (local.c, press_start): above this many bytes queued
     * for one socket the WebSocket reader pauses (bounded in time). 0: 1 MiB.
     * Forward sets it high: while it pauses, the relay's queues toward the
     * session fill instead, and the relay cannot push back on the agent. */
    size_t press_high;
    /* Idle UDP flows/peers expire (with CLOSE) after this long. 0: never. */
    uint32_t udp_idle_ms;
    /* Port carried by the CONNECT that forward sends for each new id. */
    uint16_t connect_port;
    /* Log prefix, e.g. "agent" or "forward" (borrowed, static). */
    const char *name;
};

/* Creates a hub on loop. Returns 0, CV_ENOMEM or a libuv error. */
int cv_local_new(uv_loop_t *loop, const struct cv_local_opts *opts, struct cv_local **out);

/* Closes every endpoint (sending nothing) and frees the hub once all
 * handles are closed (asynchronously). NULL-safe. */
void cv_local_free(struct cv_local *h);

/* Sets the WebSocket the hub sends on (borrowed; NULL while none: messages
 * are then dropped). The owner must reset it before the WebSocket is freed. */
void cv_local_set_ws(struct cv_local *h, struct cv_ws *ws);

/* Closes every endpoint without sending anything (the WebSocket ended) and
 * clears the id table. The hub stays usable. */
void cv_local_close_all(struct cv_local *h);

/* Backpressure: stop/restart reading all local sockets. Idempotent. */
void cv_local_pause(struct cv_local *h);
void cv_local_resume(struct cv_local *h);

/* Id table. */
struct cv_lconn *cv_local_find(const struct cv_local *h, uint32_t id);
size_t cv_local_count(const struct cv_local *h);

/* Agent: CONNECT(00,id,port) -> dial 127.0.0.1:port. The id enters the table
 * at once so that early DATA is queued. Later: CONNECTED(00,id,0), or
 * ERROR(00,id,0,"<strerror> (os error N)") and the id is forgotten; after
 * CV_LIMIT_CONNECT_MS, "Connection timed out (os error 110)". Returns 0, or
 * an error (nothing was sent, nothing is left; the caller reports it). */
int cv_local_tcp_connect(struct cv_local *h, uint32_t id, uint16_t port);

/* Agent: CONNECT(01,id,port) -> a UDP socket bound to 127.0.0.1:0 and
 * connected to 127.0.0.1:port. Sends CONNECTED(01,id,0) itself on success.
 * Returns 0, or a libuv error (nothing sent or left; the caller sends
 * ERROR). */
int cv_local_udp_connect(struct cv_local *h, uint32_t id, uint16_t port);

/* Forward: accepts one connection from server, gives it the next session id
 * and sends CONNECT(00,id,connect_port). Returns 0, CV_ETOOBIG when the
 * session is full (the socket is refused), or a libuv error. */
int cv_local_tcp_accept(struct cv_local *h, uv_stream_t *server);

/* Forward: listens for UDP datagrams on addr; each new source address gets
 * the next id and CONNECT(01,id,connect_port). Returns 0 or a libuv error
 * (e.g. UV_EADDRINUSE). *bound receives the bound address. */
int cv_local_udp_listen(struct cv_local *h, const struct sockaddr *addr,
                        struct sockaddr_storage *bound);

/* DATA(id) from the relay: written in order (TCP: uv_try_write, the rest
 * queued up to conn_pending_max; UDP: one datagram). Overflow or a write
 * error aborts only this connection (CLOSE sent, id forgotten). */
void cv_local_write(struct cv_lconn *c, const uint8_t *p, size_t n);

/* CLOSE(id) from the relay: the id is forgotten and nothing more is sent
 * for it; a TCP socket gets its queue flushed, its write side shut, and is
 * read-and-discarded until EOF or CV_LIMIT_LINGER_MS (spec §11.11). */
void cv_local_peer_close(struct cv_lconn *c);

/* ERROR(id) from the relay: the id is forgotten and the socket closed at
 * once (nothing is sent). */
void cv_local_peer_error(struct cv_lconn *c);

/* Native mode (the WebSocket given to cv_local_set_ws negotiated culvert.v1):
 * the peer granted inc more bytes of credit for c (a WINDOW message). TCP
 * streams then follow docs/PROTOCOL.md §3: reads stay within credit, DATA
 * from the peer must stay within the window we granted (WINDOW messages are
 * sent as it is written locally), an empty DATA is a FIN both ways. */
void cv_local_window(struct cv_lconn *c, uint32_t inc);
/* The same from a WINDOW message's payload (a u32 BE); other lengths are
 * ignored, like any malformed message. */
void cv_local_window_msg(struct cv_lconn *c, const uint8_t *payload, size_t len);

uint32_t cv_lconn_id(const struct cv_lconn *c);
uint8_t cv_lconn_proto(const struct cv_lconn *c);

/* Sends one tunnel message (header from type, proto, id, port, then the
 * payload) as one binary WebSocket message. Returns 0 or the cv_ws_send2
 * error (CV_ECLOSED, CV_ETOOBIG). ws may be NULL (CV_ECLOSED). */
int cv_tunnel_send(struct cv_ws *ws, uint8_t type, uint8_t proto, uint32_t id, uint16_t port,
                   const void *payload, size_t len);

/* Formats a libuv/errno error the way the reference agent does:
 * "<strerror> (os error N)", e.g. "Connection refused (os error 111)". */
const char *cv_local_os_error(int uverr, char *buf, size_t len);

#endif
