#include "tunnel/local.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/kohaku.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/ws.h"
#include "tunnel/flow.h"

/* Id table buckets (power of two). Ids are mostly sequential, so a
 * multiplicative hash spreads them evenly. */
#define TAB_BITS 12
#define TAB_SIZE (1u << TAB_BITS)
/* Coarse timer period for deadlines (connect, linger, UDP idle). */
#define SWEEP_MS 250
/* Soft backpressure (see press_start): above press_high (default
 * PRESS_HIGH) bytes queued for a local socket, the WebSocket reader pauses
 * until the queue is below a quarter of it, for at most PRESS_MAX_MS per
 * episode. */
#define PRESS_HIGH (1u << 20)
#define PRESS_MAX_MS 2000
/* Longest a socket closed by the peer may take to accept our queued bytes
 * before it is dropped (the 5 s linger starts once they are written). */
#define DRAIN_MAX_MS 60000

enum kind { K_TCP, K_UDP_FLOW, K_UDP_PEER };

enum state {
    S_CONNECTING, /* agent: TCP connect in flight; DATA is queued */
    S_OPEN,       /* reading and writing */
    S_EOF_HOLD,   /* local EOF; id kept for the peer's CLOSE (agent, CLOSE
                     sent) or until the peer goes quiet (forward) */
    S_DRAIN,      /* peer closed: flush, shut down, read-and-discard */
    S_CLOSING     /* uv_close called; freed in the close callback */
};

struct cv_lconn {
    struct cv_local *hub;           /* borrowed */
    struct cv_lconn *hnext;         /* id table chain */
    struct cv_lconn *anext;         /* UDP peer address table chain */
    struct cv_lconn *prev, *next;   /* hub's list of live endpoints */
    uint32_t id;
    uint8_t proto;
    uint8_t kind;
    uint8_t state;
    bool in_table;
    bool reading;
    bool eof_seen;     /* local side sent EOF */
    bool close_sent;   /* we sent CLOSE for this id */
    bool write_busy;   /* a uv_write of `out` is in flight */
    bool shut_sent;
    bool drain_on_connect; /* peer closed while connecting */
    bool pressing;     /* this socket's queue has paused the WebSocket reader */
    bool slow;         /* an episode ran out: no more pausing until it drains */
    bool flow;         /* native TCP: credit flow control (docs/PROTOCOL.md §3) */
    bool fin_rcvd;     /* native: the peer's FIN arrived; shut down once flushed */
    struct cv_flow_rx rx; /* native: window granted to the peer */
    struct cv_flow_tx tx; /* native: credit the peer granted us */
    uint64_t deadline; /* uv_now() ms; 0: none */
    uint64_t press_until; /* end of the current pressing episode */
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_udp_t udp;
    } h;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct cv_buf out;  /* owned: bytes being written (frozen while busy) */
    struct cv_buf pend; /* owned: bytes queued behind `out` */
    struct sockaddr_storage peer; /* K_UDP_PEER: its source address */
};

struct cv_local {
    uv_loop_t *loop;           /* borrowed */
    struct cv_ws *ws;          /* borrowed; NULL while none */
    struct cv_local_opts o;
    uint8_t *rbuf;             /* owned: the shared read buffer */
    struct cv_lconn **tab;     /* owned: id table */
    struct cv_lconn **atab;    /* owned: UDP peers by address */
    struct cv_lconn *live;     /* every endpoint not yet freed */
    size_t count;              /* ids in the table */
    size_t nlive;              /* endpoints not yet freed */
    size_t udp_pending;        /* bytes in queued UDP sends */
    size_t npressing;          /* endpoints pausing the WebSocket reader */
    uint32_t next_id;          /* forward: next session id */
    bool paused;
    bool freeing;
    bool native;               /* the WebSocket negotiated culvert.v1 */
    struct cv_flow_budget budget; /* native: windows granted on this WebSocket */
    bool has_listener;
    int nhandles;              /* timer + listener not yet closed */
    uv_timer_t timer;
    uv_udp_t listener;
};

struct udp_sreq {
    uv_udp_send_t req;
    struct cv_local *hub; /* borrowed */
    size_t len;
    uint8_t data[];
};

static void start_read(struct cv_lconn *c);
static void stop_read(struct cv_lconn *c);
static void conn_close(struct cv_lconn *c);
static void flush_then_shut(struct cv_lconn *c);

/* ---- messages ---------------------------------------------------------- */

int cv_tunnel_send(struct cv_ws *ws, uint8_t type, uint8_t proto, uint32_t id, uint16_t port,
                   const void *payload, size_t len)
{
    if (ws == NULL)
        return CV_ECLOSED;
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, type, proto, id, port);
    return cv_ws_send2(ws, CV_WS_BINARY, hdr, sizeof hdr, payload, len);
}

const char *cv_local_os_error(int uverr, char *buf, size_t len)
{
    if (uverr < 0 && uverr > -4096)
        snprintf(buf, len, "%s (os error %d)", strerror(-uverr), -uverr);
    else
        snprintf(buf, len, "%s", cv_strerror(uverr));
    return buf;
}

