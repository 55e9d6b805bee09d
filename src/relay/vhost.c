/* HTTP virtual hosts (relay --domain BASE --http-listen HOST:PORT): a
 * visitor's requests go to the agent that claimed NAME for Host
 * NAME.BASE (docs/PROTOCOL.md §6).
 *
 * One visitor connection is one stream to one agent, bound by its first
 * request's Host. Requests are parsed only as far as routing needs: each
 * head is parsed (16 KiB limit, bare CR/LF refused), rewritten once with
 * X-Forwarded-For/-Proto/-Host (codec/vhost.c) and sent as one DATA; the
 * body that follows is tracked (Content-Length, or chunked framing through
 * codec/chunked) only to know where the next head starts, and passed
 * through from the read buffer as it arrives, within the agent's credit,
 * never gathered whole. An Upgrade request (WebSocket) switches the
 * connection to raw pass-through after its head. Responses are not parsed:
 * requests of one connection reach one backend in order, so its bytes go
 * back to the visitor as they are (written with uv_try_write first, the
 * rest queued, credit returned as written, as for public ports).
 *
 * A later request on the connection for another Host, or a malformed one,
 * is not forwarded: the relay ends the request side toward the backend
 * (FIN), lets the responses already under way finish, then answers 421 (or
 * 400/431) and closes. Answers the relay writes itself: 404 for a host
 * that is not NAME.BASE of a claimed name, 502 when the name's agent is
 * gone, its local service refuses or closes without answering, 400 for a
 * malformed request, 431 for a head over 16 KiB, 408 for a head not
 * complete within the handshake deadline (slowloris), 429 over the
 * per-address connection rate. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/chunked.h"
#include "codec/http.h"
#include "codec/kohaku.h"
#include "codec/vhost.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "core/ratelimit.h"
#include "net/addr.h"
#include "net/tls.h"
#include "relay/internal.h"

/* A connection idle this long in both directions is closed. */
#define VHOST_IDLE_MS (120 * 1000)
/* After the relay's own answer: how long unread request bytes are drained
 * before the socket closes (closing with unread bytes sends a RST, which
 * can destroy the answer before the visitor reads it). */
#define VHOST_LINGER_MS 2000
/* Chunk extensions plus trailers per request body. */
#define VHOST_CHUNK_EXTRA (16 * 1024)

struct vhost {
    struct cv_relay *r;
    uv_tcp_t tcp;
    struct cv_ratelimit *rl;
    struct hvisitor *all;
    uint16_t port;
    bool tls; /* --https-listen: visitors speak TLS (certificates: r->opts.tls) */
};

enum hv_state {
    HV_HEAD,    /* waiting for a request head */
    HV_LENGTH,  /* in a Content-Length body (remaining) */
    HV_CHUNKED, /* in a chunked body (ck) */
    HV_RAW,     /* upgraded: everything passes through */
    HV_DONE,    /* nothing more is read toward the agent */
    HV_LINGER   /* answered and shut down: draining until EOF or a timer */
};

struct hvisitor {
    struct vhost *vh;
    struct cv_relay *r;
    struct hvisitor *next, *prev; /* in vh->all */
    struct conn *c;               /* NULL until bound, and once the stream is gone */
    struct tunnel *stalled_on;    /* on this tunnel's hstalled list */
    struct hvisitor *snext;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct cv_buf in;        /* request bytes read and not yet forwarded */
    struct cv_buf out, infl; /* toward the visitor: queued, being written */
    enum hv_state state;
    uint64_t remaining;      /* HV_LENGTH */
    struct cv_chunked ck;    /* HV_CHUNKED */
    bool bound, writing, fin_pending, reading, closing, eof, responded;
    uint64_t forwarded;      /* request heads sent to the agent */
    /* TLS (--https-listen): the transport under everything above. Reads
     * are ciphertext fed to the engine, and plaintext is taken out of it
     * only as far as the request side can move (so credit and the head
     * limit bound it as for plain reads); writes are encrypted into `out`.
     * plain_out/plain_infl: plaintext bytes behind out/infl, the credit
     * returned to the agent when they are written. */
    struct cv_tls *tls; /* owned; NULL: plain TCP */
    bool tls_open, tls_shut;
    bool tls_more; /* the engine may hold plaintext not taken yet */
    bool draining;
    size_t plain_out, plain_infl;
    /* An Upgrade request went to the backend: later requests wait until
     * its response head says 101 (raw pass-through) or anything else (HTTP
     * parsing goes on). rsp gathers that response head. */
    bool upgrade_wait;
    struct cv_buf rsp;
    int pending_status;      /* answer after the backend's FIN (421/400/431), 0: none */
    char pending_text[256];
    char name[CV_KH_NAME_MAX + 1]; /* bound name */
    uint16_t local_port;
    char agent[RELAY_MAX_ID];
    char err[160];           /* the agent's ERROR text */
    uint64_t born, head_start, active; /* loop ms */
    char ip[INET6_ADDRSTRLEN];
    int handles;             /* still to close: tcp, timer */
};

const int relay_vhost_statuses[RELAY_VHOST_STATUSES] = {400, 404, 405, 408, 421, 429, 431, 502};

static void count_answer(struct cv_relay *r, int status)
{
    for (size_t i = 0; i < RELAY_VHOST_STATUSES; i++)
        if (relay_vhost_statuses[i] == status)
            r->stats.vhost_answers[i]++;
}

