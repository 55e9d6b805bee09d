/* HTTP/1.1 server connections: a small state machine per connection.
 *
 *   HEAD   waiting for (or parsing) the next request head
 *   BODY   a request is active and its body is being delivered
 *   WAIT   the body is done; waiting for the handler to end the response
 *   LINGER an error response or the last response is queued: flush it,
 *          shut down our side, and read-and-discard until the peer closes
 *          (so that unread request bytes don't turn our close into an RST
 *          that destroys the response before the client reads it)
 *
 * pump() advances the machine until it blocks. Handler callbacks run only
 * from pump() and from libuv callbacks; API calls made by the handler only
 * record what happened and, outside pump(), schedule one via the kick timer,
 * so no callback ever runs inside an API call. */
#include "net/http1.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/chunked.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/addr.h"

/* Bytes asked of the kernel per read. */
#define READ_CHUNK (64 * 1024)
/* How long a closing connection is drained before it is dropped. */
#define LINGER_MS 2000

enum { ST_HEAD, ST_BODY, ST_WAIT, ST_LINGER };

struct cv_http1_server {
    uv_tcp_t tcp;
    struct cv_http1_cbs cbs;
    struct cv_http1_opts opts;
    void *data;         /* borrowed */
    struct conn *conns; /* owned list of open connections */
    struct cv_http1_req *spare; /* owned: retired requests kept for reuse */
    size_t nspare;
    uint16_t port;
    bool unlistened, listener_closed, free_pending;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* head, idle, body and linger deadlines */
    uint64_t due;     /* loop time of the current deadline, 0: none */
    uv_timer_t kick;  /* runs pump() or a deferred close on the next iteration */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct cv_http1_server *srv; /* borrowed; NULL once the connection is closing */
    struct cv_http1_cbs cbs;
    struct cv_http1_opts opts;
    struct conn *prev, *next;
    struct cv_buf rx;         /* received, not yet consumed */
    struct cv_buf tx;         /* queued response bytes */
    struct cv_buf txing;      /* bytes of the write in flight */
    struct cv_http1_req *req; /* owned: the active request */
    int state;
    int handles;   /* libuv handles still open; freed at 0 */
    int close_err; /* for a deferred close */
    bool closing, dying, in_pump, reading, writing, shut, eof;
    bool idle_wait;   /* HEAD: waiting for the first byte of a kept-alive request */
    bool above_high;  /* tx went above tx_high: on_drain owed */
    bool close_after; /* close once the current response is sent */
    char peer[CV_ADDR_STRLEN];
};

struct cv_http1_req {
    struct conn *c;           /* borrowed; the next spare while in the server's list */
    size_t size;              /* of the allocation */
    char *raw;                /* the head bytes, then the path (same allocation) */
    const char *path, *query; /* into raw */
    void *data;               /* borrowed, the handler's */
    struct cv_chunked ck;
    uint64_t body_left; /* Content-Length bytes still to come */
    uint64_t body_seen;
    bool chunked, body_done, end_called, paused, expect, continued;
    bool started, ended, no_body, resp_chunked, done;
    bool discard;        /* body bytes are dropped, not delivered */
    uint64_t discarded;  /* ... how many so far */
    int64_t resp_len; /* declared Content-Length, -1 if none */
    uint64_t resp_sent;
    /* Last: only its used header slots are copied (the array is 2 KiB). */
    struct cv_http_head head; /* slices into raw */
};

static void pump(struct conn *c);
static void conn_close(struct conn *c, int err);

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

void cv_http1_opts_init(struct cv_http1_opts *o)
{
    o->max_body = 64u * 1024 * 1024;
    o->max_head = CV_LIMIT_HTTP_HEAD;
    o->head_timeout_ms = CV_LIMIT_HANDSHAKE_MS;
    o->idle_timeout_ms = 60000;
    o->tx_high = 1024 * 1024;
    o->tx_low = 256 * 1024;
    o->tx_max = 16u * 1024 * 1024;
    o->body_timeout_ms = 0;
    o->silent_timeouts = false;
    o->bare_errors = false;
    o->eof_aborts = false;
    o->keep_alive_s = 0;
}

static uint64_t body_ms(const struct conn *c)
{
    return c->opts.body_timeout_ms ? c->opts.body_timeout_ms : c->opts.idle_timeout_ms;
}

static size_t pending(const struct conn *c)
{
    return c->tx.len + c->txing.len;
}

static void on_timer(uv_timer_t *t);

/* Deadlines are timestamps (c->due, 0: none). The timer is restarted only
 * when a deadline comes before it would fire; otherwise it fires early and
 * re-arms itself for c->due. Setting and clearing the deadline of each
 * request is then a store, not two timer-heap operations (libuv's timer
 * start/stop were ~4% of the gateway's user instructions per request). */
static void arm(struct conn *c, uint64_t ms)
{
    c->due = uv_now(c->tcp.loop) + ms;
    if (!uv_is_active((uv_handle_t *)&c->timer) || uv_timer_get_due_in(&c->timer) > ms)
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void disarm(struct conn *c)
{
    c->due = 0;
}

static void on_kick(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->dying)
        conn_close(c, c->close_err);
    else
        pump(c);
}

/* Makes the machine advance on the next loop iteration (never inside the
 * caller's stack: API calls must not run callbacks). */