/* Sends a message for c unless its id was already given up. */
static int send_msg(struct cv_lconn *c, uint8_t type, const void *p, size_t n)
{
    if (!c->in_table)
        return CV_ECLOSED;
    return cv_tunnel_send(c->hub->ws, type, c->proto, c->id, 0, p, n);
}

/* The answer to a CONNECT (CONNECTED or ERROR) is sent even when the peer
 * already sent CLOSE for the id: every CONNECT gets exactly one answer, as
 * from the reference agent; nothing follows it then. */
static void send_reply(struct cv_lconn *c, uint8_t type, const void *p, size_t n)
{
    cv_tunnel_send(c->hub->ws, type, c->proto, c->id, 0, p, n);
}

static void send_close(struct cv_lconn *c)
{
    if (c->close_sent || !c->in_table)
        return;
    c->close_sent = true;
    send_msg(c, CV_KH_CLOSE, NULL, 0);
}

/* ---- tables ------------------------------------------------------------ */

static size_t id_slot(uint32_t id)
{
    return (size_t)((id * 2654435761u) >> (32 - TAB_BITS));
}

static size_t addr_slot(const struct sockaddr_storage *ss)
{
    const uint8_t *p;
    size_t n;
    if (ss->ss_family == AF_INET6) {
        p = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        n = 16;
    } else {
        p = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        n = 4;
    }
    uint32_t hsh = 2166136261u ^ ((const struct sockaddr_in *)ss)->sin_port;
    for (size_t i = 0; i < n; i++)
        hsh = (hsh ^ p[i]) * 16777619u;
    return hsh & (TAB_SIZE - 1);
}

static bool addr_eq(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

static void table_insert(struct cv_lconn *c)
{
    struct cv_local *h = c->hub;
    size_t i = id_slot(c->id);
    c->hnext = h->tab[i];
    h->tab[i] = c;
    c->in_table = true;
    h->count++;
    if (c->kind == K_UDP_PEER) {
        size_t j = addr_slot(&c->peer);
        c->anext = h->atab[j];
        h->atab[j] = c;
    }
}

static void unchain(struct cv_lconn **pp, struct cv_lconn *c, bool by_addr)
{
    for (; *pp != NULL; pp = by_addr ? &(*pp)->anext : &(*pp)->hnext) {
        if (*pp == c) {
            *pp = by_addr ? c->anext : c->hnext;
            return;
        }
    }
}

static void table_remove(struct cv_lconn *c)
{
    if (!c->in_table)
        return;
    struct cv_local *h = c->hub;
    unchain(&h->tab[id_slot(c->id)], c, false);
    if (c->kind == K_UDP_PEER)
        unchain(&h->atab[addr_slot(&c->peer)], c, true);
    c->in_table = false;
    h->count--;
}

struct cv_lconn *cv_local_find(const struct cv_local *h, uint32_t id)
{
    for (struct cv_lconn *c = h->tab[id_slot(id)]; c != NULL; c = c->hnext)
        if (c->id == id)
            return c;
    return NULL;
}

static struct cv_lconn *peer_find(const struct cv_local *h, const struct sockaddr *sa)
{
    struct sockaddr_storage key;
    memcpy(&key, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in));
    for (struct cv_lconn *c = h->atab[addr_slot(&key)]; c != NULL; c = c->anext)
        if (addr_eq(&c->peer, sa))
            return c;
    return NULL;
}

size_t cv_local_count(const struct cv_local *h) { return h->count; }
uint32_t cv_lconn_id(const struct cv_lconn *c) { return c->id; }
uint8_t cv_lconn_proto(const struct cv_lconn *c) { return c->proto; }

/* ---- endpoint lifetime ------------------------------------------------- */

static struct cv_lconn *conn_new(struct cv_local *h, enum kind k, uint8_t proto, uint32_t id)
{
    struct cv_lconn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->hub = h;
    c->kind = (uint8_t)k;
    c->proto = proto;
    c->id = id;
    c->state = S_OPEN;
    c->h.handle.data = c;
    c->creq.data = c->wreq.data = c->sreq.data = c;
    cv_buf_init(&c->out, h->o.conn_pending_max);
    cv_buf_init(&c->pend, h->o.conn_pending_max);
    if (h->native && k == K_TCP) {
        /* Credit bounds what is queued: the 8 MiB abort cap does not apply. */
        c->flow = true;
        cv_flow_rx_init(&c->rx, &h->budget);
        cv_flow_tx_init(&c->tx);
        c->out.max = c->pend.max = 2 * CV_FLOW_WINDOW_MAX;
    }
    c->next = h->live;
    if (h->live != NULL)
        h->live->prev = c;
    h->live = c;
    h->nlive++;
    return c;
}