static uint8_t rxbuf[CV_LIMIT_NATIVE_PAYLOAD];
/* Ciphertext as read from a TLS visitor, fed to its engine at once. */
static uint8_t tlsbuf[64 * 1024];
static char headbuf[CV_VHOST_REWRITE_MAX(CV_LIMIT_HTTP_HEAD)];

static void pump(struct hvisitor *hv);
static void update_reading(struct hvisitor *hv);

/* ---- closing ---------------------------------------------------------------- */

static void on_hv_closed(uv_handle_t *h)
{
    struct hvisitor *hv = h->data;
    if (--hv->handles > 0)
        return;
    struct cv_relay *r = hv->r;
    cv_buf_fini(&hv->in);
    cv_buf_fini(&hv->out);
    cv_buf_fini(&hv->infl);
    cv_buf_fini(&hv->rsp);
    cv_tls_free(hv->tls);
    free(hv);
    r->closing_handles--;
    relay_maybe_free(r);
}

static void unstall(struct hvisitor *hv)
{
    struct tunnel *t = hv->stalled_on;
    if (t == NULL)
        return;
    for (struct hvisitor **pp = &t->hstalled; *pp; pp = &(*pp)->snext) {
        if (*pp == hv) {
            *pp = hv->snext;
            break;
        }
    }
    hv->stalled_on = NULL;
    hv->snext = NULL;
}

static void hv_close(struct hvisitor *hv)
{
    if (hv->closing)
        return;
    hv->closing = true;
    unstall(hv);
    if (hv->prev)
        hv->prev->next = hv->next;
    else
        hv->vh->all = hv->next;
    if (hv->next)
        hv->next->prev = hv->prev;
    hv->handles = 2;
    uv_close((uv_handle_t *)&hv->tcp, on_hv_closed);
    uv_close((uv_handle_t *)&hv->timer, on_hv_closed);
}

/* Ends the stream at the agent too (visitor gone or misbehaving). */
static void hv_abort(struct hvisitor *hv)
{
    struct conn *c = hv->c;
    if (c) {
        hv->c = NULL;
        c->hv = NULL;
        close_at_agent(c);
        conn_free(c);
    }
    hv_close(hv);
}

/* Lets go of the stream (CLOSE to the agent if it is still open there). */
static void release_conn(struct hvisitor *hv)
{
    struct conn *c = hv->c;
    if (c == NULL)
        return;
    hv->c = NULL;
    c->hv = NULL;
    unstall(hv);
    close_at_agent(c);
    conn_free(c);
}

/* ---- writing to the visitor ------------------------------------------------ */

static void flush_out(struct hvisitor *hv);

static void on_linger_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    if (n < 0)
        hv_close(s->data);
}

static void on_linger_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    *buf = uv_buf_init((char *)rxbuf, sizeof rxbuf);
}

static void on_linger_timeout(uv_timer_t *tm)
{
    hv_close(tm->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct hvisitor *hv = req->data;
    if (hv->closing || hv->c != NULL)
        return;
    if (status < 0 || hv->eof) {
        hv_close(hv);
        return;
    }
    /* Drain what the visitor still sends, so the answer is not reset. */
    hv->state = HV_LINGER;
    uv_read_stop((uv_stream_t *)&hv->tcp);
    hv->reading = false;
    unstall(hv);
    if (uv_read_start((uv_stream_t *)&hv->tcp, on_linger_alloc, on_linger_read) != 0)
        hv_close(hv);
    else
        uv_timer_start(&hv->timer, on_linger_timeout, VHOST_LINGER_MS, 0);
}

/* Moves the ciphertext the TLS engine produced into out. */
static int tls_take(struct hvisitor *hv)
{
    struct cv_buf *b = cv_tls_out(hv->tls);
    if (b->len == 0)
        return 0;
    if (cv_buf_append(&hv->out, cv_buf_head(b), b->len) != 0)
        return CV_ETOOBIG;
    cv_buf_consume(b, b->len);
    return 0;
}

static void maybe_shutdown(struct hvisitor *hv)
{
    if (!hv->fin_pending || hv->writing || hv->out.len > 0 || hv->closing)
        return;
    if (hv->tls && hv->tls_open && !hv->tls_shut) {
        /* close_notify first, so the visitor sees a clean end of the stream. */
        hv->tls_shut = true;
        cv_tls_shutdown(hv->tls);
        if (tls_take(hv) != 0) {
            hv_close(hv);
            return;
        }
        if (hv->out.len > 0) {
            flush_out(hv);
            return;
        }
    }
    hv->fin_pending = false;
    hv->sreq.data = hv;
    if (uv_shutdown(&hv->sreq, (uv_stream_t *)&hv->tcp, on_shutdown) != 0 && hv->c == NULL)
        hv_close(hv);
}

static void on_write(uv_write_t *req, int status)
{
    struct hvisitor *hv = req->data;
    size_t n = hv->tls ? hv->plain_infl : hv->infl.len;
    hv->writing = false;
    hv->plain_infl = 0;
    cv_buf_consume(&hv->infl, hv->infl.len);
    if (hv->closing)
        return;
    if (status < 0) {
        hv_abort(hv);
        return;
    }
    hv->active = uv_now(hv->tcp.loop);
    if (hv->c)
        front_consumed(hv->c, n, hv->out.len == 0);
    flush_out(hv);
}

static void flush_out(struct hvisitor *hv)
{
    if (hv->writing || hv->out.len == 0 || hv->closing) {
        maybe_shutdown(hv);
        return;
    }
    /* Swapped whole, caps included: out keeps its maximum. */
    size_t max = hv->out.max;
    struct cv_buf t = hv->infl;
    hv->infl = hv->out;
    hv->out = t;
    hv->out.max = max;
    hv->infl.max = SIZE_MAX;
    hv->plain_infl = hv->plain_out;
    hv->plain_out = 0;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&hv->infl), (unsigned)hv->infl.len);
    hv->wreq.data = hv;
    if (uv_write(&hv->wreq, (uv_stream_t *)&hv->tcp, &b, 1, on_write) == 0)
        hv->writing = true;
    else
        hv_abort(hv);
}