static void kick(struct conn *c)
{
    if (!c->closing && !c->in_pump)
        uv_timer_start(&c->kick, on_kick, 0, 0);
}

static void close_soon(struct conn *c, int err)
{
    if (c->closing || c->dying)
        return;
    c->dying = true;
    c->close_err = err;
    uv_timer_start(&c->kick, on_kick, 0, 0);
}

static bool is_token_char(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool name_ok(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!is_token_char((unsigned char)*s))
            return false;
    return true;
}

static bool value_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return false;
    return true;
}

/* ------------------------------------------------------------------ */
/* Transmit                                                             */

static void maybe_shutdown(struct conn *c);

static void on_write(uv_write_t *w, int status)
{
    struct conn *c = w->data;

    c->writing = false;
    cv_buf_consume(&c->txing, c->txing.len);
    if (status < 0) {
        if (status != UV_ECANCELED)
            conn_close(c, CV_ECLOSED);
        return;
    }
    if (c->closing)
        return;
    if (c->above_high && pending(c) <= c->opts.tx_low) {
        c->above_high = false;
        struct cv_http1_req *r = c->req;
        if (r && !r->done && c->cbs.on_drain) {
            c->in_pump = true; /* API calls inside on_drain only record */
            c->cbs.on_drain(r);
            c->in_pump = false;
            if (c->closing)
                return;
        }
    }
    pump(c); /* also sends what was queued meanwhile */
}

/* Starts a write of everything queued unless one is in flight: the queue
 * keeps filling meanwhile, so writes batch under load. */
static void flush(struct conn *c)
{
    if (c->writing || c->tx.len == 0 || c->closing || c->dying)
        return;
    /* A direct write first: when the socket takes it all (the usual case
     * for small responses) libuv neither re-arms the fd in epoll nor runs a
     * completion callback, which saves a syscall and a loop turn per
     * response. The rest, if any, goes through uv_write. */
    uv_buf_t d = uv_buf_init((char *)cv_buf_head(&c->tx), (unsigned)c->tx.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &d, 1);
    if (n < 0 && n != UV_EAGAIN) {
        close_soon(c, n);
        return;
    }
    if (n > 0)
        cv_buf_consume(&c->tx, (size_t)n);
    if (c->tx.len == 0) {
        if (c->above_high && pending(c) <= c->opts.tx_low)
            kick(c); /* on_drain from pump(), never inside the caller */
        return;
    }
    struct cv_buf t = c->txing;
    c->txing = c->tx;
    c->tx = t;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&c->txing), (unsigned)c->txing.len);
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        close_soon(c, rc);
        return;
    }
    c->writing = true;
}

static int queue(struct conn *c, const void *p, size_t n)
{
    int rc = cv_buf_append(&c->tx, p, n);
    if (rc < 0)
        return rc;
    if (pending(c) > c->opts.tx_high)
        c->above_high = true;
    return 0;
}

#define QUEUE_LIT(c, lit) queue(c, lit, sizeof(lit) - 1)
/* "HTTP/1.1 NNN " + the longest reason phrase + CRLF */
#define STATUS_LINE_MAX 64

/* Queues "HTTP/1.1 NNN Reason\r\n" (status in 100..999). */
static int queue_status(struct conn *c, int status, const char *reason)
{
    char line[STATUS_LINE_MAX];
    size_t r = strlen(reason);
    if (r > STATUS_LINE_MAX - 15)
        r = STATUS_LINE_MAX - 15;
    memcpy(line, "HTTP/1.1 ", 9);
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    line[12] = ' ';
    memcpy(line + 13, reason, r);
    memcpy(line + 13 + r, "\r\n", 2);
    return queue(c, line, 15 + r);
}

/* Queues a complete error response that ends the connection. */
static void queue_error(struct conn *c, int status, const char *msg)
{
    char head[256];
    size_t len = strlen(msg);
    if (c->opts.bare_errors) {
        /* Node's answer to a parse error: no body, no Content-Length. */
        int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nConnection: close\r\n\r\n", status,
                         cv_http_reason_node(status));
        queue(c, head, (size_t)n);
        return;
    }
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, cv_http_reason(status), len);
    if (queue(c, head, (size_t)n) == 0)
        queue(c, msg, len);
}

/* ------------------------------------------------------------------ */
/* Connection life                                                      */

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles > 0)
        return;
    cv_buf_fini(&c->rx);
    cv_buf_fini(&c->tx);
    cv_buf_fini(&c->txing);
    free(c->req);
    free(c);
}

static void unlink_conn(struct conn *c)
{
    if (c->srv == NULL)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->srv = NULL;
}

/* Ends the connection now. An unfinished request gets on_done(err); its
 * memory stays until the handles are closed, so a handler still on the
 * stack may touch it (its API calls then return CV_ECLOSED). */
static void conn_close(struct conn *c, int err)
{
    if (c->closing)
        return;
    c->closing = true;
    struct cv_http1_req *r = c->req;
    if (r && !r->done) {
        r->done = true;
        c->cbs.on_done(r, err < 0 ? err : CV_ECLOSED);
    }
    unlink_conn(c);
    uv_timer_stop(&c->timer);
    uv_timer_stop(&c->kick);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->kick, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *s, int status)
{
    struct conn *c = s->data;
    if (status < 0 && !c->closing)
        conn_close(c, 0);
}

