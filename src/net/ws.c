/* WebSocket connections on libuv. See net/ws.h for the contract.
 *
 * Receive path: reads land in one 256 KiB buffer shared by every connection
 * of the process (all run on one loop thread and a read callback never
 * re-enters another), whole frames are parsed and delivered from it without
 * a copy, and only a trailing partial frame is copied into the connection's
 * own rx buffer. An idle connection therefore holds no receive memory.
 *
 * Transmit path: a large server frame is first tried straight from the
 * caller's buffers with one writev (uv_try_write); whatever the kernel does
 * not take is copied into `pend`. Small frames and client frames (masked on
 * the way) are copied into `pend`, which is written once per loop
 * iteration, after every I/O callback of that iteration has run (a uv_check
 * handle), and before the loop next blocks in poll (a uv_prepare handle,
 * for what timers and close callbacks queued): many small messages leave
 * in one write, with no added latency and nothing left waiting.
 * While a uv_write of `infl` is in flight, new frames accumulate in `pend`.
 *
 * TLS (wss://, and the relay's --tls-cert listener): `tls` is set and the
 * same buffers change meaning below the framing. Reads land in a shared
 * ciphertext buffer, are fed to the TLS engine (net/tls.c, memory BIOs) and
 * the plaintext is decrypted into shared_rx (or the partial-frame rx) and
 * parsed exactly as above. `pend` holds plaintext; flush encrypts it into
 * `infl`, which is what gets written. Plain connections only pay a
 * `ws->tls` test in flush, on_alloc and on_read, and skip nothing. */
#include "net/ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/url.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/tls.h"
#include "net/ws_server.h"

#define SHARED_RX (1024 * 1024)
/* Frames at least this large skip `pend` when nothing is queued. */
#define DIRECT_WRITE 16384
#define CLOSE_GRACE_MS 5000
#define FAIL_GRACE_MS 1000
/* Plaintext encrypted per SSL_write, so the write BIO stays small. */
#define TLS_SLICE (64 * 1024)
#define TLS_RX (64 * 1024)

enum state {
    ST_RESOLVE,   /* client: resolving the host */
    ST_CONNECT,   /* client: TCP connect in progress */
    ST_CLIENT_HS, /* client: request sent, reading the 101 */
    ST_SERVER_HS, /* server: reading the request head */
    ST_OPEN,
    ST_CLOSING, /* close frame sent or response queued; waiting */
    ST_CLOSED   /* handles closing; on_close fires when they are */
};

struct cv_ws {
    uv_tcp_t tcp;
    uv_timer_t tick; /* deadlines and keepalive */
    uv_timer_t kick; /* deferred processing of rx after resume */
    uv_getaddrinfo_t gai;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_loop_t *loop; /* borrowed */
    enum state state;
    int refs; /* handles and requests that must finish before free */
    bool client, paused, writing, want_drain, close_sent, close_rcvd, flush_close, opened;
    bool negotiated; /* opts.subprotocol is in use */
    bool nomask;     /* client: native framing, frames go unmasked */
    bool dirty;      /* on the flusher's list */
    bool counted;    /* holds a reference on the flusher */
    bool tls_open;   /* the TLS handshake is complete */
    bool tls_shut;   /* close_notify queued */
    struct cv_tls *tls; /* owned; NULL: plain TCP */
    struct cv_ws *dnext, *dprev;
    uint64_t deadline, last_rx, last_ping, ping_sent;
    uint16_t code;
    char reason[200];
    struct cv_ws_opts opts;
    struct cv_ws_cbs cbs;
    void *data; /* borrowed */
    struct cv_ws_parser ps;
    uint32_t utf8;
    size_t need;
    struct cv_buf rx, msg, pend, infl;
    struct cv_url *url; /* owned; client, until the handshake ends */
    char key[25];
    char peer[CV_ADDR_STRLEN];
    uint64_t born_ns; /* uv_hrtime() at accept / connect start */
    uint64_t rx_bytes, tx_bytes; /* wire bytes read / queued for writing */
    cv_ws__head_cb head_cb;
    void *srv;                   /* borrowed */
    struct cv_ws **pending;      /* borrowed: the server's list head */
    struct cv_ws *pnext, *pprev; /* links in *pending */
};

static uint8_t shared_rx[SHARED_RX];
/* Ciphertext as read from the socket, fed to the TLS engine at once. */
static uint8_t tls_rx[TLS_RX];

/* End-of-iteration writer: one per process (every role runs on one loop).
 * It lives while WebSockets do: the last one to go closes it. */
static struct {
    uv_loop_t *loop;
    struct flusher_handles {
        uv_check_t check;
        uv_prepare_t prepare;
    } *h; /* owned; freed by the close callback of the second handle */
    struct cv_ws *dirty;
    size_t live;
} flusher;
static uint64_t rng_state[2];

static void process_rx(struct cv_ws *ws);
static void do_close(struct cv_ws *ws);
static void tls_flush(struct cv_ws *ws);
static void tls_pump(struct cv_ws *ws);

/* xorshift128+ seeded from getrandom(2): masks need to be unpredictable to
 * a page script, not cryptographically strong, and a system call per frame
 * would cost more than the masking itself. (Not RAND_bytes: OpenSSL 3's
 * provider machinery costs ~2 MiB of RSS, see codec/digest.h.) */
static uint64_t rng_next(void)
{
    if (rng_state[0] == 0 && rng_state[1] == 0) {
        if (uv_random(NULL, NULL, rng_state, sizeof rng_state, 0, NULL) != 0 ||
            (rng_state[0] | rng_state[1]) == 0)
            rng_state[0] = (uint64_t)uv_hrtime() | 1;
    }
    uint64_t s1 = rng_state[0];
    const uint64_t s0 = rng_state[1];
    rng_state[0] = s0;
    s1 ^= s1 << 23;
    rng_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng_state[1] + s0;
}

void cv_ws_opts_default(struct cv_ws_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_msg = CV_LIMIT_WS_MSG_RELAY;
    o->pong_timeout_ms = CV_LIMIT_PONG_TIMEOUT_MS;
    o->tx_high = CV_LIMIT_WS_TX_HIGH;
    o->tx_low = CV_LIMIT_WS_TX_LOW;
    o->tx_max = 64u * 1024 * 1024;
}