/* Writes p[0..n) to the visitor (try_write, the rest queued). Returns the
 * bytes written at once, or -1 if the visitor is gone. */
static long write_out(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    if (hv->tls) {
        /* Encrypted into out and written by flush_out; nothing counts as
         * written at once (credit follows on_write). */
        if (!hv->tls_open || hv->tls_shut || cv_tls_write(hv->tls, p, n) != 0 || tls_take(hv) != 0)
            return -1;
        hv->plain_out += n;
        flush_out(hv);
        return 0;
    }
    size_t done = 0;
    if (!hv->writing && hv->out.len == 0) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int w = uv_try_write((uv_stream_t *)&hv->tcp, &b, 1);
        if (w > 0)
            done = (size_t)w;
        else if (w != UV_EAGAIN)
            return -1;
    }
    if (done < n && cv_buf_append(&hv->out, p + done, n - done) != 0)
        return -1;
    flush_out(hv);
    return (long)done;
}

/* No more requests on this connection: what is queued goes to the visitor,
 * then its write side is shut down and the socket closes. */
static void finish(struct hvisitor *hv)
{
    release_conn(hv);
    hv->state = HV_DONE;
    uv_read_stop((uv_stream_t *)&hv->tcp);
    hv->reading = false;
    unstall(hv);
    hv->fin_pending = true;
    maybe_shutdown(hv);
}

/* The relay's own answer: a short text page, then the connection closes
 * (once what is queued for the visitor has gone). */
static void answer(struct hvisitor *hv, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer(struct hvisitor *hv, int status, const char *fmt, ...)
{
    char body[768];
    va_list ap;
    va_start(ap, fmt);
    int bn = vsnprintf(body, sizeof body - 1, fmt, ap);
    va_end(ap);
    if (bn < 0)
        bn = 0;
    if ((size_t)bn > sizeof body - 2)
        bn = (int)sizeof body - 2;
    body[bn++] = '\n';
    char resp[1024];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %d\r\nConnection: close\r\nServer: culvert\r\n\r\n%.*s",
                     status, cv_http_reason(status), bn, bn, body);
    if (n < 0 || (size_t)n >= sizeof resp)
        n = (int)sizeof resp - 1;
    cv_log_debug("vhost %s: %d: %.*s", hv->ip, status, bn - 1, body);
    count_answer(hv->r, status);
    release_conn(hv);
    if (hv->tls && !hv->tls_open) { /* no TLS session to answer in (408): close */
        hv_close(hv);
        return;
    }
    if (write_out(hv, (const uint8_t *)resp, (size_t)n) < 0) {
        hv_abort(hv);
        return;
    }
    finish(hv);
}

/* An answer the relay owes after the responses already under way: the
 * request side toward the backend ends now, the answer follows its FIN. */
static void answer_later(struct hvisitor *hv, int status, const char *text)
{
    if (hv->c == NULL) {
        answer(hv, status, "%s", text);
        return;
    }
    hv->state = HV_DONE;
    hv->pending_status = status;
    snprintf(hv->pending_text, sizeof hv->pending_text, "%s", text);
    struct conn *c = hv->c;
    if (!c->fin_to_agent && c->t)
        front_data(c, NULL, 0);
    update_reading(hv);
}

static void answer_502(struct hvisitor *hv)
{
    const char *base = hv->r->opts.domain;
    struct named *n = relay_find_name(hv->r, CV_KH_HTTP, hv->name, strlen(hv->name));
    if (n == NULL || n->t == NULL)
        answer(hv, 502,
               "502 Bad Gateway: %s.%s is served by agent %s, which disconnected from this "
               "relay.",
               hv->name, base, hv->agent);
    else if (hv->err[0])
        answer(hv, 502,
               "502 Bad Gateway: agent %s could not reach the service for %s.%s at its "
               "127.0.0.1:%u: %s",
               hv->agent, hv->name, base, hv->local_port, hv->err);
    else
        answer(hv, 502,
               "502 Bad Gateway: the service for %s.%s (agent %s, its 127.0.0.1:%u) closed the "
               "connection without answering.",
               hv->name, base, hv->agent, hv->local_port);
}

/* ---- the hooks stream.c calls -------------------------------------------- */

/* The backend's bytes while an Upgrade request waits for its answer: the
 * first final response head decides. 101: everything passes through raw
 * from now on; anything else: the upgrade did not happen and the next
 * request is parsed (and routed and rewritten) as usual. Interim 1xx heads
 * are skipped. Responses to requests a visitor pipelined ahead of its
 * Upgrade would be taken for its answer: clients wait for those before
 * asking to upgrade (RFC 9110 §7.8 leaves pipelined upgrades undefined).
 * Returns false if the head is malformed or too large (the connection is
 * then aborted). */