/* LINGER: once the last response has left, shut our side down and give the
 * peer LINGER_MS to close its own. */
static void maybe_shutdown(struct conn *c)
{
    if (c->state != ST_LINGER || c->shut || c->writing || c->tx.len > 0 || c->closing)
        return;
    if (c->eof) {
        conn_close(c, 0);
        return;
    }
    c->shut = true;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c, 0);
        return;
    }
    arm(c, LINGER_MS);
}

static void enter_linger(struct conn *c)
{
    c->state = ST_LINGER;
    disarm(c);
    flush(c);
    maybe_shutdown(c);
}

/* A peer error: answer status with msg (if no response has begun) and end
 * the connection; an active request is aborted with err first. */
static void fail(struct conn *c, int status, const char *msg, int err)
{
    struct cv_http1_req *r = c->req;
    bool started = r && r->started;

    cv_log_info("http1: %s: answered %d: %.*s", c->peer, status, (int)strlen(msg) - 1, msg);
    if (r && !r->done) {
        r->done = true;
        c->cbs.on_done(r, err);
    }
    if (c->closing)
        return;
    if (started) {
        conn_close(c, err); /* the response cannot be replaced mid-way */
        return;
    }
    /* Queued bytes are earlier responses (or a 100 Continue): keep them. */
    queue_error(c, status, msg);
    enter_linger(c);
}

static void enter_head(struct conn *c, bool fresh)
{
    c->state = ST_HEAD;
    c->idle_wait = !fresh && c->rx.len == 0;
    arm(c, c->idle_wait ? c->opts.idle_timeout_ms : c->opts.head_timeout_ms);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;

    if (c->due == 0)
        return; /* cleared since it was armed */
    uint64_t now = uv_now(c->tcp.loop);
    if (now < c->due) {
        /* moved later since it was armed */
        uv_timer_start(&c->timer, on_timer, c->due - now, 0);
        return;
    }
    c->due = 0;
    switch (c->state) {
    case ST_HEAD:
        if (c->rx.len == 0)
            conn_close(c, 0); /* idle keep-alive connection, or one that never spoke */
        else if (c->opts.silent_timeouts)
            conn_close(c, CV_ETIMEDOUT);
        else
            fail(c, 408, "request head not received in time\n", CV_ETIMEDOUT);
        break;
    case ST_BODY:
        if (c->opts.silent_timeouts) {
            cv_log_info("http1: %s: request body stalled, closing", c->peer);
            conn_close(c, CV_ETIMEDOUT);
        } else {
            fail(c, 408, "request body stalled\n", CV_ETIMEDOUT);
        }
        break;
    case ST_LINGER: conn_close(c, 0); break;
    default: break;
    }
}

/* ------------------------------------------------------------------ */
/* Requests                                                             */

static void rebase(const char **s, const char *from, char *to)
{
    if (*s != NULL)
        *s = to + (*s - from);
}

/* Requests of the usual size share one allocation size, and the server keeps
 * up to SPARE_MAX retired ones for reuse: the request with its 2 KiB header
 * table is too large for malloc's per-thread cache, and its malloc and free
 * took the slow path on every request. */
#define REQ_STD (sizeof(struct cv_http1_req) + 2048)
#define SPARE_MAX 64

static void req_free(struct conn *c, struct cv_http1_req *r)
{
    struct cv_http1_server *srv = c->srv;
    if (r == NULL)
        return;
    if (r->size == REQ_STD && srv != NULL && srv->nspare < SPARE_MAX) {
        r->c = (struct conn *)srv->spare;
        srv->spare = r;
        srv->nspare++;
        return;
    }
    free(r);
}

/* Copies the head out of rx (which the body will overwrite) and points the
 * slices at the copy, which follows the request in one allocation. */
static struct cv_http1_req *req_new(struct conn *c, const struct cv_http_head *h, size_t len)
{
    size_t need = sizeof(struct cv_http1_req) + len + h->target_len + 1, size;
    struct cv_http1_req *r = NULL;
    struct cv_http1_server *srv = c->srv;
    if (need <= REQ_STD && srv != NULL && srv->spare != NULL) {
        r = srv->spare;
        srv->spare = (struct cv_http1_req *)r->c;
        srv->nspare--;
        size = REQ_STD;
    } else {
        size = need <= REQ_STD ? REQ_STD : need;
        if ((r = malloc(size)) == NULL)
            return NULL;
    }
    memset(r, 0, offsetof(struct cv_http1_req, head));
    r->size = size;
    char *raw = (char *)(r + 1);
    const char *from = (const char *)cv_buf_head(&c->rx);
    memcpy(raw, from, len);
    r->c = c;
    r->raw = raw;
    memcpy(&r->head, h,
           offsetof(struct cv_http_head, headers) + h->nheaders * sizeof h->headers[0]);
    rebase(&r->head.method, from, raw);
    rebase(&r->head.target, from, raw);
    for (size_t i = 0; i < r->head.nheaders; i++) {
        rebase(&r->head.headers[i].name, from, raw);
        rebase(&r->head.headers[i].value, from, raw);
    }
    char *path = raw + len;
    memcpy(path, r->head.target, h->target_len);
    path[h->target_len] = '\0';
    char *q = strchr(path, '?');
    if (q)
        *q++ = '\0';
    r->path = path;
    r->query = q ? q : "";
    r->resp_len = -1;
    return r;
}