static void maybe_free_hub(struct cv_local *h)
{
    if (!h->freeing || h->nlive > 0 || h->nhandles > 0)
        return;
    free(h->rbuf);
    free(h->tab);
    free(h->atab);
    free(h);
}

static void conn_free(struct cv_lconn *c)
{
    struct cv_local *h = c->hub;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        h->live = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    cv_buf_fini(&c->out);
    cv_buf_fini(&c->pend);
    free(c);
    h->nlive--;
    maybe_free_hub(h);
}

static void on_conn_closed(uv_handle_t *hd)
{
    conn_free(hd->data);
}

/* The protocol has no flow control, so a service slower than the tunnel
 * would fill its queue and be aborted at conn_pending_max (spec §11.4). To
 * spare bulk transfers to a slower-but-working service, the WebSocket
 * reader pauses while a queue is above press_high, which pushes back through
 * TCP to the sender. The pause never waits on one connection for long: an
 * episode that has not brought the queue below press_high / 4 within
 * PRESS_MAX_MS marks the socket slow; it stops pausing the reader and is
 * aborted if it reaches its cap (so a stalled reader costs the others at
 * most PRESS_MAX_MS, once). */
static size_t queued(const struct cv_lconn *c)
{
    return c->out.len + c->pend.len;
}

static void press_start(struct cv_lconn *c)
{
    struct cv_local *h = c->hub;
    if (c->pressing || c->slow || h->ws == NULL || queued(c) < h->o.press_high)
        return;
    c->pressing = true;
    c->press_until = uv_now(h->loop) + PRESS_MAX_MS;
    cv_log_debug("%s: id %u: %zu bytes queued, pausing the tunnel", h->o.name, c->id, queued(c));
    if (h->npressing++ == 0)
        cv_ws_pause(h->ws);
}

static void press_end(struct cv_lconn *c, bool slow)
{
    struct cv_local *h = c->hub;
    c->slow = slow;
    if (!c->pressing)
        return;
    c->pressing = false;
    if (--h->npressing == 0 && h->ws != NULL)
        cv_ws_resume(h->ws);
}

/* Ends an endpoint without sending anything more for it. */
static void conn_close(struct cv_lconn *c)
{
    if (c->state == S_CLOSING)
        return;
    table_remove(c);
    press_end(c, false);
    if (c->flow) {
        cv_flow_rx_fini(&c->rx, &c->hub->budget);
        c->flow = false;
    }
    c->state = S_CLOSING;
    c->deadline = 0;
    if (c->kind == K_UDP_PEER)
        conn_free(c); /* no handle: nothing can call back on its behalf */
    else
        uv_close(&c->h.handle, on_conn_closed);
}

/* A local failure (read/write error, overflow): CLOSE, forget, close. */
static void conn_abort(struct cv_lconn *c, int err, const char *what)
{
    if (c->state == S_CLOSING)
        return;
    if (c->in_table)
        cv_log_debug("%s: id %u: %s: %s", c->hub->o.name, c->id, what, cv_strerror(err));
    send_close(c);
    conn_close(c);
}

/* ---- local -> tunnel --------------------------------------------------- */

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct cv_lconn *c = hd->data;
    buf->base = (char *)c->hub->rbuf;
    buf->len = c->flow ? CV_LIMIT_NATIVE_PAYLOAD : CV_LIMIT_DATA_PAYLOAD;
    if (c->flow && c->tx.credit < buf->len)
        buf->len = c->tx.credit > 0 ? (size_t)c->tx.credit : 1;
}

static void on_listener_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct cv_local *h = hd->data;
    buf->base = (char *)h->rbuf;
    buf->len = CV_LIMIT_DATA_PAYLOAD;
}

/* One read -> one DATA, copied into the WebSocket's queue right here. */
static void send_data(struct cv_lconn *c, const void *p, size_t n)
{
    struct cv_local *h = c->hub;
    int rc = send_msg(c, CV_KH_DATA, p, n);
    if (rc == CV_ETOOBIG || rc == CV_ENOMEM) {
        conn_abort(c, rc, "tunnel queue full");
        return;
    }
    if (c->flow) {
        c->tx.credit -= n <= c->tx.credit ? n : c->tx.credit;
        if (c->tx.credit == 0) {
            cv_log_debug("%s: id %u: no credit, waiting for WINDOW", h->o.name, c->id);
            stop_read(c); /* only this stream waits for the peer's WINDOW */
        }
    }
    if (h->ws != NULL && !cv_ws_is_writable(h->ws))
        cv_local_pause(h);
}

static void native_shut(struct cv_lconn *c);

/* Native: the local side ended its sending. Tell the peer with a FIN (an
 * empty DATA) and keep writing what it still sends; the id is released
 * once both sides have sent FIN. */
static void native_eof(struct cv_lconn *c)
{
    c->eof_seen = true;
    c->reading = false;
    send_msg(c, CV_KH_DATA, NULL, 0);
    c->state = S_EOF_HOLD;
    c->deadline = 0;
    if (c->fin_rcvd && c->shut_sent)
        conn_close(c);
}