static bool watch_upgrade(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    while (n > 0 && hv->upgrade_wait) {
        size_t k = hv->rsp.max - hv->rsp.len < n ? hv->rsp.max - hv->rsp.len : n;
        if (cv_buf_append(&hv->rsp, p, k) != 0)
            return false;
        p += k;
        n -= k;
        for (;;) {
            struct cv_http_head h;
            int hl = cv_http_parse_response((const char *)cv_buf_head(&hv->rsp), hv->rsp.len,
                                            CV_LIMIT_HTTP_HEAD, &h);
            if (hl == CV_EAGAIN && hv->rsp.len < hv->rsp.max)
                break;
            if (hl < 0)
                return false;
            if (h.status >= 100 && h.status < 200 && h.status != 101) {
                cv_buf_consume(&hv->rsp, (size_t)hl);
                continue;
            }
            hv->upgrade_wait = false;
            if (h.status == 101)
                hv->state = HV_RAW;
            else
                cv_log_debug("vhost %s: upgrade refused by the service (%d): back to HTTP", hv->ip,
                             h.status);
            cv_buf_reset(&hv->rsp);
            break;
        }
    }
    return true;
}

bool vhost_write(struct conn *c, const uint8_t *p, size_t n)
{
    struct hvisitor *hv = c->hv;
    if (hv == NULL || hv->closing)
        return false;
    if (n == 0) { /* FIN: the backend is done with this connection */
        if (hv->pending_status)
            answer(hv, hv->pending_status, "%s", hv->pending_text);
        else if (!hv->responded && hv->forwarded > 0)
            answer_502(hv);
        else
            finish(hv);
        return true;
    }
    hv->responded = true;
    bool decided = false;
    if (hv->upgrade_wait) {
        if (!watch_upgrade(hv, p, n)) {
            cv_log_debug("vhost %s: malformed answer to an upgrade request", hv->ip);
            hv_abort(hv);
            return false;
        }
        decided = !hv->upgrade_wait;
    }
    long done = write_out(hv, p, n);
    if (done < 0) {
        hv_abort(hv);
        return false;
    }
    hv->active = uv_now(hv->tcp.loop);
    if (done > 0)
        front_consumed(c, (size_t)done, hv->out.len == 0);
    if (decided && c->hv == hv) { /* requests (or raw bytes) held back move now */
        pump(hv);
        if (!hv->closing)
            update_reading(hv);
    }
    return true;
}

void vhost_error(struct conn *c, const uint8_t *p, size_t n)
{
    struct hvisitor *hv = c->hv;
    if (hv == NULL)
        return;
    if (n >= sizeof hv->err)
        n = sizeof hv->err - 1;
    for (size_t i = 0; i < n; i++)
        hv->err[i] = p[i] < 0x20 || p[i] >= 0x7f ? '?' : (char)p[i];
    hv->err[n] = 0;
}

void vhost_detach(struct conn *c)
{
    struct hvisitor *hv = c->hv;
    if (hv == NULL)
        return;
    c->hv = NULL;
    hv->c = NULL;
    unstall(hv);
    if (hv->closing || hv->state == HV_LINGER)
        return;
    if (!hv->responded && hv->forwarded > 0) {
        answer_502(hv);
        return;
    }
    if (hv->pending_status && !hv->responded) {
        answer(hv, hv->pending_status, "%s", hv->pending_text);
        return;
    }
    /* Let what the backend sent reach the visitor, then close. */
    finish(hv);
}

/* ---- requests toward the agent ---------------------------------------------- */

/* Payload bytes that may go to the agent now. */
static size_t room(const struct hvisitor *hv)
{
    const struct conn *c = hv->c;
    if (c == NULL || c->dead || c->t == NULL || c->fin_to_agent || !cv_ws_is_writable(c->t->ws))
        return 0;
    uint64_t k = c->a_tx.credit;
    return k < sizeof rxbuf ? (size_t)k : sizeof rxbuf;
}

static void stall(struct hvisitor *hv)
{
    if (hv->stalled_on || hv->c == NULL || hv->c->t == NULL)
        return;
    hv->stalled_on = hv->c->t;
    hv->snext = hv->c->t->hstalled;
    hv->c->t->hstalled = hv;
}

static bool same_name(const struct hvisitor *hv, const char *name, size_t len)
{
    return strlen(hv->name) == len && strncasecmp(hv->name, name, len) == 0;
}

/* Binds the connection to name's agent. False if answered instead. */
static bool bind_name(struct hvisitor *hv, const char *name, size_t len)
{
    struct cv_relay *r = hv->r;
    const char *base = r->opts.domain;
    struct named *n = relay_find_name(r, CV_KH_HTTP, name, len);
    if (n == NULL) {
        answer(hv, 404,
               "404 Not Found: no agent serves the host %.*s.%s on this relay (it serves "
               "NAME.%s for the names its agents claim).",
               (int)len, name, base, base);
        return false;
    }
    memcpy(hv->name, n->name, sizeof hv->name);
    snprintf(hv->agent, sizeof hv->agent, "%s", n->agent);
    hv->local_port = n->local_port;
    if (n->t == NULL) {
        answer(hv, 502,
               "502 Bad Gateway: %s.%s is served by agent %s, which is not connected to this "
               "relay (it left %lld s ago).",
               n->name, base, n->agent, (long long)(time(NULL) - n->gone));
        return false;
    }
    struct conn *c = named_connect(n, FRONT_HTTP);
    if (c == NULL) {
        answer(hv, 502, "502 Bad Gateway: cannot open a stream to agent %s for %s.%s (too many "
                        "connections, or its link is failing).",
               n->agent, n->name, base);
        return false;
    }
    c->hv = hv;
    hv->c = c;
    hv->bound = true;
    return true;
}