/* Framing checks RFC 9112 §6 asks of a server. Returns 0 or the status. */
static int check_framing(const struct conn *c, const struct cv_http_head *h, const char **msg)
{
    const struct cv_http_header *te = cv_http_find(h, "Transfer-Encoding");

    *msg = "bad request framing\n";
    if (h->version_major != 1) {
        *msg = "only HTTP/1.x is served here\n";
        return 505;
    }
    if (te != NULL && (!h->chunked || h->version_minor == 0))
        return 400; /* a coding we can't undo, or chunked in 1.0: length unknown */
    if (h->chunked && h->content_length >= 0)
        return 400; /* both: a smuggling attempt */
    if (h->content_length >= 0 && (uint64_t)h->content_length > c->opts.max_body) {
        *msg = "request body too large\n";
        return 413;
    }
    return 0;
}

static void start_request(struct conn *c, struct cv_http1_req *r)
{
    const struct cv_http_head *h = &r->head;
    const struct cv_http_header *ex = cv_http_find(h, "Expect");

    r->chunked = h->chunked;
    r->body_left = h->content_length > 0 ? (uint64_t)h->content_length : 0;
    r->body_done = !r->chunked && r->body_left == 0;
    r->expect = h->version_minor >= 1 && ex != NULL &&
                cv_http_has_token(ex->value, ex->value_len, "100-continue");
    if (r->chunked)
        cv_chunked_init(&r->ck, c->opts.max_head);
    c->req = r;
    c->state = ST_BODY;
    if (r->body_done)
        disarm(c);
    else
        arm(c, body_ms(c));
}

/* HEAD: parses the next request head from rx. Returns true on progress. */
static bool step_head(struct conn *c)
{
    struct cv_http_head h;
    const char *msg;

    if (c->eof && c->opts.eof_aborts) {
        conn_close(c, 0); /* nothing after a half-close is served */
        return false;
    }
    if (c->rx.len == 0 || pending(c) > c->opts.tx_high) {
        if (c->eof && c->rx.len == 0)
            conn_close(c, 0);
        return false; /* nothing yet, or a pipelining peer that does not read */
    }
    int len =
        cv_http_parse_request((const char *)cv_buf_head(&c->rx), c->rx.len, c->opts.max_head, &h);
    if (len == CV_EAGAIN) {
        if (c->eof)
            conn_close(c, 0);
        return false;
    }
    if (len == CV_ETOOBIG) {
        fail(c, 431, "request head too large or too many header fields\n", CV_ETOOBIG);
        return false;
    }
    if (len < 0) {
        fail(c, 400, "malformed request head\n", CV_EPROTO);
        return false;
    }
    int status = check_framing(c, &h, &msg);
    if (status != 0) {
        fail(c, status, msg, status == 413 ? CV_ETOOBIG : CV_EPROTO);
        return false;
    }
    struct cv_http1_req *r = req_new(c, &h, (size_t)len);
    if (r == NULL) {
        fail(c, 500, "out of memory\n", CV_ENOMEM);
        return false;
    }
    cv_buf_consume(&c->rx, (size_t)len);
    start_request(c, r);
    c->cbs.on_request(r);
    return true;
}

/* Takes the next piece of body out of rx: the data slice (possibly empty) and
 * the rx bytes to consume. Returns 0, or fails the connection and returns
 * an error. */
static int next_piece(struct conn *c, struct cv_http1_req *r, const char **data, size_t *len,
                      size_t *used)
{
    const char *p = (const char *)cv_buf_head(&c->rx);

    if (!r->chunked) {
        *len = c->rx.len < r->body_left ? c->rx.len : (size_t)r->body_left;
        *data = p;
        *used = *len;
        r->body_left -= *len;
        r->body_done = r->body_left == 0;
        return 0;
    }
    int rc = cv_chunked_decode(&r->ck, p, c->rx.len, data, len);
    if (rc < 0) {
        if (rc == CV_ETOOBIG)
            fail(c, 413, "chunk size or trailer section too large\n", rc);
        else
            fail(c, 400, "malformed chunked body\n", rc);
        return rc;
    }
    /* Refuse as soon as a chunk size line says the body will not fit. */
    if (r->body_seen + *len + cv_chunked_remaining(&r->ck) > c->opts.max_body) {
        fail(c, 413, "request body too large\n", CV_ETOOBIG);
        return CV_ETOOBIG;
    }
    *used = (size_t)rc;
    r->body_done = cv_chunked_is_done(&r->ck);
    return 0;
}

/* An early reply leaves too much body unread to drop it and keep the
 * connection (or the peer waits for a 100 Continue it will not get). */
static bool early_close(const struct cv_http1_req *r)
{
    if (r->expect && !r->continued)
        return true;
    if (!r->chunked && r->body_left > CV_HTTP1_DISCARD_MAX)
        return true;
    return r->discarded > CV_HTTP1_DISCARD_MAX;
}