void *cv_ws_data(const struct cv_ws *ws) { return ws->data; }
const char *cv_ws_subprotocol(const struct cv_ws *ws)
{
    return ws->negotiated ? ws->opts.subprotocol : NULL;
}
void cv_ws_set_data(struct cv_ws *ws, void *data) { ws->data = data; }
const char *cv_ws_peer(const struct cv_ws *ws) { return ws->peer; }
uint64_t cv_ws_born_ns(const struct cv_ws *ws) { return ws->born_ns; }
uint64_t cv_ws_rx_bytes(const struct cv_ws *ws) { return ws->rx_bytes; }

int cv_ws__peer_addr(struct cv_ws *ws, struct sockaddr_storage *ss)
{
    int len = sizeof *ss;
    return uv_tcp_getpeername(&ws->tcp, (struct sockaddr *)ss, &len);
}
uint64_t cv_ws_tx_bytes(const struct cv_ws *ws) { return ws->tx_bytes; }
size_t cv_ws_tx_pending(const struct cv_ws *ws) { return ws->pend.len + ws->infl.len; }

bool cv_ws_is_writable(const struct cv_ws *ws)
{
    if (cv_ws_tx_pending(ws) < ws->opts.tx_high)
        return true;
    ((struct cv_ws *)ws)->want_drain = true;
    return false;
}

static void set_reason(struct cv_ws *ws, uint16_t code, const char *reason)
{
    ws->code = code;
    size_t n = reason ? strlen(reason) : 0;
    if (n > sizeof ws->reason - 1)
        n = sizeof ws->reason - 1;
    memmove(ws->reason, reason ? reason : "", n);
    ws->reason[n] = 0;
}

/* ---- lifetime ---------------------------------------------------------- */

static void unlink_pending(struct cv_ws *ws)
{
    if (ws->pending == NULL)
        return;
    if (ws->pprev)
        ws->pprev->pnext = ws->pnext;
    else
        *ws->pending = ws->pnext;
    if (ws->pnext)
        ws->pnext->pprev = ws->pprev;
    ws->pending = NULL;
    ws->pnext = ws->pprev = NULL;
}

static void undirty(struct cv_ws *ws)
{
    if (!ws->dirty)
        return;
    ws->dirty = false;
    if (ws->dprev)
        ws->dprev->dnext = ws->dnext;
    else
        flusher.dirty = ws->dnext;
    if (ws->dnext)
        ws->dnext->dprev = ws->dprev;
    ws->dnext = ws->dprev = NULL;
}

static void on_flusher_closed(uv_handle_t *h)
{
    free(h->data);
}

static void flusher_release(void)
{
    if (--flusher.live == 0 && flusher.loop != NULL) {
        flusher.h->prepare.data = flusher.h;
        uv_close((uv_handle_t *)&flusher.h->check, NULL);
        uv_close((uv_handle_t *)&flusher.h->prepare, on_flusher_closed);
        flusher.h = NULL;
        flusher.loop = NULL; /* the next WebSocket starts a new one */
    }
}

static void release(struct cv_ws *ws)
{
    if (--ws->refs > 0)
        return;
    undirty(ws);
    if (ws->counted)
        flusher_release();
    if (ws->opened || ws->client)
        ws->cbs.on_close(ws, ws->code, ws->reason);
    cv_buf_fini(&ws->rx);
    cv_buf_fini(&ws->msg);
    cv_buf_fini(&ws->pend);
    cv_buf_fini(&ws->infl);
    cv_tls_free(ws->tls);
    free(ws->url);
    free(ws);
}

static void on_handle_closed(uv_handle_t *h) { release(h->data); }

static void do_close(struct cv_ws *ws)
{
    if (ws->state == ST_CLOSED)
        return;
    bool resolving = ws->state == ST_RESOLVE;
    ws->state = ST_CLOSED;
    unlink_pending(ws);
    if (resolving)
        uv_cancel((uv_req_t *)&ws->gai); /* its callback drops its ref */
    uv_close((uv_handle_t *)&ws->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&ws->tick, on_handle_closed);
    uv_close((uv_handle_t *)&ws->kick, on_handle_closed);
}

/* The handshake of a client failed: report it, then close. */
static void fail_open(struct cv_ws *ws, int err, const char *reason)
{
    set_reason(ws, CV_WS_ABNORMAL, reason);
    if (ws->cbs.on_open && ws->state != ST_CLOSED)
        ws->cbs.on_open(ws, err);
    do_close(ws);
}

/* ---- transmit ----------------------------------------------------------- */

static void flush(struct cv_ws *ws);

static void maybe_drain(struct cv_ws *ws)
{
    size_t pending = cv_ws_tx_pending(ws);
    if (pending == 0 && ws->flush_close) {
        if (ws->tls != NULL && ws->tls_open && !ws->tls_shut) {
            /* A TLS peer must see close_notify, else the end looks like a
             * truncation attack. */
            ws->tls_shut = true;
            cv_tls_shutdown(ws->tls);
            tls_flush(ws);
            if (ws->state == ST_CLOSED || cv_ws_tx_pending(ws) > 0)
                return; /* on_write comes back here */
        }
        do_close(ws);
        return;
    }
    if (ws->want_drain && pending < ws->opts.tx_low && ws->state == ST_OPEN) {
        ws->want_drain = false;
        if (ws->cbs.on_drain)
            ws->cbs.on_drain(ws);
    }
}

static void on_write(uv_write_t *req, int status)
{
    struct cv_ws *ws = req->data;
    ws->writing = false;
    cv_buf_drop(&ws->infl, ws->infl.len); /* storage kept for the next batch; see on_tick */
    if (ws->state == ST_CLOSED)
        return;
    if (status < 0) {
        set_reason(ws, CV_WS_ABNORMAL, uv_strerror(status));
        do_close(ws);
        return;
    }
    flush(ws);
    maybe_drain(ws);
}

static void flush_dirty(void)
{
    while (flusher.dirty) {
        struct cv_ws *ws = flusher.dirty;
        undirty(ws);
        flush(ws);
        if (!ws->writing && ws->state != ST_CLOSED)
            maybe_drain(ws); /* written at once: no on_write will do it */
    }
}

static void on_check(uv_check_t *h)
{
    (void)h;
    flush_dirty();
}

static void on_prepare(uv_prepare_t *h)
{
    (void)h;
    flush_dirty();
}

/* Writes pend at the end of this loop iteration (or at once when this
 * WebSocket is on another loop than the flusher's). */