static void local_eof(struct cv_lconn *c)
{
    struct cv_local *h = c->hub;
    if (c->flow) {
        native_eof(c);
        return;
    }
    c->eof_seen = true;
    c->reading = false;
    if (h->o.eof_quiet_ms > 0) {
        c->state = S_EOF_HOLD;
        c->deadline = uv_now(h->loop) + h->o.eof_quiet_ms;
        return;
    }
    send_close(c);
    if (h->o.eof_hold_ms > 0) {
        c->state = S_EOF_HOLD;
        c->deadline = uv_now(h->loop) + h->o.eof_hold_ms;
        return;
    }
    table_remove(c);
    c->state = S_DRAIN;
    c->deadline = uv_now(h->loop) + DRAIN_MAX_MS;
    flush_then_shut(c);
}

static void on_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct cv_lconn *c = s->data;
    if (n == 0 || c->state == S_CLOSING)
        return;
    if (n > 0) {
        if (c->state == S_OPEN)
            send_data(c, buf->base, (size_t)n);
        return; /* S_DRAIN: read and discard (spec §11.11) */
    }
    if (c->state == S_DRAIN) {
        c->eof_seen = true;
        c->reading = false;
        if (c->shut_sent || n != UV_EOF)
            conn_close(c);
        return;
    }
    if (n == UV_EOF)
        local_eof(c);
    else
        conn_abort(c, (int)n, "read");
}

static void on_flow_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *sa,
                         unsigned flags)
{
    (void)flags;
    struct cv_lconn *c = u->data;
    if (c->state != S_OPEN)
        return;
    if (n < 0) {
        conn_abort(c, (int)n, "udp receive");
        return;
    }
    if (sa == NULL)
        return; /* nothing more to read now */
    send_data(c, buf->base, (size_t)n);
}

static void start_read(struct cv_lconn *c)
{
    if (c->reading || c->eof_seen || c->state == S_CLOSING || c->kind == K_UDP_PEER)
        return;
    if (c->hub->paused && c->state != S_DRAIN)
        return;
    if (c->flow && c->tx.credit == 0 && c->state != S_DRAIN)
        return;
    int rc;
    if (c->kind == K_TCP)
        rc = uv_read_start(&c->h.stream, on_alloc, on_tcp_read);
    else
        rc = uv_udp_recv_start(&c->h.udp, on_alloc, on_flow_recv);
    if (rc < 0) {
        conn_abort(c, rc, "read start");
        return;
    }
    c->reading = true;
}

static void stop_read(struct cv_lconn *c)
{
    if (!c->reading || c->state == S_DRAIN)
        return;
    if (c->kind == K_TCP)
        uv_read_stop(&c->h.stream);
    else
        uv_udp_recv_stop(&c->h.udp);
    c->reading = false;
}

void cv_local_pause(struct cv_local *h)
{
    if (h->paused)
        return;
    h->paused = true;
    cv_log_debug("%s: tunnel queue full: local reads paused", h->o.name);
    for (struct cv_lconn *c = h->live; c != NULL; c = c->next)
        stop_read(c);
    if (h->has_listener)
        uv_udp_recv_stop(&h->listener);
}

static void on_listener_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf,
                             const struct sockaddr *sa, unsigned flags);

void cv_local_resume(struct cv_local *h)
{
    if (!h->paused)
        return;
    h->paused = false;
    cv_log_debug("%s: tunnel queue drained: local reads resumed", h->o.name);
    struct cv_lconn *next;
    for (struct cv_lconn *c = h->live; c != NULL; c = next) {
        next = c->next; /* start_read may abort c; it is freed later */
        if (c->state == S_OPEN)
            start_read(c);
    }
    if (h->has_listener)
        uv_udp_recv_start(&h->listener, on_listener_alloc, on_listener_recv);
}

/* ---- tunnel -> local: TCP ---------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct cv_lconn *c = req->data;
    (void)status;
    if (c->state == S_CLOSING)
        return;
    if (c->eof_seen) {
        conn_close(c);
        return;
    }
    if (c->fin_rcvd)
        return; /* native half-close: the service may still send */
    c->deadline = uv_now(c->hub->loop) + CV_LIMIT_LINGER_MS;
}

static void on_write(uv_write_t *req, int status);

static void start_write(struct cv_lconn *c)
{
    if (c->write_busy || c->pend.len == 0)
        return;
    struct cv_buf t = c->out; /* out is empty here: swap the storages */
    c->out = c->pend;
    c->pend = t;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&c->out), (unsigned)c->out.len);
    int rc = uv_write(&c->wreq, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        conn_abort(c, rc, "write");
        return;
    }
    c->write_busy = true;
}

static void native_consumed(struct cv_lconn *c, size_t n)
{
    if (!c->flow || n == 0)
        return;
    uint32_t inc = cv_flow_rx_consume(&c->rx, &c->hub->budget, n, queued(c) == 0);
    if (inc) {
        uint8_t be[4] = {(uint8_t)(inc >> 24), (uint8_t)(inc >> 16), (uint8_t)(inc >> 8),
                         (uint8_t)inc};
        send_msg(c, CV_KH_WINDOW, be, sizeof be);
    }
}