/* Handles the head at p[0..n) if it is complete. Returns the bytes used
 * (the head), or 0: incomplete, waiting for credit, or answered. */
static size_t take_head(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    struct cv_http_head h;
    int hl = cv_http_parse_request((const char *)p, n, CV_LIMIT_HTTP_HEAD, &h);
    if (hl == CV_EAGAIN && n < CV_LIMIT_HTTP_HEAD)
        return 0;
    if (hl == CV_EAGAIN || hl == CV_ETOOBIG) {
        answer_later(hv, 431, "431 Request Header Fields Too Large: the request head is over "
                              "16 KiB or has more than 64 header fields.");
        return 0;
    }
    if (hl < 0) {
        answer_later(hv, 400, "400 Bad Request: malformed HTTP request.");
        return 0;
    }
    const char *name;
    size_t len;
    enum cv_vhost_route route = cv_vhost_route(&h, hv->r->opts.domain, &name, &len);
    if (route == CV_VHOST_BAD) {
        answer_later(hv, 400, "400 Bad Request: the request needs exactly one Host header "
                              "(or an absolute URL).");
        return 0;
    }
    /* Framing the next hop could read differently (RFC 9112 §6.1, §6.3):
     * a transfer coding that does not end in chunked, or one in HTTP/1.0. */
    if (cv_http_find(&h, "Transfer-Encoding") && (!h.chunked || h.version_minor == 0)) {
        answer_later(hv, 400, "400 Bad Request: unsupported Transfer-Encoding (only chunked, "
                              "in HTTP/1.1).");
        return 0;
    }
    if (h.method_len == 7 && memcmp(h.method, "CONNECT", 7) == 0) {
        answer_later(hv, 405, "405 Method Not Allowed: this relay does not proxy CONNECT.");
        return 0;
    }
    if (hv->bound && (route != CV_VHOST_NAME || !same_name(hv, name, len))) {
        char text[256];
        bool named = route == CV_VHOST_NAME;
        snprintf(text, sizeof text,
                 "421 Misdirected Request: this connection is bound to %s.%s; open a new "
                 "connection for %.*s%s%s.",
                 hv->name, hv->r->opts.domain, (int)(len > 100 ? 100 : len), name,
                 named ? "." : "", named ? hv->r->opts.domain : "");
        answer_later(hv, 421, text);
        return 0;
    }
    if (route == CV_VHOST_UNKNOWN) {
        answer(hv, 404,
               "404 Not Found: unknown host %.*s (this relay serves virtual hosts NAME.%s).",
               (int)(len > 200 ? 200 : len), name, hv->r->opts.domain);
        return 0;
    }
    if (!hv->bound && !bind_name(hv, name, len))
        return 0;
    size_t cap = CV_VHOST_REWRITE_MAX((size_t)hl);
    if (room(hv) < cap) { /* the head goes as one DATA: wait for that much credit */
        stall(hv);
        return 0;
    }
    size_t out = cv_vhost_rewrite((const char *)p, (size_t)hl, &h, hv->ip,
                                  hv->tls ? "https" : "http", headbuf, cap);
    hv->forwarded++;
    hv->r->stats.vhost_requests++;
    hv->head_start = 0;
    front_data(hv->c, (const uint8_t *)headbuf, out);
    if (hv->c == NULL)
        return 0; /* aborted; answered by detach */
    if (h.upgrade) /* later requests wait for the answer (watch_upgrade) */
        hv->upgrade_wait = true;
    if (h.chunked) {
        hv->state = HV_CHUNKED;
        cv_chunked_init(&hv->ck, VHOST_CHUNK_EXTRA);
    } else if (h.content_length > 0) {
        hv->state = HV_LENGTH;
        hv->remaining = (uint64_t)h.content_length;
    }
    return (size_t)hl;
}

/* Forwards body bytes from p[0..n) as far as the body goes and credit
 * allows. Returns the bytes used. */
static size_t take_body(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    size_t k = room(hv);
    if (k == 0) {
        stall(hv);
        return 0;
    }
    if (k > n)
        k = n;
    if (hv->state == HV_LENGTH) {
        if (k > hv->remaining)
            k = (size_t)hv->remaining;
        hv->remaining -= k;
        if (hv->remaining == 0)
            hv->state = HV_HEAD;
    } else if (hv->state == HV_CHUNKED) {
        /* The framing is checked and passed on as it is. */
        size_t used = 0;
        while (used < k && !cv_chunked_is_done(&hv->ck)) {
            const char *d;
            size_t dl;
            int rc = cv_chunked_decode(&hv->ck, (const char *)p + used, k - used, &d, &dl);
            if (rc < 0) {
                if (used > 0)
                    front_data(hv->c, p, used);
                answer_later(hv, 400, "400 Bad Request: malformed chunked body.");
                return 0;
            }
            if (rc == 0)
                break;
            used += (size_t)rc;
        }
        k = used;
        if (cv_chunked_is_done(&hv->ck))
            hv->state = HV_HEAD;
        if (k == 0)
            return 0;
    }
    front_data(hv->c, p, k);
    if (hv->state == HV_HEAD)
        hv->head_start = 0;
    return hv->c ? k : 0;
}