static void mark_dirty(struct cv_ws *ws)
{
    if (ws->dirty)
        return;
    ws->dirty = true;
    ws->dprev = NULL;
    ws->dnext = flusher.dirty;
    if (flusher.dirty)
        flusher.dirty->dprev = ws;
    flusher.dirty = ws;
}

static void flush_later(struct cv_ws *ws)
{
    if (ws->dirty || ws->writing || ws->pend.len == 0)
        return;
    if (!ws->counted || flusher.loop != ws->loop) {
        flush(ws);
        return;
    }
    mark_dirty(ws);
}

/* Writes infl: at once when the kernel takes it all (the usual case for
 * small batches: no write request completes later, which would cost the
 * loop one more iteration and poll per write), the rest with uv_write. */
static void write_infl(struct cv_ws *ws)
{
    if (ws->infl.len == 0)
        return;
    uv_buf_t now = uv_buf_init((char *)cv_buf_head(&ws->infl), (unsigned)ws->infl.len);
    int w = uv_try_write((uv_stream_t *)&ws->tcp, &now, 1);
    if (w > 0)
        cv_buf_drop(&ws->infl, (size_t)w); /* storage kept: see on_tick */
    else if (w != UV_EAGAIN && w != UV_ENOSYS) {
        set_reason(ws, CV_WS_ABNORMAL, uv_strerror(w));
        do_close(ws);
        return;
    }
    if (ws->infl.len == 0)
        return;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&ws->infl), (unsigned)ws->infl.len);
    ws->wreq.data = ws;
    int rc = uv_write(&ws->wreq, (uv_stream_t *)&ws->tcp, &b, 1, on_write);
    if (rc < 0) {
        set_reason(ws, CV_WS_ABNORMAL, uv_strerror(rc));
        do_close(ws);
        return;
    }
    ws->writing = true;
}

static void flush(struct cv_ws *ws)
{
    if (ws->tls != NULL) {
        tls_flush(ws);
        return;
    }
    if (ws->writing || ws->pend.len == 0 || ws->state == ST_CLOSED)
        return;
    /* infl is empty while no write is in flight: the batch moves there. */
    struct cv_buf t = ws->infl;
    ws->infl = ws->pend;
    ws->pend = t;
    write_infl(ws);
}

/* Appends p[skip..n) to pend, returning how much of skip is left over. */
static size_t append_skip(struct cv_ws *ws, const void *p, size_t n, size_t skip)
{
    if (skip >= n)
        return skip - n;
    cv_buf_append(&ws->pend, (const uint8_t *)p + skip, n - skip); /* room reserved */
    return 0;
}

/* Queues raw bytes p1 + p2 + p3 (already framed). The caller checked tx_max. */
static void queue_raw(struct cv_ws *ws, const void *p1, size_t n1, const void *p2, size_t n2,
                      const void *p3, size_t n3)
{
    size_t total = n1 + n2 + n3, skip = 0;
    ws->tx_bytes += total;
    if (total >= DIRECT_WRITE && !ws->writing && ws->pend.len == 0 && ws->state != ST_CLOSED &&
        ws->tls == NULL) {
        uv_buf_t b[3] = {uv_buf_init((char *)p1, (unsigned)n1), uv_buf_init((char *)p2, (unsigned)n2),
                         uv_buf_init((char *)p3, (unsigned)n3)};
        int r = uv_try_write((uv_stream_t *)&ws->tcp, b, 3);
        if (r == (int)total)
            return;
        if (r > 0)
            skip = (size_t)r;
        else if (r != UV_EAGAIN && r != UV_ENOSYS) {
            set_reason(ws, CV_WS_ABNORMAL, uv_strerror(r));
            do_close(ws);
            return;
        }
    }
    if (cv_buf_reserve(&ws->pend, total - skip) != 0)
        return;
    skip = append_skip(ws, p1, n1, skip);
    skip = append_skip(ws, p2, n2, skip);
    append_skip(ws, p3, n3, skip);
    if (skip < total && total >= DIRECT_WRITE)
        flush(ws); /* the kernel is full: queue the rest now */
    else
        flush_later(ws);
    if (!ws->writing && ws->counted && flusher.loop == ws->loop &&
        (ws->want_drain || ws->flush_close))
        mark_dirty(ws); /* maybe_drain from the flusher, not from inside a send */
}

static int enqueue(struct cv_ws *ws, uint8_t op, const void *a, size_t alen, const void *b,
                   size_t blen)
{
    uint8_t hdr[CV_WS_MAX_HDR];
    size_t len = alen + blen;
    if (!ws->client || ws->nomask) {
        size_t hl = cv_ws_encode_header(hdr, true, op, len, NULL);
        if (cv_ws_tx_pending(ws) + hl + len > ws->opts.tx_max)
            return CV_ETOOBIG;
        queue_raw(ws, hdr, hl, a, alen, b, blen);
    } else {
        uint64_t r = rng_next();
        uint8_t mask[4];
        memcpy(mask, &r, 4);
        size_t hl = cv_ws_encode_header(hdr, true, op, len, mask);
        if (cv_ws_tx_pending(ws) + hl + len > ws->opts.tx_max)
            return CV_ETOOBIG;
        int rc = cv_buf_reserve(&ws->pend, hl + len);
        if (rc != 0)
            return rc;
        cv_buf_append(&ws->pend, hdr, hl);
        uint8_t *dst = cv_buf_tail(&ws->pend);
        if (alen)
            cv_ws_mask_copy(dst, a, alen, mask);
        if (blen) {
            memcpy(dst + alen, b, blen);
            cv_ws_mask(dst + alen, blen, mask, alen % 4);
        }
        cv_buf_commit(&ws->pend, len);
        flush_later(ws);
    }
    if (cv_ws_tx_pending(ws) >= ws->opts.tx_high)
        ws->want_drain = true;
    return 0;
}

int cv_ws_send2(struct cv_ws *ws, uint8_t opcode, const void *a, size_t alen, const void *b,
                size_t blen)
{
    if (ws->state != ST_OPEN || ws->close_sent)
        return CV_ECLOSED;
    return enqueue(ws, opcode, a, alen, b, blen);
}