static void on_write(uv_write_t *req, int status)
{
    struct cv_lconn *c = req->data;
    size_t written = c->out.len;
    c->write_busy = false;
    /* The storage is kept for the next round (start_write hands it to
     * pend): a stream that pauses between writes would otherwise free it
     * and grow it again by reallocs, copying what is queued, each time.
     * on_sweep frees what an idle stream keeps. */
    cv_buf_drop(&c->out, c->out.len);
    if (c->state == S_CLOSING)
        return;
    if (status < 0) {
        conn_abort(c, status, "write");
        return;
    }
    start_write(c);
    native_consumed(c, written);
    if (c->fin_rcvd)
        native_shut(c);
    if (c->state != S_CLOSING && queued(c) < c->hub->o.press_high / 4)
        press_end(c, false);
    if (c->state == S_DRAIN)
        flush_then_shut(c);
}

/* Peer closed (or local EOF in forward): once everything queued is
 * written, shut the write side; close after EOF or the linger time. */
static void flush_then_shut(struct cv_lconn *c)
{
    if (c->state != S_DRAIN || c->shut_sent)
        return;
    start_write(c);
    if (c->write_busy || c->state != S_DRAIN)
        return;
    int rc = uv_shutdown(&c->sreq, &c->h.stream, on_shutdown);
    if (rc < 0) {
        conn_close(c);
        return;
    }
    c->shut_sent = true;
}

static void queue_bytes(struct cv_lconn *c, const uint8_t *p, size_t n)
{
    /* Native: the window we granted bounds this; the cap is only a guard. */
    size_t max = c->flow ? c->pend.max : c->hub->o.conn_pending_max;
    if (n > max || c->out.len + c->pend.len > max - n) {
        cv_log_warn("%s: id %u: local side not reading, %zu bytes queued: connection aborted",
                    c->hub->o.name, c->id, c->out.len + c->pend.len);
        conn_abort(c, CV_ETOOBIG, "queue");
        return;
    }
    int rc = cv_buf_append(&c->pend, p, n);
    if (rc < 0)
        conn_abort(c, rc, "queue");
}