/* Uses what it can of p[0..n). Returns the bytes used. */
static size_t consume(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    size_t used = 0;
    while (used < n && !hv->closing) {
        size_t k;
        if (hv->state == HV_HEAD && hv->upgrade_wait)
            break; /* the next bytes are a request or upgraded: the answer says which */
        if (hv->state == HV_HEAD)
            k = take_head(hv, p + used, n - used);
        else if (hv->state == HV_LENGTH || hv->state == HV_CHUNKED || hv->state == HV_RAW)
            k = take_body(hv, p + used, n - used);
        else
            k = n - used; /* HV_DONE, HV_LINGER: dropped */
        if (k == 0)
            break;
        used += k;
    }
    return used;
}

/* Processes bytes held in hv->in. */
static void pump(struct hvisitor *hv)
{
    if (hv->in.len == 0 || hv->closing)
        return;
    size_t k = consume(hv, cv_buf_head(&hv->in), hv->in.len);
    if (!hv->closing)
        cv_buf_consume(&hv->in, k);
}

static bool want_read(const struct hvisitor *hv)
{
    if (hv->closing || hv->eof || hv->state == HV_DONE || hv->state == HV_LINGER)
        return false;
    if (hv->in.len >= CV_LIMIT_HTTP_HEAD)
        return false; /* unprocessed bytes wait for credit */
    return !hv->bound || room(hv) > 0;
}

/* Plaintext the request side can take in one read. */
static size_t read_cap(const struct hvisitor *hv)
{
    size_t n = hv->bound ? room(hv) : CV_LIMIT_HTTP_HEAD;
    return n ? n : 1;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct hvisitor *hv = h->data;
    if (hv->tls) /* ciphertext: fed to the engine at once */
        *buf = uv_buf_init((char *)tlsbuf, sizeof tlsbuf);
    else
        *buf = uv_buf_init((char *)rxbuf, (unsigned)read_cap(hv));
}

/* Does p[0..n) contain CR LF CR LF? */
static bool has_head_end(const uint8_t *p, size_t n)
{
    const uint8_t *end = p + n;
    while (end - p >= 4) {
        const uint8_t *q = memchr(p, '\r', (size_t)(end - p) - 3);
        if (q == NULL)
            return false;
        if (q[1] == '\n' && q[2] == '\r' && q[3] == '\n')
            return true;
        p = q + 1;
    }
    return false;
}

/* The visitor ended its side (n == UV_EOF) or the socket failed. */
static void got_eof(struct hvisitor *hv, ssize_t n)
{
    uv_read_stop((uv_stream_t *)&hv->tcp);
    hv->reading = false;
    hv->eof = true;
    unstall(hv);
    if (n != UV_EOF)
        hv_abort(hv);
    else if (hv->c && !hv->c->fin_to_agent && hv->state != HV_DONE)
        front_data(hv->c, NULL, 0); /* FIN: responses still come back */
    else if (hv->c == NULL)
        finish(hv);
}

/* Request bytes (plaintext) from the visitor. */
static void got_data(struct hvisitor *hv, const uint8_t *p, size_t n)
{
    hv->active = uv_now(hv->tcp.loop);
    if (hv->state == HV_HEAD && hv->in.len == 0 && hv->head_start == 0)
        hv->head_start = hv->active;
    if (hv->in.len == 0) {
        size_t k = consume(hv, p, n);
        if (k < n && !hv->closing && hv->state != HV_DONE &&
            cv_buf_append(&hv->in, p + k, n - k) != 0) {
            hv_abort(hv);
            return;
        }
    } else {
        size_t old = hv->in.len;
        if (cv_buf_append(&hv->in, p, n) != 0) {
            hv_abort(hv);
            return;
        }
        /* A head trickled in small pieces is parsed again only once its end
         * may have arrived (or it reached the limit): parsing after every
         * piece would cost O(n^2) for a 16 KiB head. */
        size_t from = old >= 3 ? old - 3 : 0;
        if (hv->state != HV_HEAD || hv->in.len >= CV_LIMIT_HTTP_HEAD ||
            has_head_end(cv_buf_head(&hv->in) + from, hv->in.len - from))
            pump(hv);
    }
    update_reading(hv);
}

/* Writes what the TLS engine produced (handshake flights, tickets). */
static int tls_send(struct hvisitor *hv)
{
    if (tls_take(hv) != 0)
        return CV_ETOOBIG;
    flush_out(hv);
    return 0;
}

/* Advances the TLS handshake, then takes plaintext out of the engine as
 * long as the request side wants it. */