static void send_close_frame(struct cv_ws *ws, uint16_t code, const char *reason)
{
    uint8_t p[125];
    size_t n = 0;
    if (code != CV_WS_NO_STATUS) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2;
        size_t rl = reason ? strlen(reason) : 0;
        if (rl > sizeof p - 2) {
            /* Cut at a character boundary: the reason must stay UTF-8. */
            rl = sizeof p - 2;
            while (rl > 0 && ((uint8_t)reason[rl] & 0xC0) == 0x80)
                rl--;
        }
        if (rl)
            memcpy(p + 2, reason, rl);
        n += rl;
    }
    ws->close_sent = true;
    /* A close frame may exceed tx_max only by 127 bytes; allow it. */
    ws->opts.tx_max += 256;
    enqueue(ws, CV_WS_CLOSE, p, n, NULL, 0);
}

/* Ends the connection because of a protocol violation or a local decision:
 * sends a close frame and closes the socket once it is written. */
static void fail(struct cv_ws *ws, uint16_t code, const char *reason)
{
    if (ws->state == ST_CLOSED)
        return;
    if (!ws->close_sent && ws->state == ST_OPEN)
        send_close_frame(ws, code, reason);
    set_reason(ws, code, reason);
    uv_read_stop((uv_stream_t *)&ws->tcp);
    ws->state = ST_CLOSING;
    ws->flush_close = true;
    ws->deadline = uv_now(ws->loop) + FAIL_GRACE_MS;
    maybe_drain(ws);
}

void cv_ws_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    if (ws->state == ST_CLOSED || ws->state == ST_CLOSING)
        return;
    if (ws->state != ST_OPEN) {
        set_reason(ws, code, reason);
        do_close(ws);
        return;
    }
    send_close_frame(ws, code, reason);
    set_reason(ws, code, reason);
    ws->state = ST_CLOSING;
    ws->deadline = uv_now(ws->loop) + CLOSE_GRACE_MS;
    if (ws->close_rcvd)
        ws->flush_close = true;
    maybe_drain(ws);
}

/* ---- receive ------------------------------------------------------------ */

static void deliver(struct cv_ws *ws, uint8_t op, uint8_t *p, size_t n)
{
    ws->cbs.on_msg(ws, op, p, n);
}

static void on_data_frame(struct cv_ws *ws, struct cv_ws_frame *f)
{
    /* Data may still arrive after our close frame (RFC 6455 §5.5.1); it is
     * delivered, so a graceful close loses nothing already in flight. */
    bool text = f->msg_opcode == CV_WS_TEXT;
    if (f->first && f->fin) {
        if (text && !cv_ws_utf8_valid(f->payload, f->len)) {
            fail(ws, CV_WS_INVALID_DATA, "invalid UTF-8 in text message");
            return;
        }
        deliver(ws, f->msg_opcode, f->payload, f->len);
        return;
    }
    if (f->first) {
        cv_buf_reset(&ws->msg);
        ws->utf8 = 0;
    }
    if (text && !cv_ws_utf8_feed(&ws->utf8, f->payload, f->len)) {
        fail(ws, CV_WS_INVALID_DATA, "invalid UTF-8 in text message");
        return;
    }
    if (cv_buf_append(&ws->msg, f->payload, f->len) != 0) {
        fail(ws, CV_WS_TOO_BIG, "message too big");
        return;
    }
    if (!f->fin)
        return;
    if (text && ws->utf8 != 0) {
        fail(ws, CV_WS_INVALID_DATA, "invalid UTF-8 in text message");
        return;
    }
    deliver(ws, f->msg_opcode, cv_buf_head(&ws->msg), ws->msg.len);
    cv_buf_consume(&ws->msg, ws->msg.len);
}

static void on_close_frame(struct cv_ws *ws, struct cv_ws_frame *f)
{
    ws->close_rcvd = true;
    char reason[124];
    size_t rl = f->reason_len < sizeof reason - 1 ? f->reason_len : sizeof reason - 1;
    if (rl)
        memcpy(reason, f->reason, rl);
    reason[rl] = 0;
    if (!ws->close_sent)
        send_close_frame(ws, f->close_code, reason);
    set_reason(ws, f->close_code, reason);
    uv_read_stop((uv_stream_t *)&ws->tcp);
    ws->state = ST_CLOSING;
    ws->flush_close = true;
    ws->deadline = uv_now(ws->loop) + FAIL_GRACE_MS;
    maybe_drain(ws);
}

static void on_frame(struct cv_ws *ws, struct cv_ws_frame *f)
{
    switch (f->opcode) {
    case CV_WS_PING:
        if (!ws->close_sent)
            enqueue(ws, CV_WS_PONG, f->payload, f->len, NULL, 0);
        break;
    case CV_WS_PONG:
        ws->ping_sent = 0;
        break;
    case CV_WS_CLOSE:
        on_close_frame(ws, f);
        break;
    default:
        on_data_frame(ws, f);
        break;
    }
}

static int on_client_head(struct cv_ws *ws, const uint8_t *p, size_t n);
static int on_server_head(struct cv_ws *ws, const uint8_t *p, size_t n);

static bool can_process(const struct cv_ws *ws)
{
    if (ws->paused)
        return false;
    return ws->state == ST_OPEN || ws->state == ST_CLIENT_HS || ws->state == ST_SERVER_HS ||
           (ws->state == ST_CLOSING && !ws->close_rcvd && !ws->flush_close);
}

/* Parses and handles whole frames (or a head) from p[0..n). Returns bytes
 * consumed; stops early when paused or closing. */
static size_t parse_some(struct cv_ws *ws, uint8_t *p, size_t n)
{
    size_t used = 0;
    while (used < n && can_process(ws)) {
        int r;
        if (ws->state == ST_CLIENT_HS)
            r = on_client_head(ws, p + used, n - used);
        else if (ws->state == ST_SERVER_HS)
            r = on_server_head(ws, p + used, n - used);
        else {
            struct cv_ws_frame f;
            size_t need = 0;
            uint16_t cc = 0;
            r = cv_ws_parse(&ws->ps, p + used, n - used, &f, &need, &cc);
            if (r < 0) {
                fail(ws, cc, r == CV_ETOOBIG ? "message too big" : "protocol error");
                return n;
            }
            if (r == 0)
                ws->need = need;
            else
                on_frame(ws, &f);
        }
        if (r <= 0)
            break;
        used += (size_t)r;
        ws->need = 0;
    }
    return used;
}