/* Drops body bytes after an early reply (or cv_http1_req_discard_body). */
static bool step_discard(struct conn *c, struct cv_http1_req *r)
{
    if (early_close(r) || (r->ended && c->close_after)) {
        if (!r->ended)
            return false; /* stop reading until the response is done */
        /* The rest of the body would be taken for the next request, so
         * this connection ends after the response. */
        c->close_after = true;
        c->state = ST_WAIT;
        return true;
    }
    if (c->rx.len == 0) {
        if (c->eof)
            conn_close(c, CV_ECLOSED);
        return false;
    }
    const char *data;
    size_t len, used;
    if (next_piece(c, r, &data, &len, &used) < 0)
        return false;
    r->body_seen += len;
    r->discarded += len;
    cv_buf_consume(&c->rx, used);
    return true;
}

/* BODY: delivers body bytes, then on_end. Returns true on progress. */
static bool step_body(struct conn *c)
{
    struct cv_http1_req *r = c->req;

    if (r->body_done) {
        if (!r->end_called) {
            r->end_called = true;
            disarm(c);
            if (c->cbs.on_end && !r->discard && !r->ended)
                c->cbs.on_end(r);
            return true;
        }
        c->state = ST_WAIT;
        return true;
    }
    if (r->ended || r->discard)
        return step_discard(c, r);
    if (r->paused)
        return false;
    if (r->expect && !r->continued && !r->started) {
        r->continued = true;
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        queue(c, cont, sizeof cont - 1);
        flush(c);
    }
    if (c->rx.len == 0) {
        if (c->eof)
            conn_close(c, CV_ECLOSED); /* the peer went away mid-body */
        return false;
    }
    const char *data;
    size_t len, used;
    if (next_piece(c, r, &data, &len, &used) < 0)
        return false;
    r->body_seen += len;
    if (len > 0 && c->cbs.on_body)
        c->cbs.on_body(r, (const uint8_t *)data, len);
    if (!c->closing)
        cv_buf_consume(&c->rx, used);
    return true;
}

/* WAIT: once the response has ended, retires the request. */
static bool step_wait(struct conn *c)
{
    struct cv_http1_req *r = c->req;

    if (!r->ended)
        return false;
    bool keep = r->head.keep_alive && !c->close_after && !c->eof;
    r->done = true;
    c->cbs.on_done(r, 0);
    if (c->closing)
        return false;
    req_free(c, r);
    c->req = NULL;
    if (!keep) {
        enter_linger(c);
        return false;
    }
    enter_head(c, false);
    return true;
}

static void update_reading(struct conn *c);

static void pump(struct conn *c)
{
    if (c->in_pump || c->closing)
        return;
    c->in_pump = true;
    if (c->above_high && !c->writing && pending(c) <= c->opts.tx_low) {
        /* A direct write (flush) drained the queue. */
        c->above_high = false;
        struct cv_http1_req *r = c->req;
        if (r && !r->done && c->cbs.on_drain)
            c->cbs.on_drain(r);
    }
    bool more = true;
    while (more && !c->closing && !c->dying) {
        switch (c->state) {
        case ST_HEAD: more = step_head(c); break;
        case ST_BODY: more = step_body(c); break;
        case ST_WAIT: more = step_wait(c); break;
        default: more = false; break;
        }
    }
    c->in_pump = false;
    if (c->closing || c->dying)
        return;
    flush(c);
    maybe_shutdown(c);
    if (!c->closing)
        update_reading(c);
}

/* ------------------------------------------------------------------ */
/* Receive                                                              */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)hint;

    if (c->state == ST_LINGER)
        cv_buf_reset(&c->rx); /* draining: everything read is discarded */
    size_t room = c->rx.max - c->rx.len;
    size_t want = room < READ_CHUNK ? room : READ_CHUNK;
    if (want == 0 || cv_buf_reserve(&c->rx, want) < 0) {
        *buf = uv_buf_init(NULL, 0); /* libuv answers UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)cv_buf_tail(&c->rx), (unsigned)want);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;

    if (nread == UV_EOF) {
        c->eof = true;
        uv_read_stop(s);
        c->reading = false;
        if (c->state == ST_LINGER)
            conn_close(c, 0);
        else if (c->opts.eof_aborts && c->req && !c->req->ended)
            conn_close(c, CV_ECLOSED); /* a half-close is an abort (as in Node) */
        else
            pump(c);
        return;
    }
    if (nread < 0) {
        conn_close(c, (int)nread);
        return;
    }
    if (nread == 0)
        return;
    if (c->state == ST_LINGER)
        return;
    cv_buf_commit(&c->rx, (size_t)nread);
    if (c->state == ST_HEAD && c->idle_wait) {
        c->idle_wait = false;
        arm(c, c->opts.head_timeout_ms);
    } else if (c->state == ST_BODY && !c->req->body_done) {
        arm(c, body_ms(c));
    }
    pump(c);
}

/* Reads only while the bytes can go somewhere: a paused body stops the
 * socket (backpressure), and pipelined heads are buffered up to max_head. */
static void update_reading(struct conn *c)
{
    bool want;

    switch (c->state) {
    case ST_BODY:
        want = !c->req->paused || c->req->ended || c->req->discard;
        if (c->req->discard && !c->req->ended && early_close(c->req))
            want = false;
        break;
    case ST_LINGER: want = true; break;
    default: want = c->rx.len < c->opts.max_head; break;
    }
    want = want && !c->eof;
    if (want && !c->reading) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc < 0) {
            conn_close(c, rc);
            return;
        }
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