static void tcp_write(struct cv_lconn *c, const uint8_t *p, size_t n)
{
    if (c->state == S_CONNECTING || c->write_busy || c->pend.len > 0) {
        queue_bytes(c, p, n);
        if (c->state != S_CLOSING && !c->flow)
            press_start(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int w = uv_try_write(&c->h.stream, &b, 1);
    if (w == UV_EAGAIN || w == UV_ENOSYS)
        w = 0;
    if (w < 0) {
        conn_abort(c, w, "write");
        return;
    }
    if ((size_t)w < n)
        queue_bytes(c, p + w, n - (size_t)w);
    if (c->state == S_CLOSING)
        return;
    native_consumed(c, (size_t)w);
    if ((size_t)w == n)
        return;
    start_write(c);
    if (!c->flow)
        press_start(c);
}

/* Native: after the peer's FIN, shut the write side once all is written;
 * the id goes once the local side has ended too. */
static void native_shut(struct cv_lconn *c)
{
    if (c->shut_sent || c->write_busy || c->pend.len > 0 || c->state == S_CONNECTING ||
        c->state == S_CLOSING)
        return;
    if (uv_shutdown(&c->sreq, &c->h.stream, on_shutdown) < 0) {
        conn_abort(c, CV_ECLOSED, "shutdown");
        return;
    }
    c->shut_sent = true;
    if (c->eof_seen)
        table_remove(c); /* both FINs: nothing more for this id */
}

/* Native DATA for a TCP stream: within our window; empty = FIN. */
static void native_write(struct cv_lconn *c, const uint8_t *p, size_t n)
{
    if (c->fin_rcvd || cv_flow_rx_data(&c->rx, n) != 0) {
        static const char msg[] = "flow control violation";
        cv_log_warn("%s: id %u: peer sent beyond its window: connection aborted", c->hub->o.name,
                    c->id);
        send_msg(c, CV_KH_ERROR, msg, sizeof msg - 1);
        conn_abort(c, CV_EPROTO, "flow control");
        return;
    }
    if (n == 0) {
        c->fin_rcvd = true;
        native_shut(c);
        return;
    }
    tcp_write(c, p, n);
}

void cv_local_window_msg(struct cv_lconn *c, const uint8_t *p, size_t len)
{
    if (len == 4)
        cv_local_window(c, (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}

void cv_local_window(struct cv_lconn *c, uint32_t inc)
{
    if (!c->flow || c->state == S_CLOSING)
        return;
    if (cv_flow_tx_window(&c->tx, inc) != 0) {
        conn_abort(c, CV_EPROTO, "WINDOW beyond any window");
        return;
    }
    cv_log_debug("%s: id %u: WINDOW +%u, credit %llu", c->hub->o.name, c->id, inc,
                 (unsigned long long)c->tx.credit);
    if (c->state == S_OPEN)
        start_read(c);
}

/* ---- tunnel -> local: UDP ---------------------------------------------- */

static void on_udp_sent(uv_udp_send_t *req, int status)
{
    struct udp_sreq *r = (struct udp_sreq *)req;
    r->hub->udp_pending -= r->len;
    if (status < 0 && status != UV_ECANCELED)
        cv_log_debug("%s: udp send: %s", r->hub->o.name, uv_strerror(status));
    free(r);
}

/* One datagram; the kernel's buffer full means a queued copy, bounded by
 * conn_pending_max across the hub (past it, datagrams are dropped). */
static void udp_send(struct cv_local *h, uv_udp_t *u, const struct sockaddr *to,
                     const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int rc = uv_udp_try_send(u, &b, 1, to);
    if (rc >= 0)
        return;
    if (rc != UV_EAGAIN) {
        cv_log_debug("%s: udp send: %s", h->o.name, uv_strerror(rc));
        return;
    }
    if (h->udp_pending + n > h->o.conn_pending_max)
        return;
    struct udp_sreq *r = malloc(sizeof *r + n);
    if (r == NULL)
        return;
    r->hub = h;
    r->len = n;
    if (n > 0)
        memcpy(r->data, p, n);
    b = uv_buf_init((char *)r->data, (unsigned)n);
    if (uv_udp_send(&r->req, u, &b, 1, to, on_udp_sent) < 0) {
        free(r);
        return;
    }
    h->udp_pending += n;
}

void cv_local_write(struct cv_lconn *c, const uint8_t *p, size_t n)
{
    struct cv_local *h = c->hub;
    switch (c->kind) {
    case K_TCP:
        if (c->flow) {
            if (c->state != S_DRAIN)
                native_write(c, p, n);
            break;
        }
        if (c->state == S_EOF_HOLD && !c->close_sent)
            c->deadline = uv_now(h->loop) + h->o.eof_quiet_ms;
        if (c->state == S_CONNECTING || c->state == S_OPEN || c->state == S_EOF_HOLD)
            tcp_write(c, p, n);
        break;
    case K_UDP_FLOW:
        if (c->state == S_OPEN)
            udp_send(h, &c->h.udp, NULL, p, n);
        break;
    default:
        if (h->o.udp_idle_ms > 0)
            c->deadline = uv_now(h->loop) + h->o.udp_idle_ms;
        udp_send(h, &h->listener, (const struct sockaddr *)&c->peer, p, n);
        break;
    }
}

void cv_local_peer_close(struct cv_lconn *c)
{
    table_remove(c);
    if (c->state == S_CLOSING || c->state == S_DRAIN)
        return;
    if (c->flow) {
        /* Native: CLOSE is an abort (a graceful end is a FIN). Close now;
         * reading and discarding a busy service's output for seconds
         * (§11.11, for KohakuRiver peers) would only burn CPU. */
        conn_close(c);
        return;
    }
    if (c->kind != K_TCP) {
        conn_close(c);
        return;
    }
    if (c->state == S_CONNECTING) {
        c->drain_on_connect = true;
        return;
    }
    c->state = S_DRAIN;
    c->deadline = uv_now(c->hub->loop) + DRAIN_MAX_MS;
    start_read(c); /* discard what the service still sends */
    flush_then_shut(c);
}

void cv_local_peer_error(struct cv_lconn *c)
{
    conn_close(c);
}

/* ---- agent: dialling 127.0.0.1 ----------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
    struct cv_lconn *c = req->data;
    if (c->state == S_CLOSING)
        return; /* timed out or torn down: already handled */
    if (status < 0) {
        char msg[128];
        cv_local_os_error(status, msg, sizeof msg);
        cv_log_debug("%s: id %u: connect: %s", c->hub->o.name, c->id, msg);
        send_reply(c, CV_KH_ERROR, msg, strlen(msg));
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->h.tcp, 1);
    c->deadline = 0;
    c->state = S_OPEN;
    send_reply(c, CV_KH_CONNECTED, NULL, 0);
    if (c->drain_on_connect) {
        c->state = S_DRAIN;
        c->deadline = uv_now(c->hub->loop) + DRAIN_MAX_MS;
        start_read(c);
        flush_then_shut(c);
        return;
    }
    start_read(c);
    if (c->state == S_OPEN)
        start_write(c);
    if (c->fin_rcvd)
        native_shut(c);
}

/* conn_new with its own handle (TCP, or a connected UDP flow) initialized.
 * Returns NULL with *rc set on failure. */
static struct cv_lconn *conn_open(struct cv_local *h, enum kind k, uint8_t proto, uint32_t id,
                                  int *rc)
{
    struct cv_lconn *c = conn_new(h, k, proto, id);
    if (c == NULL) {
        *rc = CV_ENOMEM;
        return NULL;
    }
    *rc = k == K_TCP ? uv_tcp_init(h->loop, &c->h.tcp) : uv_udp_init(h->loop, &c->h.udp);
    if (*rc < 0) {
        c->state = S_CLOSING;
        conn_free(c);
        return NULL;
    }
    return c;
}

int cv_local_tcp_connect(struct cv_local *h, uint32_t id, uint16_t port)
{
    int rc;
    struct cv_lconn *c = conn_open(h, K_TCP, CV_KH_TCP, id, &rc);
    if (c == NULL)
        return rc;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    rc = uv_tcp_connect(&c->creq, &c->h.tcp, (const struct sockaddr *)&sa, on_connect);
    if (rc < 0) {
        conn_close(c);
        return rc;
    }
    c->state = S_CONNECTING;
    c->deadline = uv_now(h->loop) + CV_LIMIT_CONNECT_MS;
    table_insert(c);
    return 0;
}

int cv_local_udp_connect(struct cv_local *h, uint32_t id, uint16_t port)
{
    int rc;
    struct cv_lconn *c = conn_open(h, K_UDP_FLOW, CV_KH_UDP, id, &rc);
    if (c == NULL)
        return rc;
    struct sockaddr_in any, to;
    uv_ip4_addr("127.0.0.1", 0, &any);
    uv_ip4_addr("127.0.0.1", port, &to);
    rc = uv_udp_bind(&c->h.udp, (const struct sockaddr *)&any, 0);
    if (rc == 0)
        rc = uv_udp_connect(&c->h.udp, (const struct sockaddr *)&to);
    if (rc < 0) {
        conn_close(c);
        return rc;
    }
    table_insert(c);
    send_msg(c, CV_KH_CONNECTED, NULL, 0);
    if (h->o.udp_idle_ms > 0)
        c->deadline = uv_now(h->loop) + h->o.udp_idle_ms;
    start_read(c);
    return 0;
}

/* ---- forward: accepting ------------------------------------------------ */

static int next_session_id(struct cv_local *h, uint32_t *id)
{
    size_t cap = h->native ? CV_LIMIT_NATIVE_CONNS : CV_LIMIT_SESSION_CONNS;
    if (h->count >= cap || h->next_id == 0)
        return CV_ETOOBIG; /* full, or all 2^32-1 ids used: never reuse */
    *id = h->next_id++;
    return 0;
}

int cv_local_tcp_accept(struct cv_local *h, uv_stream_t *server)
{
    int rc;
    struct cv_lconn *c = conn_open(h, K_TCP, CV_KH_TCP, 0, &rc);
    if (c == NULL)
        return rc;
    rc = uv_accept(server, &c->h.stream);
    if (rc == 0)
        rc = next_session_id(h, &c->id);
    if (rc < 0) {
        conn_close(c);
        return rc;
    }
    uv_tcp_nodelay(&c->h.tcp, 1);
    table_insert(c);
    cv_tunnel_send(h->ws, CV_KH_CONNECT, CV_KH_TCP, c->id, h->o.connect_port, NULL, 0);
    cv_log_debug("%s: id %u: accepted", h->o.name, c->id);
    start_read(c);
    return 0;
}

static struct cv_lconn *peer_new(struct cv_local *h, const struct sockaddr *sa)
{
    uint32_t id;
    if (next_session_id(h, &id) < 0) {
        cv_log_warn("%s: too many UDP peers: datagram dropped", h->o.name);
        return NULL;
    }
    struct cv_lconn *c = conn_new(h, K_UDP_PEER, CV_KH_UDP, id);
    if (c == NULL)
        return NULL;
    memcpy(&c->peer, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in));
    table_insert(c);
    cv_tunnel_send(h->ws, CV_KH_CONNECT, CV_KH_UDP, id, h->o.connect_port, NULL, 0);
    cv_log_debug("%s: id %u: new udp peer", h->o.name, id);
    return c;
}

static void on_listener_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf,
                             const struct sockaddr *sa, unsigned flags)
{
    (void)flags;
    struct cv_local *h = u->data;
    if (n < 0) {
        cv_log_debug("%s: udp receive: %s", h->o.name, uv_strerror((int)n));
        return;
    }
    if (sa == NULL || h->freeing)
        return;
    struct cv_lconn *c = peer_find(h, sa);
    if (c == NULL && (c = peer_new(h, sa)) == NULL)
        return;
    if (h->o.udp_idle_ms > 0)
        c->deadline = uv_now(h->loop) + h->o.udp_idle_ms;
    send_data(c, buf->base, (size_t)n);
}

int cv_local_udp_listen(struct cv_local *h, const struct sockaddr *addr,
                        struct sockaddr_storage *bound)
{
    if (h->has_listener)
        return CV_EINVAL;
    int rc = uv_udp_init(h->loop, &h->listener);
    if (rc < 0)
        return rc;
    h->listener.data = h;
    h->has_listener = true;
    h->nhandles++;
    rc = uv_udp_bind(&h->listener, addr, 0);
    if (rc == 0) {
        int len = sizeof *bound;
        rc = uv_udp_getsockname(&h->listener, (struct sockaddr *)bound, &len);
    }
    if (rc == 0 && !h->paused)
        rc = uv_udp_recv_start(&h->listener, on_listener_alloc, on_listener_recv);
    return rc; /* on failure the listener is closed by cv_local_free */
}

/* ---- deadlines --------------------------------------------------------- */

static void expire(struct cv_lconn *c)
{
    switch (c->state) {
    case S_CONNECTING: {
        static const char msg[] = "Connection timed out (os error 110)";
        send_reply(c, CV_KH_ERROR, msg, sizeof msg - 1);
        conn_close(c);
        break;
    }
    case S_EOF_HOLD: /* spec §11.3: release the id 30 s after our CLOSE */
        send_close(c);  /* forward: the peer went quiet after our EOF */
        table_remove(c);
        c->state = S_DRAIN;
        c->deadline = uv_now(c->hub->loop) + DRAIN_MAX_MS;
        flush_then_shut(c);
        break;
    case S_OPEN: /* idle UDP */
        cv_log_debug("%s: id %u: idle, closing", c->hub->o.name, c->id);
        send_close(c);
        conn_close(c);
        break;
    default: /* drain or linger over */
        conn_close(c);
        break;
    }
}

static void on_sweep(uv_timer_t *t)
{
    struct cv_local *h = t->data;
    uint64_t now = uv_now(h->loop);
    struct cv_lconn *next;
    for (struct cv_lconn *c = h->live; c != NULL; c = next) {
        next = c->next; /* expire() may free a UDP peer */
        if (c->pressing && c->press_until <= now) {
            cv_log_debug("%s: id %u: slow reader, %zu bytes queued", h->o.name, c->id,
                         queued(c));
            press_end(c, true);
        }
        if (!c->write_busy) { /* storage kept between writes (on_write) */
            cv_buf_trim(&c->out);
            cv_buf_trim(&c->pend);
        }
        if (c->deadline != 0 && c->deadline <= now && c->state != S_CLOSING)
            expire(c);
    }
}

/* ---- hub --------------------------------------------------------------- */

int cv_local_new(uv_loop_t *loop, const struct cv_local_opts *opts, struct cv_local **out)
{
    struct cv_local *h = calloc(1, sizeof *h);
    if (h == NULL)
        return CV_ENOMEM;
    h->loop = loop;
    h->o = *opts;
    if (h->o.conn_pending_max == 0)
        h->o.conn_pending_max = CV_LIMIT_CONN_PENDING;
    if (h->o.name == NULL)
        h->o.name = "local";
    if (h->o.press_high == 0 || h->o.press_high > h->o.conn_pending_max)
        h->o.press_high = PRESS_HIGH < h->o.conn_pending_max ? PRESS_HIGH : h->o.conn_pending_max;
    h->next_id = 1;
    h->rbuf = malloc(CV_LIMIT_NATIVE_PAYLOAD);
    h->tab = calloc(TAB_SIZE, sizeof *h->tab);
    h->atab = calloc(TAB_SIZE, sizeof *h->atab);
    if (h->rbuf == NULL || h->tab == NULL || h->atab == NULL) {
        h->freeing = true;
        maybe_free_hub(h);
        return CV_ENOMEM;
    }
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    h->nhandles = 1;
    uv_timer_start(&h->timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&h->timer);
    *out = h;
    return 0;
}

void cv_local_set_ws(struct cv_local *h, struct cv_ws *ws)
{
    h->ws = ws;
    h->native = ws != NULL && cv_ws_subprotocol(ws) != NULL;
    cv_flow_budget_init(&h->budget, CV_FLOW_SESSION_CAP);
    if (h->npressing > 0) { /* the old WebSocket's pause dies with it */
        for (struct cv_lconn *c = h->live; c != NULL; c = c->next)
            c->pressing = false;
        h->npressing = 0;
    }
}

void cv_local_close_all(struct cv_local *h)
{
    struct cv_lconn *next;
    for (struct cv_lconn *c = h->live; c != NULL; c = next) {
        next = c->next;
        conn_close(c);
    }
    if (h->paused) {
        h->paused = false;
        if (h->has_listener && !h->freeing)
            uv_udp_recv_start(&h->listener, on_listener_alloc, on_listener_recv);
    }
}

static void on_hub_handle_closed(uv_handle_t *hd)
{
    struct cv_local *h = hd->data;
    h->nhandles--;
    maybe_free_hub(h);
}

void cv_local_free(struct cv_local *h)
{
    if (h == NULL || h->freeing)
        return;
    h->freeing = true;
    h->ws = NULL;
    cv_local_close_all(h);
    uv_close((uv_handle_t *)&h->timer, on_hub_handle_closed);
    if (h->has_listener)
        uv_close((uv_handle_t *)&h->listener, on_hub_handle_closed);
}