static void process_rx(struct cv_ws *ws)
{
    size_t used = parse_some(ws, cv_buf_head(&ws->rx), ws->rx.len);
    if (ws->state != ST_CLOSED)
        cv_buf_drop(&ws->rx, used); /* the next frame split by a read reuses it */
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct cv_ws *ws = h->data;
    if (ws->rx.len == 0 || ws->tls != NULL) {
        /* TLS: ciphertext goes to its own shared buffer; rx holds plaintext. */
        *buf = ws->tls ? uv_buf_init((char *)tls_rx, sizeof tls_rx)
                       : uv_buf_init((char *)shared_rx, sizeof shared_rx);
        return;
    }
    /* A large frame split by a read: read exactly its rest, so that it
     * leaves rx whole and what follows lands in shared_rx, rather than
     * the start of the next frame trailing in rx, to be moved to the front
     * (a memmove of up to the read size) before the read after. */
    size_t want = 64 * 1024;
    bool exact = false;
    if (ws->need > ws->rx.len && (ws->need >= want || ws->need - ws->rx.len > want)) {
        want = ws->need - ws->rx.len;
        exact = true;
    }
    if (cv_buf_reserve(&ws->rx, want) != 0 && cv_buf_reserve(&ws->rx, 1) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    size_t room = cv_buf_tailroom(&ws->rx);
    if (exact && room > want)
        room = want;
    *buf = uv_buf_init((char *)cv_buf_tail(&ws->rx), (unsigned)room);
}

static void on_read_eof(struct cv_ws *ws, ssize_t nread)
{
    if (ws->state == ST_CLIENT_HS) {
        fail_open(ws, CV_EPROTO,
                  ws->tls && !ws->tls_open ? "connection closed during the TLS handshake (is the "
                                             "relay listening with TLS?)"
                                           : "connection closed during handshake");
        return;
    }
    if (!ws->close_rcvd)
        set_reason(ws, CV_WS_ABNORMAL,
                   nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread));
    do_close(ws);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct cv_ws *ws = s->data;
    if (nread == 0 || ws->state == ST_CLOSED)
        return;
    if (nread < 0) {
        on_read_eof(ws, nread);
        return;
    }
    ws->last_rx = uv_now(ws->loop);
    ws->rx_bytes += (uint64_t)nread;
    if (ws->tls != NULL) {
        if (cv_tls_feed(ws->tls, buf->base, (size_t)nread) != 0)
            fail(ws, CV_WS_INTERNAL, "out of memory");
        else
            tls_pump(ws);
        return;
    }
    if ((uint8_t *)buf->base != shared_rx) {
        cv_buf_commit(&ws->rx, (size_t)nread);
        process_rx(ws);
        return;
    }
    size_t used = parse_some(ws, shared_rx, (size_t)nread);
    if (ws->state == ST_CLOSED || used >= (size_t)nread)
        return;
    if (cv_buf_append(&ws->rx, shared_rx + used, (size_t)nread - used) != 0)
        fail(ws, CV_WS_TOO_BIG, "receive buffer limit");
}

/* ---- TLS ---------------------------------------------------------------- */

/* Moves the ciphertext the engine produced into infl (a buffer swap when
 * infl is empty, the usual case). */
static void tls_take(struct cv_ws *ws)
{
    struct cv_buf *out = cv_tls_out(ws->tls);
    if (out->len == 0)
        return;
    if (ws->infl.len == 0) {
        struct cv_buf t = ws->infl;
        ws->infl = *out;
        *out = t;
    } else if (cv_buf_append(&ws->infl, cv_buf_head(out), out->len) == 0) {
        cv_buf_consume(out, out->len);
    }
}

static void tls_failed(struct cv_ws *ws, const char *what)
{
    char why[200];
    snprintf(why, sizeof why, "%s: %s", what, cv_tls_error(ws->tls));
    if (ws->client && !ws->opened) {
        fail_open(ws, CV_EPROTO, why);
        return;
    }
    if (!ws->client && !ws->tls_open)
        cv_log_debug("%s: %s", ws->peer, why);
    set_reason(ws, CV_WS_ABNORMAL, why);
    do_close(ws);
}

/* Encrypts pend (once the handshake is done) into infl and writes infl.
 * Plaintext waits in pend while a write is in flight, like frames do. */
static void tls_flush(struct cv_ws *ws)
{
    if (ws->writing || ws->state == ST_CLOSED)
        return;
    if (ws->tls_open && !ws->tls_shut && ws->pend.len > 0) {
        size_t off = 0;
        while (off < ws->pend.len) {
            size_t n = ws->pend.len - off < TLS_SLICE ? ws->pend.len - off : TLS_SLICE;
            if (cv_tls_write(ws->tls, cv_buf_head(&ws->pend) + off, n) != 0) {
                tls_failed(ws, "TLS write failed");
                return;
            }
            off += n;
        }
        cv_buf_consume(&ws->pend, off);
    }
    tls_take(ws);
    write_infl(ws);
}

/* Reads plaintext into the tail of rx (a partial frame waits there). */
static int tls_read_rx(struct cv_ws *ws)
{
    size_t want = 64 * 1024;
    if (ws->need > ws->rx.len && ws->need - ws->rx.len > want)
        want = ws->need - ws->rx.len;
    if (cv_buf_reserve(&ws->rx, want) != 0 && cv_buf_reserve(&ws->rx, 1) != 0) {
        fail(ws, CV_WS_TOO_BIG, "receive buffer limit");
        return CV_ETOOBIG;
    }
    int r = cv_tls_read(ws->tls, cv_buf_tail(&ws->rx), cv_buf_tailroom(&ws->rx));
    if (r > 0)
        cv_buf_commit(&ws->rx, (size_t)r);
    return r;
}

/* Plaintext from shared_rx, parsed in place like a plain read. */
static int tls_read_shared(struct cv_ws *ws)
{
    int r = cv_tls_read(ws->tls, shared_rx, sizeof shared_rx);
    if (r <= 0)
        return r;
    size_t used = parse_some(ws, shared_rx, (size_t)r);
    if (ws->state != ST_CLOSED && used < (size_t)r &&
        cv_buf_append(&ws->rx, shared_rx + used, (size_t)r - used) != 0)
        fail(ws, CV_WS_TOO_BIG, "receive buffer limit");
    return r;
}

/* Drives the handshake, then decrypts and parses as long as the connection
 * takes input; what stays in the engine waits for cv_ws_resume. */