/* ------------------------------------------------------------------ */
/* Server                                                               */

static int conn_init(struct cv_http1_server *srv, struct conn *c)
{
    uv_loop_t *loop = srv->tcp.loop;

    c->srv = srv;
    c->cbs = srv->cbs;
    c->opts = srv->opts;
    cv_buf_init(&c->rx, c->opts.max_head + READ_CHUNK);
    cv_buf_init(&c->tx, c->opts.tx_max);
    cv_buf_init(&c->txing, c->opts.tx_max);
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    uv_timer_init(loop, &c->kick);
    c->tcp.data = c->timer.data = c->kick.data = c;
    c->wreq.data = c->sreq.data = c;
    c->handles = 3;
    int rc = uv_accept((uv_stream_t *)&srv->tcp, (uv_stream_t *)&c->tcp);
    if (rc < 0)
        return rc;
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        cv_addr_str((struct sockaddr *)&ss, c->peer, sizeof c->peer);
    else
        snprintf(c->peer, sizeof c->peer, "?");
    return 0;
}

static void on_connection(uv_stream_t *s, int status)
{
    struct cv_http1_server *srv = s->data;

    if (status < 0) {
        cv_log_warn("http1: accept failed: %s", uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        cv_log_warn("http1: accept failed: out of memory");
        return;
    }
    int rc = conn_init(srv, c);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (rc < 0) {
        cv_log_warn("http1: accept failed: %s", uv_strerror(rc));
        conn_close(c, rc);
        return;
    }
    enter_head(c, true);
    update_reading(c);
}

static bool opts_ok(const struct cv_http1_opts *o)
{
    return o->max_body > 0 && o->max_head > 0 && o->max_head <= INT32_MAX &&
           o->head_timeout_ms > 0 && o->idle_timeout_ms > 0 && o->tx_high > 0 &&
           o->tx_low <= o->tx_high && o->tx_max >= o->tx_high;
}

int cv_http1_server_start(uv_loop_t *loop, const char *host, uint16_t port,
                          const struct cv_http1_cbs *cbs, void *data, struct cv_http1_server **out)
{
    struct sockaddr_storage ss;
    if (cbs == NULL || cbs->on_request == NULL || cbs->on_done == NULL ||
        cv_addr_from(host, port, &ss) != 0)
        return CV_EINVAL;
    struct cv_http1_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return CV_ENOMEM;
    srv->cbs = *cbs;
    srv->data = data;
    cv_http1_opts_init(&srv->opts);
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

int cv_http1_server_set_opts(struct cv_http1_server *srv, const struct cv_http1_opts *o)
{
    if (!opts_ok(o))
        return CV_EINVAL;
    srv->opts = *o;
    return 0;
}

uint16_t cv_http1_server_port(const struct cv_http1_server *srv)
{
    return srv->port;
}
void *cv_http1_server_data(const struct cv_http1_server *srv)
{
    return srv->data;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct cv_http1_server *srv = h->data;
    srv->listener_closed = true;
    if (srv->free_pending)
        free(srv);
}

void cv_http1_server_unlisten(struct cv_http1_server *srv)
{
    if (srv == NULL || srv->unlistened)
        return;
    srv->unlistened = true;
    uv_close((uv_handle_t *)&srv->tcp, on_listener_closed);
}

void cv_http1_server_close(struct cv_http1_server *srv)
{
    if (srv == NULL)
        return;
    while (srv->conns)
        conn_close(srv->conns, CV_ECLOSED); /* unlinks it */
    while (srv->spare != NULL) {
        struct cv_http1_req *r = srv->spare;
        srv->spare = (struct cv_http1_req *)r->c;
        free(r);
    }
    srv->nspare = 0;
    if (!srv->unlistened)
        uv_close((uv_handle_t *)&srv->tcp, (uv_close_cb)free);
    else if (srv->listener_closed)
        free(srv);
    else
        srv->free_pending = true;
}

/* ------------------------------------------------------------------ */
/* Request API                                                          */

const struct cv_http_head *cv_http1_req_head(const struct cv_http1_req *req)
{
    return &req->head;
}
const char *cv_http1_req_path(const struct cv_http1_req *req)
{
    return req->path;
}
const char *cv_http1_req_query(const struct cv_http1_req *req)
{
    return req->query;
}
const char *cv_http1_req_peer(const struct cv_http1_req *req)
{
    return req->c->peer;
}
struct cv_http1_server *cv_http1_req_server(const struct cv_http1_req *req)
{
    return req->c->srv;
}
void cv_http1_req_set_data(struct cv_http1_req *req, void *data)
{
    req->data = data;
}
void *cv_http1_req_data(const struct cv_http1_req *req)
{
    return req->data;
}

bool cv_http1_req_is_method(const struct cv_http1_req *req, const char *method)
{
    size_t n = strlen(method);
    return req->head.method_len == n && memcmp(req->head.method, method, n) == 0;
}

static bool gone(const struct cv_http1_req *req)
{
    return req->done || req->c->closing || req->c->dying;
}

void cv_http1_req_pause(struct cv_http1_req *req)
{
    if (gone(req) || req->paused)
        return;
    req->paused = true;
    if (req->c->state == ST_BODY)
        disarm(req->c); /* a paused body is not the peer's stall */
    kick(req->c);
}

void cv_http1_req_resume(struct cv_http1_req *req)
{
    if (gone(req) || !req->paused)
        return;
    req->paused = false;
    if (req->c->state == ST_BODY && !req->body_done)
        arm(req->c, body_ms(req->c));
    kick(req->c);
}

void cv_http1_req_discard_body(struct cv_http1_req *req)
{
    if (gone(req) || req->discard)
        return;
    req->discard = true;
    if (req->paused) {
        req->paused = false;
        if (req->c->state == ST_BODY && !req->body_done)
            arm(req->c, body_ms(req->c));
    }
    kick(req->c);
}

bool cv_http1_req_body_done(const struct cv_http1_req *req)
{
    return req->body_done;
}

bool cv_http1_req_is_writable(const struct cv_http1_req *req)
{
    return !gone(req) && pending(req->c) <= req->c->opts.tx_high;
}

/* Parses a Content-Length value the handler gave: digits only. */
static int parse_len(const char *s, int64_t *out)
{
    int64_t v = 0;
    if (*s == '\0')
        return CV_EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (INT64_MAX - 9) / 10)
            return CV_EINVAL;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return 0;
}

/* Validates the handler's headers; notes Content-Length and Connection. */
static int scan_headers(struct cv_http1_req *req, const struct cv_http1_header *hs, size_t n,
                        bool *user_conn)
{
    *user_conn = false;
    for (size_t i = 0; i < n; i++) {
        if (!name_ok(hs[i].name) || !value_ok(hs[i].value))
            return CV_EINVAL;
        if (strcasecmp(hs[i].name, "Transfer-Encoding") == 0)
            return CV_EINVAL; /* framing is ours */
        if (strcasecmp(hs[i].name, "Content-Length") == 0 &&
            parse_len(hs[i].value, &req->resp_len) < 0)
            return CV_EINVAL;
        if (strcasecmp(hs[i].name, "Connection") == 0) {
            *user_conn = true;
            if (cv_http_has_token(hs[i].value, strlen(hs[i].value), "close"))
                req->c->close_after = true;
        }
    }
    return 0;
}

/* Chooses how the body is delimited and whether the connection stays. */
static const char *framing(struct cv_http1_req *req, int status)
{
    struct conn *c = req->c;
    bool v11 = req->head.version_minor >= 1;

    req->no_body = status == 204 || status == 304 || cv_http1_req_is_method(req, "HEAD");
    if (!req->no_body && req->resp_len < 0) {
        if (v11)
            req->resp_chunked = true;
        else
            c->close_after = true; /* HTTP/1.0: the close ends the body */
    }
    if (!req->head.keep_alive || c->eof)
        c->close_after = true;
    if (req->discard && !req->body_done && early_close(req))
        c->close_after = true;
    if (c->close_after)
        return "Connection: close\r\n";
    return v11 ? "" : "Connection: keep-alive\r\n";
}

static int append_headers(struct conn *c, const struct cv_http1_header *hs, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = queue(c, hs[i].name, strlen(hs[i].name));
        if (rc == 0)
            rc = queue(c, ": ", 2);
        if (rc == 0)
            rc = queue(c, hs[i].value, strlen(hs[i].value));
        if (rc == 0)
            rc = queue(c, "\r\n", 2);
    }
    return rc;
}