static void tls_drain(struct hvisitor *hv)
{
    if (!hv->tls_open) {
        int rc = cv_tls_handshake(hv->tls);
        if (tls_send(hv) != 0) {
            hv_close(hv);
            return;
        }
        if (rc == CV_EAGAIN || hv->closing)
            return;
        if (rc != 0) {
            cv_log_debug("vhost %s: TLS handshake failed: %s", hv->ip, cv_tls_error(hv->tls));
            hv->r->stats.vhost_tls_failures++;
            finish(hv); /* the alert goes out, then the socket closes */
            return;
        }
        hv->tls_open = true;
        hv->r->stats.vhost_tls_handshakes++;
    }
    hv->draining = true;
    hv->tls_more = false;
    while (!hv->closing && hv->state != HV_LINGER) {
        if (!want_read(hv) || hv->stalled_on != NULL) {
            hv->tls_more = true; /* what is left waits for credit or a drained link */
            break;
        }
        int r = cv_tls_read(hv->tls, rxbuf, read_cap(hv));
        if (r == CV_EAGAIN)
            break;
        if (r < 0) {
            if (r != UV_EOF)
                cv_log_debug("vhost %s: TLS: %s", hv->ip, cv_tls_error(hv->tls));
            hv->draining = false;
            got_eof(hv, r == UV_EOF ? UV_EOF : UV_ECONNRESET);
            return;
        }
        got_data(hv, rxbuf, (size_t)r);
    }
    hv->draining = false;
    if (hv->closing || hv->state == HV_LINGER)
        return;
    if (tls_send(hv) != 0) { /* reading may have produced output (key updates) */
        hv_abort(hv);
        return;
    }
    update_reading(hv);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct hvisitor *hv = s->data;
    if (n == 0 || hv->closing)
        return;
    if (n < 0) {
        got_eof(hv, n);
        return;
    }
    if (hv->tls == NULL) {
        got_data(hv, (const uint8_t *)buf->base, (size_t)n);
        return;
    }
    hv->active = uv_now(s->loop);
    if (cv_tls_feed(hv->tls, buf->base, (size_t)n) != 0) {
        hv_abort(hv);
        return;
    }
    tls_drain(hv);
}

/* Reads while requests can move; a stalled visitor waits for
 * vhosts_resume (credit or a drained link). */
static void update_reading(struct hvisitor *hv)
{
    if (hv->closing || hv->state == HV_LINGER)
        return;
    if (hv->tls_more && !hv->draining && want_read(hv) && hv->stalled_on == NULL) {
        tls_drain(hv); /* plaintext the engine held while the request side waited */
        return;
    }
    if (want_read(hv) && hv->stalled_on == NULL) {
        if (!hv->reading && uv_read_start((uv_stream_t *)&hv->tcp, on_alloc, on_read) == 0)
            hv->reading = true;
        return;
    }
    if (hv->reading) {
        uv_read_stop((uv_stream_t *)&hv->tcp);
        hv->reading = false;
    }
    if (hv->bound && room(hv) == 0 && hv->state != HV_DONE && !hv->eof)
        stall(hv);
}

void vhosts_resume(struct tunnel *t)
{
    struct hvisitor *list = t->hstalled;
    t->hstalled = NULL;
    while (list) {
        struct hvisitor *hv = list;
        list = hv->snext;
        hv->stalled_on = NULL;
        hv->snext = NULL;
        if (room(hv) == 0) {
            stall(hv);
            continue;
        }
        pump(hv);
        if (!hv->closing)
            update_reading(hv);
    }
}

/* ---- deadlines ---------------------------------------------------------------- */

static void on_tick(uv_timer_t *tm)
{
    struct hvisitor *hv = tm->data;
    if (hv->closing || hv->state == HV_LINGER)
        return;
    uint64_t now = uv_now(tm->loop), hs = hv->r->opts.handshake_ms;
    bool head_wait = hv->state == HV_HEAD && !hv->eof && !hv->upgrade_wait;
    if (head_wait && hv->in.len > 0 && hv->head_start == 0)
        hv->head_start = now; /* the rest of a read that ended a body */
    if (head_wait && hv->head_start && now - hv->head_start >= hs) {
        /* A head begun and not finished in time (slowloris). */
        cv_log_debug("vhost %s: request head not complete within %llu ms", hv->ip,
                     (unsigned long long)hs);
        if (hv->c)
            hv_abort(hv);
        else
            answer(hv, 408, "408 Request Timeout: the request head did not arrive in time.");
        return;
    }
    if (now - hv->active >= VHOST_IDLE_MS)
        hv_abort(hv);
}

/* ---- accepting ---------------------------------------------------------------- */