static void tls_pump(struct cv_ws *ws)
{
    if (!ws->tls_open) {
        int rc = cv_tls_handshake(ws->tls);
        if (rc == CV_EAGAIN) {
            tls_flush(ws);
            return;
        }
        if (rc != 0) {
            tls_failed(ws, "TLS handshake failed");
            return;
        }
        ws->tls_open = true;
        tls_flush(ws); /* the handshake's last flight, a client's request */
    }
    int r = 0;
    while (ws->state != ST_CLOSED && can_process(ws)) {
        if (ws->rx.len > 0) {
            process_rx(ws);
            if (ws->state == ST_CLOSED || !can_process(ws))
                break;
            r = ws->rx.len > 0 ? tls_read_rx(ws) : 1;
        } else {
            r = tls_read_shared(ws);
        }
        if (r <= 0)
            break;
    }
    if (ws->state == ST_CLOSED || r == CV_ETOOBIG)
        return;
    if (r == UV_EOF) {
        on_read_eof(ws, UV_EOF);
        return;
    }
    if (r < 0 && r != CV_EAGAIN) {
        tls_failed(ws, "TLS error");
        return;
    }
    tls_flush(ws); /* reading may have produced output (tickets, key updates) */
}

static void start_reading(struct cv_ws *ws)
{
    if (!ws->paused)
        uv_read_start((uv_stream_t *)&ws->tcp, on_alloc, on_read);
}

void cv_ws_pause(struct cv_ws *ws)
{
    if (ws->paused || ws->state == ST_CLOSED)
        return;
    ws->paused = true;
    uv_read_stop((uv_stream_t *)&ws->tcp);
}

static void on_kick(uv_timer_t *t)
{
    struct cv_ws *ws = t->data;
    if (ws->tls != NULL && ws->state != ST_CLOSED)
        tls_pump(ws); /* rx, then what the TLS engine still holds */
    else if (ws->rx.len > 0 && ws->state != ST_CLOSED)
        process_rx(ws);
}

void cv_ws_resume(struct cv_ws *ws)
{
    if (!ws->paused || ws->state == ST_CLOSED)
        return;
    ws->paused = false;
    if (!can_process(ws))
        return;
    start_reading(ws);
    if (ws->rx.len > 0 || ws->tls != NULL)
        uv_timer_start(&ws->kick, on_kick, 0, 0);
}

/* ---- timers ------------------------------------------------------------- */

static void keepalive(struct cv_ws *ws, uint64_t now)
{
    if (ws->opts.idle_timeout_ms && now - ws->last_rx >= ws->opts.idle_timeout_ms) {
        set_reason(ws, CV_WS_ABNORMAL, "no data received from peer");
        do_close(ws);
        return;
    }
    if (!ws->opts.ping_interval_ms)
        return;
    if (ws->ping_sent && now - ws->ping_sent >= ws->opts.pong_timeout_ms) {
        fail(ws, CV_WS_INTERNAL, "keepalive ping timeout");
        return;
    }
    if (!ws->ping_sent && now - ws->last_ping >= ws->opts.ping_interval_ms) {
        uint64_t r = rng_next();
        enqueue(ws, CV_WS_PING, &r, 4, NULL, 0);
        ws->ping_sent = now ? now : 1;
        ws->last_ping = now;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct cv_ws *ws = t->data;
    uint64_t now = uv_now(ws->loop);
    if (ws->deadline && now >= ws->deadline) {
        if (ws->state == ST_CLOSING) {
            do_close(ws);
            return;
        }
        if (ws->client && !ws->opened) {
            fail_open(ws, CV_ETIMEDOUT, "handshake timed out");
            return;
        }
        do_close(ws);
        return;
    }
    /* Storage the data path kept for the next burst goes once it is idle
     * (held at most one tick after the traffic stops). */
    cv_buf_trim(&ws->rx);
    if (!ws->writing) {
        cv_buf_trim(&ws->infl);
        cv_buf_trim(&ws->pend);
    }
    if (ws->state == ST_OPEN)
        keepalive(ws, now);
}

static uint64_t tick_interval(const struct cv_ws_opts *o)
{
    uint64_t t = CV_LIMIT_HANDSHAKE_MS;
    uint32_t v[3] = {o->ping_interval_ms, o->pong_timeout_ms, o->idle_timeout_ms};
    for (int i = 0; i < 3; i++)
        if (v[i] && v[i] < t)
            t = v[i];
    t /= 4;
    return t < 20 ? 20 : (t > 1000 ? 1000 : t);
}

/* ---- construction ------------------------------------------------------- */

static struct cv_ws *ws_new(uv_loop_t *loop, const struct cv_ws_opts *opts)
{
    struct cv_ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        return NULL;
    ws->loop = loop;
    ws->born_ns = uv_hrtime();
    if (opts)
        ws->opts = *opts;
    else
        cv_ws_opts_default(&ws->opts);
    uv_tcp_init(loop, &ws->tcp);
    uv_timer_init(loop, &ws->tick);
    uv_timer_init(loop, &ws->kick);
    ws->tcp.data = ws->tick.data = ws->kick.data = ws;
    ws->refs = 3;
    cv_buf_init(&ws->rx, CV_LIMIT_HTTP_HEAD);
    cv_buf_init(&ws->msg, ws->opts.max_msg);
    cv_buf_init(&ws->pend, SIZE_MAX);
    cv_buf_init(&ws->infl, SIZE_MAX);
    ws->deadline = uv_now(loop) + CV_LIMIT_HANDSHAKE_MS;
    uv_timer_start(&ws->tick, on_tick, tick_interval(&ws->opts), tick_interval(&ws->opts));
    if (flusher.loop == NULL && flusher.live == 0 &&
        (flusher.h = malloc(sizeof *flusher.h)) != NULL) {
        flusher.loop = loop;
        uv_check_init(loop, &flusher.h->check);
        uv_check_start(&flusher.h->check, on_check);
        uv_unref((uv_handle_t *)&flusher.h->check);
        uv_prepare_init(loop, &flusher.h->prepare);
        uv_prepare_start(&flusher.h->prepare, on_prepare);
        uv_unref((uv_handle_t *)&flusher.h->prepare);
    }
    if (flusher.loop == loop) {
        flusher.live++;
        ws->counted = true;
    }
    return ws;
}

/* The native protocol (culvert.v1, docs/PROTOCOL.md §2) drops RFC 6455
 * client masking: it guards browsers' intermediaries against cache
 * poisoning, which cannot apply between two culvert ends, and it costs the
 * client a copy of every byte and the server another pass over it. */
static bool native_framing(const struct cv_ws *ws)
{
    return ws->negotiated && ws->opts.subprotocol != NULL &&
           strcmp(ws->opts.subprotocol, "culvert.v1") == 0;
}

static void become_open(struct cv_ws *ws, bool server)
{
    cv_ws_parser_init(&ws->ps, server, ws->opts.max_msg);
    ws->ps.unmasked_ok = server && native_framing(ws);
    ws->nomask = !server && native_framing(ws);
    ws->rx.max = ws->opts.max_msg + CV_WS_MAX_HDR + 64 * 1024;
    ws->state = ST_OPEN;
    ws->opened = true;
    ws->deadline = 0;
    ws->last_rx = ws->last_ping = uv_now(ws->loop);
    uv_tcp_nodelay(&ws->tcp, 1);
}

/* ---- client ------------------------------------------------------------- */

static int send_client_request(struct cv_ws *ws)
{
    uint8_t raw[16];
    for (int i = 0; i < 2; i++) {
        uint64_t r = rng_next();
        memcpy(raw + 8 * i, &r, 8);
    }
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *k = ws->key;
    for (int i = 0; i < 15; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        *k++ = b64[v >> 18];
        *k++ = b64[(v >> 12) & 63];
        *k++ = b64[(v >> 6) & 63];
        *k++ = b64[v & 63];
    }
    *k++ = b64[raw[15] >> 2];
    *k++ = b64[(raw[15] & 3) << 4];
    *k++ = '=';
    *k++ = '=';
    *k = 0;
    char req[CV_URL_MAX_PATH + 1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n",
                     ws->url->path, ws->url->authority, ws->key);
    const struct {
        const char *name, *value;
    } extra[] = {{"User-Agent", ws->opts.user_agent},
                 {"Sec-WebSocket-Protocol", ws->opts.subprotocol},
                 {"Authorization: Bearer", ws->opts.bearer}};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0] && n > 0; i++) {
        if (extra[i].value == NULL || (size_t)n >= sizeof req)
            continue;
        bool colon = strchr(extra[i].name, ':') == NULL;
        n += snprintf(req + n, sizeof req - (size_t)n, "%s%s %s\r\n", extra[i].name,
                      colon ? ":" : "", extra[i].value);
    }
    if (n > 0 && (size_t)n < sizeof req)
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if (n < 0 || (size_t)n >= sizeof req)
        return CV_EINVAL;
    queue_raw(ws, req, (size_t)n, NULL, 0, NULL, 0);
    return 0;
}