int cv_http1_respond_start(struct cv_http1_req *req, int status,
                           const struct cv_http1_header *headers, size_t nheaders)
{
    if (gone(req))
        return CV_ECLOSED;
    if (req->started || status < 200 || status > 999)
        return CV_EINVAL;
    bool user_conn;
    req->resp_len = -1;
    int rc = scan_headers(req, headers, nheaders, &user_conn);
    if (rc < 0)
        return rc;
    struct conn *c = req->c;
    const char *conn_hdr = framing(req, status);
    size_t mark = c->tx.len; /* undo point if the queue is full */
    rc = queue_status(c, status, cv_http_reason(status));
    if (rc == 0 && !user_conn && *conn_hdr != '\0')
        rc = queue(c, conn_hdr, strlen(conn_hdr));
    if (rc == 0 && req->resp_chunked)
        rc = QUEUE_LIT(c, "Transfer-Encoding: chunked\r\n");
    if (rc == 0)
        rc = append_headers(c, headers, nheaders);
    if (rc == 0)
        rc = queue(c, "\r\n", 2);
    if (rc < 0) {
        c->tx.len = mark;
        return rc;
    }
    req->started = true;
    if (!c->in_pump)
        flush(c);
    return 0;
}

/* "Date: ...\r\n", formatted once per second (time() is a vDSO call). */
static const char *date_line(size_t *len)
{
    static char buf[64];
    static size_t n;
    static time_t last = -1;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        n = strftime(buf, sizeof buf, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = now;
    }
    *len = n;
    return buf;
}