static void on_connection(uv_stream_t *l, int status)
{
    struct vhost *vh = l->data;
    struct cv_relay *r = vh->r;
    if (status < 0 || r->stopping)
        return;
    struct hvisitor *hv = calloc(1, sizeof *hv);
    if (hv == NULL)
        return;
    hv->vh = vh;
    hv->r = r;
    uv_tcp_init(l->loop, &hv->tcp);
    uv_timer_init(l->loop, &hv->timer);
    hv->tcp.data = hv;
    hv->timer.data = hv;
    r->closing_handles++; /* counted until its close callbacks */
    cv_buf_init(&hv->in, CV_LIMIT_HTTP_HEAD + sizeof rxbuf);
    cv_buf_init(&hv->out, CV_FLOW_WINDOW_MAX + 1024 * 1024);
    cv_buf_init(&hv->infl, SIZE_MAX);
    cv_buf_init(&hv->rsp, CV_LIMIT_HTTP_HEAD);
    hv->next = vh->all;
    if (vh->all)
        vh->all->prev = hv;
    vh->all = hv;
    if (uv_accept(l, (uv_stream_t *)&hv->tcp) != 0) {
        hv_close(hv);
        return;
    }
    uv_tcp_nodelay(&hv->tcp, 1);
    hv->born = hv->active = hv->head_start = uv_now(l->loop);
    r->stats.vhost_conns[vh->tls]++;
    if (vh->tls && (r->opts.tls == NULL || (hv->tls = cv_tls_new_server(r->opts.tls)) == NULL)) {
        hv_close(hv);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(hv->ip, sizeof hv->ip, "unknown");
    if (uv_tcp_getpeername(&hv->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, hv->ip, sizeof hv->ip);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, hv->ip, sizeof hv->ip);
        if (vh->rl) {
            uint8_t key[16];
            cv_ratelimit_key(&ss, key);
            uint64_t wait = cv_ratelimit_take(vh->rl, key, uv_now(l->loop));
            if (wait > 0 && hv->tls) {
                /* Before its TLS handshake a visitor cannot read an answer:
                 * close at once, the cheapest refusal. */
                cv_log_debug("vhost %s: too many connections, closed", hv->ip);
                count_answer(r, 429);
                hv_close(hv);
                return;
            }
            if (wait > 0) {
                /* Retry-After is not expressible through answer(): write it here. */
                char resp[256];
                static const char body[] = "too many connections from your address: slow down\n";
                int n = snprintf(resp, sizeof resp,
                                 "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
                                 "Retry-After: %llu\r\nContent-Length: %zu\r\nConnection: close"
                                 "\r\n\r\n%s",
                                 (unsigned long long)(wait + 999) / 1000, sizeof body - 1, body);
                hv->state = HV_DONE;
                count_answer(r, 429);
                if (write_out(hv, (const uint8_t *)resp, (size_t)n) < 0) {
                    hv_close(hv);
                    return;
                }
                hv->fin_pending = true;
                maybe_shutdown(hv);
                return;
            }
        }
    }
    uint64_t tick = r->opts.handshake_ms / 4;
    tick = tick < 250 ? 250 : tick > 5000 ? 5000 : tick;
    uv_timer_start(&hv->timer, on_tick, tick, tick);
    update_reading(hv);
}

static void free_data(uv_handle_t *h)
{
    free(h->data);
}

static int listen_on(struct cv_relay *r, const char *host, uint16_t port, bool tls,
                     struct vhost **out)
{
    const struct cv_relay_opts *o = &r->opts;
    struct sockaddr_storage ss;
    if (cv_addr_from(host, port, &ss) != 0)
        return CV_EINVAL;
    struct vhost *vh = calloc(1, sizeof *vh);
    if (vh == NULL)
        return CV_ENOMEM;
    vh->r = r;
    vh->tls = tls;
    if (relay_rate_renew(r, &vh->rl) != 0) {
        free(vh);
        return CV_ENOMEM;
    }
    int rc = cv_tcp_listen(r->loop, &vh->tcp, (struct sockaddr *)&ss, 1024, on_connection, &ss);
    vh->tcp.data = vh;
    if (rc != 0) {
        cv_ratelimit_free(vh->rl);
        uv_close((uv_handle_t *)&vh->tcp, free_data); /* tcp is not the first member */
        return rc;
    }
    vh->port = cv_addr_port((struct sockaddr *)&ss);
    *out = vh;
    cv_log_info("%s virtual hosts NAME.%s on %s:%u", tls ? "HTTPS" : "HTTP", o->domain, host,
                vh->port);
    return 0;
}

static void stop_one(struct cv_relay *r, struct vhost **slot);

int vhost_start(struct cv_relay *r)
{
    const struct cv_relay_opts *o = &r->opts;
    if (o->domain == NULL)
        return 0;
    if (o->https_host != NULL && o->tls == NULL)
        return CV_EINVAL; /* HTTPS needs certificates */
    int rc = 0;
    if (o->http_host != NULL &&
        (rc = listen_on(r, o->http_host, o->http_port, false, &r->vhost)) != 0)
        return rc;
    if (o->https_host != NULL &&
        (rc = listen_on(r, o->https_host, o->https_port, true, &r->vhost_tls)) != 0) {
        stop_one(r, &r->vhost);
        return rc;
    }
    return 0;
}

int vhost_set_limits(struct cv_relay *r)
{
    int rc = r->vhost ? relay_rate_renew(r, &r->vhost->rl) : 0;
    return rc != 0 || r->vhost_tls == NULL ? rc : relay_rate_renew(r, &r->vhost_tls->rl);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct vhost *vh = h->data;
    struct cv_relay *r = vh->r;
    free(vh);
    r->closing_handles--;
    relay_maybe_free(r);
}

static void stop_one(struct cv_relay *r, struct vhost **slot)
{
    struct vhost *vh = *slot;
    if (vh == NULL)
        return;
    while (vh->all)
        hv_abort(vh->all);
    cv_ratelimit_free(vh->rl);
    vh->rl = NULL;
    *slot = NULL;
    r->closing_handles++;
    uv_close((uv_handle_t *)&vh->tcp, on_listener_closed);
}

void vhost_stop(struct cv_relay *r)
{
    stop_one(r, &r->vhost);
    stop_one(r, &r->vhost_tls);
}

uint16_t cv_relay_http_port(const struct cv_relay *r)
{
    return r->vhost ? r->vhost->port : 0;
}

bool vhost_is_tls(const struct conn *c)
{
    return c->hv != NULL && c->hv->tls != NULL;
}

uint16_t cv_relay_https_port(const struct cv_relay *r)
{
    return r->vhost_tls ? r->vhost_tls->port : 0;
}