static int on_client_head(struct cv_ws *ws, const uint8_t *p, size_t n)
{
    struct cv_http_head h;
    int r = cv_http_parse_response((const char *)p, n, CV_LIMIT_HTTP_HEAD, &h);
    if (r == CV_EAGAIN)
        return 0;
    if (r < 0) {
        fail_open(ws, CV_EPROTO, "malformed handshake response");
        return -1;
    }
    char why[124];
    const struct cv_http_header *up = cv_http_find(&h, "Upgrade");
    const struct cv_http_header *acc = cv_http_find(&h, "Sec-WebSocket-Accept");
    char expect[CV_WS_ACCEPT_LEN];
    cv_ws_accept_key(ws->key, strlen(ws->key), expect);
    if (h.status != 101) {
        /* Our own relay explains a refusal in a short body: pass it on. */
        int blen = 0;
        if (h.content_length > 0 && h.content_length <= 200 && n - (size_t)r >= (size_t)h.content_length)
            blen = (int)h.content_length;
        while (blen > 0 && (p[r + blen - 1] == '\n' || p[r + blen - 1] == '\r'))
            blen--;
        snprintf(why, sizeof why, "handshake refused: HTTP %d %s%s%.*s", h.status,
                 cv_http_reason(h.status), blen ? ": " : "", blen, (const char *)p + r);
        fail_open(ws, CV_EPROTO, why);
        return -1;
    }
    const struct cv_http_header *proto = cv_http_find(&h, "Sec-WebSocket-Protocol");
    if (proto != NULL) {
        if (ws->opts.subprotocol == NULL || proto->value_len != strlen(ws->opts.subprotocol) ||
            memcmp(proto->value, ws->opts.subprotocol, proto->value_len) != 0) {
            fail_open(ws, CV_EPROTO, "server chose a subprotocol we did not offer");
            return -1;
        }
        ws->negotiated = true;
    }
    if (up == NULL || !cv_http_has_token(up->value, up->value_len, "websocket") || acc == NULL ||
        acc->value_len != strlen(expect) || memcmp(acc->value, expect, acc->value_len) != 0) {
        fail_open(ws, CV_EPROTO, "bad handshake response (Upgrade or Sec-WebSocket-Accept)");
        return -1;
    }
    free(ws->url);
    ws->url = NULL;
    become_open(ws, false);
    if (ws->cbs.on_open)
        ws->cbs.on_open(ws, 0);
    return r;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct cv_ws *ws = req->data;
    if (ws->state == ST_CLOSED)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof why, "connect to %.80s failed: %s", ws->url->authority,
                 uv_strerror(status));
        fail_open(ws, status, why);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&ws->tcp, (struct sockaddr *)&ss, &len) == 0)
        cv_addr_str((struct sockaddr *)&ss, ws->peer, sizeof ws->peer);
    ws->state = ST_CLIENT_HS;
    int rc = send_client_request(ws);
    if (rc < 0) {
        fail_open(ws, rc, "request too long");
        return;
    }
    start_reading(ws);
    if (ws->tls != NULL)
        tls_pump(ws); /* ClientHello; the request waits in pend until the handshake is done */
}