int cv_http1_respond_head(struct cv_http1_req *req, int status, const char *block, size_t len,
                          int64_t content_length)
{
    if (gone(req))
        return CV_ECLOSED;
    if (req->started || status < 200 || status > 999)
        return CV_EINVAL;
    struct conn *c = req->c;
    req->resp_len = content_length >= 0 ? content_length : -1;
    framing(req, status);
    size_t dlen;
    const char *date = date_line(&dlen);
    /* Built with appends into storage reserved once: no printf on the
     * per-request path (it was a tenth of the gateway's user time). */
    size_t total = STATUS_LINE_MAX + len + dlen + 96;
    size_t mark = c->tx.len;
    int rc = cv_buf_reserve(&c->tx, total);
    if (rc == 0)
        rc = queue_status(c, status, cv_http_reason_node(status));
    if (rc == 0)
        rc = queue(c, block, len);
    if (rc == 0)
        rc = queue(c, date, dlen);
    if (rc == 0 && c->close_after)
        rc = QUEUE_LIT(c, "Connection: close\r\n");
    else if (rc == 0)
        rc = QUEUE_LIT(c, "Connection: keep-alive\r\n");
    if (rc == 0 && !c->close_after && c->opts.keep_alive_s) {
        char d[20];
        rc = QUEUE_LIT(c, "Keep-Alive: timeout=");
        if (rc == 0)
            rc = queue(c, d, cv_u64_dec(d, c->opts.keep_alive_s));
        if (rc == 0)
            rc = queue(c, "\r\n", 2);
    }
    if (rc == 0 && req->resp_chunked)
        rc = QUEUE_LIT(c, "Transfer-Encoding: chunked\r\n");
    if (rc == 0)
        rc = queue(c, "\r\n", 2);
    if (rc < 0) {
        c->tx.len = mark;
        return rc;
    }
    req->started = true;
    /* A head with a body to follow waits for it: head and body then leave
     * in one write (a syscall less per response when the answer comes from
     * outside a read callback, e.g. a worker's pipe). */
    if (!c->in_pump && req->resp_len <= 0)
        flush(c);
    return 0;
}

/* "<hex size>\r\n" into out (>= 20 bytes); returns the length. */
static size_t chunk_size_line(char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (int shift = (int)(sizeof len * 8) - 4; shift >= 0; shift -= 4) {
        unsigned d = (unsigned)(len >> shift) & 15;
        if (d != 0 || n != 0 || shift == 0)
            out[n++] = hex[d];
    }
    out[n++] = '\r';
    out[n++] = '\n';
    return n;
}

int cv_http1_respond_write(struct cv_http1_req *req, const void *data, size_t len)
{
    if (gone(req))
        return CV_ECLOSED;
    if (!req->started || req->ended)
        return CV_EINVAL;
    if (len == 0 || req->no_body)
        return 0;
    if (req->resp_len >= 0 && req->resp_sent + len > (uint64_t)req->resp_len)
        return CV_EINVAL;
    struct conn *c = req->c;
    char size[24];
    size_t n = req->resp_chunked ? chunk_size_line(size, len) : 0;
    size_t total = len + n + (req->resp_chunked ? 2 : 0);
    /* All or nothing, so a chunk is never half queued. */
    if (total > c->opts.tx_max || pending(c) > c->opts.tx_max - total)
        return CV_ETOOBIG;
    int rc = cv_buf_reserve(&c->tx, total);
    if (rc < 0)
        return rc;
    queue(c, size, n);
    queue(c, data, len);
    if (req->resp_chunked)
        queue(c, "\r\n", 2);
    req->resp_sent += len;
    if (!c->in_pump)
        flush(c);
    return 0;
}

int cv_http1_respond_end(struct cv_http1_req *req)
{
    if (gone(req))
        return CV_ECLOSED;
    if (!req->started || req->ended)
        return CV_EINVAL;
    struct conn *c = req->c;
    int rc = 0;
    req->ended = true;
    if (req->resp_chunked && !req->no_body)
        rc = queue(c, "0\r\n\r\n", 5);
    if (rc < 0 ||
        (!req->no_body && req->resp_len >= 0 && req->resp_sent < (uint64_t)req->resp_len)) {
        c->close_after = true; /* the peer must see the response is short */
        rc = CV_EINVAL;
    }
    if (!c->in_pump)
        flush(c);
    kick(c);
    return rc;
}

int cv_http1_respond_abort(struct cv_http1_req *req)
{
    if (gone(req))
        return CV_ECLOSED;
    if (!req->started || req->ended)
        return CV_EINVAL;
    req->ended = true;
    req->c->close_after = true;
    if (!req->c->in_pump)
        flush(req->c);
    kick(req->c);
    return 0;
}

int cv_http1_respond(struct cv_http1_req *req, int status, const char *ctype, const void *body,
                     size_t len)
{
    char lenbuf[24];
    struct cv_http1_header hs[2];
    size_t n = 0;

    lenbuf[cv_u64_dec(lenbuf, len)] = '\0';
    if (ctype != NULL)
        hs[n++] = (struct cv_http1_header){"Content-Type", ctype};
    hs[n++] = (struct cv_http1_header){"Content-Length", lenbuf};
    int rc = cv_http1_respond_start(req, status, hs, n);
    if (rc == 0)
        rc = cv_http1_respond_write(req, body, len);
    if (rc == 0)
        rc = cv_http1_respond_end(req);
    return rc;
}