static void start_connect(struct cv_ws *ws, const struct sockaddr *sa)
{
    ws->state = ST_CONNECT;
    ws->creq.data = ws;
    int rc = uv_tcp_connect(&ws->creq, &ws->tcp, sa, on_connect);
    if (rc < 0) {
        char why[128];
        snprintf(why, sizeof why, "connect to %.80s failed: %s", ws->url->authority, uv_strerror(rc));
        fail_open(ws, rc, why);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct cv_ws *ws = req->data;
    if (ws->state == ST_CLOSED) {
        uv_freeaddrinfo(res);
        release(ws);
        return;
    }
    ws->refs--; /* the request is done; handles still hold theirs */
    if (status < 0 || res == NULL) {
        char why[160];
        snprintf(why, sizeof why, "cannot resolve %.80s: %s", ws->url->host, uv_strerror(status));
        uv_freeaddrinfo(res);
        fail_open(ws, status < 0 ? status : CV_EINVAL, why);
        return;
    }
    struct sockaddr_storage ss;
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    if (ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&ss)->sin_port = htons(ws->url->port);
    else
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(ws->url->port);
    start_connect(ws, (struct sockaddr *)&ss);
}

int cv_ws_connect(uv_loop_t *loop, const char *url, const struct cv_ws_opts *opts,
                  const struct cv_ws_cbs *cbs, void *data, struct cv_ws **out)
{
    struct cv_url *u = malloc(sizeof *u);
    if (u == NULL)
        return CV_ENOMEM;
    int rc = cv_url_parse(url, u);
    if (rc != 0) {
        free(u);
        return rc;
    }
    struct cv_tls *tls = NULL;
    if (u->tls) {
        char err[200];
        struct cv_tls_ctx *ctx = opts && opts->tls ? opts->tls : cv_tls_client_default(err, sizeof err);
        if (ctx == NULL)
            cv_log_error("wss://: %s", err);
        if (ctx == NULL || (tls = cv_tls_new_client(ctx, u->host)) == NULL) {
            free(u);
            return ctx == NULL ? CV_EINVAL : CV_ENOMEM;
        }
    }
    struct cv_ws *ws = ws_new(loop, opts);
    if (ws == NULL) {
        cv_tls_free(tls);
        free(u);
        return CV_ENOMEM;
    }
    ws->tls = tls;
    ws->client = true;
    ws->url = u;
    ws->cbs = *cbs;
    ws->data = data;
    snprintf(ws->peer, sizeof ws->peer, "%.*s", (int)sizeof ws->peer - 1, u->authority);
    ws->state = ST_RESOLVE;
    struct sockaddr_storage ss;
    if (cv_addr_from(u->host, u->port, &ss) == 0) {
        start_connect(ws, (struct sockaddr *)&ss);
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        ws->gai.data = ws;
        ws->refs++;
        rc = uv_getaddrinfo(loop, &ws->gai, on_resolved, u->host, NULL, &hints);
        if (rc < 0) {
            ws->refs--;
            ws->state = ST_CONNECT; /* nothing to cancel */
            ws->cbs.on_open = NULL;
            ws->cbs.on_close = NULL;
            ws->client = false; /* no callbacks: the caller sees the error */
            do_close(ws);
            return rc;
        }
    }
    *out = ws;
    return 0;
}

/* ---- server ------------------------------------------------------------- */

static int on_server_head(struct cv_ws *ws, const uint8_t *p, size_t n)
{
    struct cv_http_head h;
    int r = cv_http_parse_request((const char *)p, n, CV_LIMIT_HTTP_HEAD, &h);
    if (r == CV_EAGAIN)
        return 0;
    unlink_pending(ws);
    if (r == CV_ETOOBIG) {
        static const char resp[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                   "Content-Type: text/plain\r\nContent-Length: 26\r\n"
                                   "Connection: close\r\n\r\nrequest header too large\r\n";
        cv_ws__respond(ws, resp, sizeof resp - 1);
        return -1;
    }
    if (r < 0) {
        static const char resp[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: 21\r\nConnection: close\r\n\r\n"
                                   "malformed HTTP request\n";
        cv_ws__respond(ws, resp, sizeof resp - 1);
        return -1;
    }
    ws->head_cb(ws, &h, ws->srv);
    return ws->state == ST_OPEN ? r : -1;
}

int cv_ws__accept(uv_stream_t *listener, cv_ws__head_cb cb, void *srv, struct cv_ws **pending,
                  uint64_t handshake_ms, struct cv_tls_ctx *tls)
{
    struct cv_ws *ws = ws_new(listener->loop, NULL);
    if (ws == NULL)
        return CV_ENOMEM;
    if (tls != NULL && (ws->tls = cv_tls_new_server(tls)) == NULL) {
        do_close(ws);
        return CV_ENOMEM;
    }
    int rc = uv_accept(listener, (uv_stream_t *)&ws->tcp);
    if (rc < 0) {
        do_close(ws);
        return rc;
    }
    ws->state = ST_SERVER_HS;
    if (handshake_ms && handshake_ms != CV_LIMIT_HANDSHAKE_MS) {
        uint64_t every = handshake_ms / 4 ? handshake_ms / 4 : 1;
        ws->deadline = uv_now(ws->loop) + handshake_ms;
        if (every < tick_interval(&ws->opts))
            uv_timer_start(&ws->tick, on_tick, every, every);
    }
    ws->head_cb = cb;
    ws->srv = srv;
    ws->pending = pending;
    ws->pnext = *pending;
    if (*pending)
        (*pending)->pprev = ws;
    *pending = ws;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&ws->tcp, (struct sockaddr *)&ss, &len) == 0)
        cv_addr_str((struct sockaddr *)&ss, ws->peer, sizeof ws->peer);
    start_reading(ws);
    return 0;
}

void cv_ws__respond(struct cv_ws *ws, const void *bytes, size_t n)
{
    if (ws->tls != NULL && !ws->tls_open) {
        /* Refused before its TLS handshake (the per-address rate limit): a
         * plaintext answer would be unreadable, so just close. */
        unlink_pending(ws);
        do_close(ws);
        return;
    }
    unlink_pending(ws);
    uv_read_stop((uv_stream_t *)&ws->tcp);
    ws->state = ST_CLOSING;
    ws->flush_close = true;
    ws->deadline = uv_now(ws->loop) + CLOSE_GRACE_MS;
    queue_raw(ws, bytes, n, NULL, 0, NULL, 0);
    maybe_drain(ws);
}

void cv_ws__upgrade(struct cv_ws *ws, const char *accept, bool subprotocol,
                    const struct cv_ws_opts *opts, const struct cv_ws_cbs *cbs, void *data)
{
    unlink_pending(ws);
    char resp[256];
    ws->negotiated = subprotocol && opts->subprotocol != NULL;
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%.64s%s\r\n",
                     accept, ws->negotiated ? "Sec-WebSocket-Protocol: " : "",
                     ws->negotiated ? opts->subprotocol : "", ws->negotiated ? "\r\n" : "");
    ws->opts = *opts;
    ws->cbs = *cbs;
    ws->data = data;
    ws->msg.max = opts->max_msg;
    uv_timer_start(&ws->tick, on_tick, tick_interval(opts), tick_interval(opts));
    queue_raw(ws, resp, (size_t)n, NULL, 0, NULL, 0);
    become_open(ws, true);
}

void cv_ws__abandon(struct cv_ws *ws)
{
    unlink_pending(ws);
    do_close(ws);
}
