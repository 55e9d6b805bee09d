/* Agent-declared public ports (docs/PROTOCOL.md §4): a TCP or UDP listener
 * on the relay per EXPOSE, held while the agent's tunnel lives. Each visitor
 * TCP connection, or each visitor UDP address, becomes a stream to the
 * agent.
 *
 * A visitor socket is read only while its stream has the agent's credit and
 * the agent's WebSocket is below its high mark; reads go straight from one
 * shared buffer into the WebSocket's send (one copy at most). Data from the
 * agent is written with uv_try_write first; the rest waits in the visitor's
 * buffer, bounded by the window the relay granted the agent, and credit is
 * returned as it is written. */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/kohaku.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/addr.h"
#include "relay/internal.h"

#define UDP_SWEEP_MS 5000

struct exposure {
    struct tunnel *t; /* borrowed: owner; gone before the handles close */
    struct cv_relay *r;
    struct exposure *next;
    uint32_t num;
    uint8_t proto;
    uint16_t local_port, public_port;
    union {
        uv_handle_t h;
        uv_tcp_t tcp;
        uv_udp_t udp;
    } l;
    uv_timer_t sweep;        /* UDP: idle flow expiry */
    int handles;             /* handles still to close before free */
    struct visitor *flows;   /* UDP: one per visitor address */
};

struct visitor {
    struct conn *c;          /* borrowed; NULL once the stream is gone */
    struct cv_relay *r;
    struct exposure *x;      /* UDP: the listener to send from */
    struct visitor *next;    /* UDP: in x->flows */
    struct tunnel *stalled_on; /* TCP: on this tunnel's stalled list */
    struct visitor *snext;
    struct visitor *spnext, **spprev; /* TCP: on r->spare (spprev != NULL) */
    /* TCP */
    uv_tcp_t tcp;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct cv_buf out, infl;
    bool writing, fin_pending, reading, closing;
    /* UDP */
    struct sockaddr_storage addr;
    uint64_t last;
};

static uint8_t rxbuf[CV_LIMIT_NATIVE_PAYLOAD];

/* ---- TCP visitors -------------------------------------------------------- */

static void on_visitor_closed(uv_handle_t *h)
{
    struct visitor *v = h->data;
    struct cv_relay *r = v->r;
    cv_buf_fini(&v->out);
    cv_buf_fini(&v->infl);
    free(v);
    r->closing_handles--;
    relay_maybe_free(r);
}

static void unstall(struct visitor *v)
{
    struct tunnel *t = v->stalled_on;
    if (t == NULL)
        return;
    for (struct visitor **pp = &t->stalled; *pp; pp = &(*pp)->snext) {
        if (*pp == v) {
            *pp = v->snext;
            break;
        }
    }
    v->stalled_on = NULL;
    v->snext = NULL;
}

/* ---- spare buffer storage ------------------------------------------------
 * A visitor's output buffers keep their storage between writes: a download
 * that pauses for a moment would otherwise free it and grow it again by
 * reallocs (copying what is queued) on every round. Storage an idle visitor
 * keeps is freed by the reaper timer SPARE_MS later. */

#define SPARE_MS 250

static void spare_del(struct visitor *v)
{
    if (v->spprev == NULL)
        return;
    *v->spprev = v->spnext;
    if (v->spnext)
        v->spnext->spprev = v->spprev;
    v->spnext = NULL;
    v->spprev = NULL;
}

static void spare_add(struct visitor *v)
{
    if (v->spprev != NULL || (v->infl.cap <= CV_BUF_KEEP && v->out.cap <= CV_BUF_KEEP))
        return;
    struct cv_relay *r = v->r;
    if (r->spare == NULL) {
        r->spare_since = uv_now(r->loop);
        reaper_start(r, SPARE_MS);
    }
    v->spnext = r->spare;
    if (r->spare)
        r->spare->spprev = &v->spnext;
    r->spare = v;
    v->spprev = &r->spare;
}

void visitors_trim(struct cv_relay *r)
{
    if (r->spare == NULL)
        return;
    uint64_t now = uv_now(r->loop);
    if (now - r->spare_since < SPARE_MS) {
        reaper_start(r, SPARE_MS - (now - r->spare_since));
        return;
    }
    while (r->spare) {
        struct visitor *v = r->spare;
        spare_del(v);
        if (!v->writing) { /* else it is busy again: kept, listed again when idle */
            cv_buf_trim(&v->infl);
            cv_buf_trim(&v->out);
        }
    }
}

static void visitor_close(struct visitor *v)
{
    if (v->closing)
        return;
    v->closing = true;
    spare_del(v);
    unstall(v);
    uv_close((uv_handle_t *)&v->tcp, on_visitor_closed);
}

static bool can_read(const struct visitor *v)
{
    const struct conn *c = v->c;
    return c && !c->dead && c->t && !c->fin_to_agent && c->a_tx.credit > 0 &&
           cv_ws_is_writable(c->t->ws);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct visitor *v = h->data;
    size_t n = sizeof rxbuf;
    if (v->c && v->c->a_tx.credit < n)
        n = v->c->a_tx.credit;
    *buf = uv_buf_init((char *)rxbuf, (unsigned)(n ? n : 1));
}

static void stall(struct visitor *v)
{
    uv_read_stop((uv_stream_t *)&v->tcp);
    v->reading = false;
    if (v->stalled_on || v->c == NULL || v->c->t == NULL)
        return;
    v->stalled_on = v->c->t;
    v->snext = v->c->t->stalled;
    v->c->t->stalled = v;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct visitor *v = s->data;
    struct conn *c = v->c;
    if (n == 0 || c == NULL || c->dead)
        return;
    if (n < 0) {
        uv_read_stop(s);
        v->reading = false;
        if (n == UV_EOF) {
            front_data(c, NULL, 0); /* FIN */
        } else {
            close_at_agent(c);
            conn_free(c);
        }
        return;
    }
    front_data(c, (const uint8_t *)buf->base, (size_t)n);
    if (!c->dead && !can_read(v))
        stall(v);
}

static void start_reading(struct visitor *v)
{
    if (v->reading || v->closing)
        return;
    if (uv_read_start((uv_stream_t *)&v->tcp, on_alloc, on_read) == 0)
        v->reading = true;
}

void visitors_resume(struct tunnel *t)
{
    struct visitor **pp = &t->stalled;
    while (*pp) {
        struct visitor *v = *pp;
        if (can_read(v)) {
            *pp = v->snext;
            v->stalled_on = NULL;
            v->snext = NULL;
            start_reading(v);
        } else {
            pp = &v->snext;
        }
    }
    if (t->hstalled)
        vhosts_resume(t);
}

static void flush_out(struct visitor *v);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    struct visitor *v = req->data;
    if (v->c == NULL)
        visitor_close(v);
}

static void maybe_shutdown(struct visitor *v)
{
    if (!v->fin_pending || v->writing || v->out.len > 0 || v->closing)
        return;
    v->fin_pending = false;
    v->sreq.data = v;
    if (uv_shutdown(&v->sreq, (uv_stream_t *)&v->tcp, on_shutdown) != 0 && v->c == NULL)
        visitor_close(v);
}

static void on_write(uv_write_t *req, int status)
{
    struct visitor *v = req->data;
    size_t n = v->infl.len;
    v->writing = false;
    cv_buf_drop(&v->infl, n); /* kept for the next round: see flush_out */
    if (v->closing)
        return;
    if (status < 0) {
        if (v->c) {
            close_at_agent(v->c);
            conn_free(v->c);
        }
        visitor_close(v);
        return;
    }
    if (v->c)
        front_consumed(v->c, n, v->out.len == 0);
    flush_out(v);
    if (v->c == NULL && !v->writing && v->out.len == 0 && !v->fin_pending)
        visitor_close(v);
}

static void flush_out(struct visitor *v)
{
    if (v->writing || v->out.len == 0 || v->closing) {
        if (!v->writing && !v->closing)
            spare_add(v);
        maybe_shutdown(v);
        return;
    }
    struct cv_buf t = v->infl;
    v->infl = v->out;
    v->out = t;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&v->infl), (unsigned)v->infl.len);
    v->wreq.data = v;
    if (uv_write(&v->wreq, (uv_stream_t *)&v->tcp, &b, 1, on_write) == 0)
        v->writing = true;
    else
        visitor_close(v);
}

static bool tcp_write(struct visitor *v, const uint8_t *p, size_t n)
{
    struct conn *c = v->c;
    if (n == 0) {
        v->fin_pending = true;
        maybe_shutdown(v);
        return true;
    }
    size_t done = 0;
    if (!v->writing && v->out.len == 0) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int w = uv_try_write((uv_stream_t *)&v->tcp, &b, 1);
        if (w > 0)
            done = (size_t)w;
        else if (w != UV_EAGAIN) {
            close_at_agent(c);
            conn_free(c);
            return false;
        }
    }
    if (done < n && cv_buf_append(&v->out, p + done, n - done) != 0) {
        conn_abort(c, "visitor buffer full");
        return false;
    }
    if (done)
        front_consumed(c, done, v->out.len == 0);
    flush_out(v);
    return true;
}

static void on_visitor(uv_stream_t *l, int status)
{
    struct exposure *x = l->data;
    struct tunnel *t = x->t;
    if (status < 0)
        return;
    struct visitor *v = calloc(1, sizeof *v);
    if (v == NULL)
        return;
    v->r = t->r;
    uv_tcp_init(l->loop, &v->tcp);
    v->tcp.data = v;
    t->r->closing_handles++; /* counted until its close callback */
    cv_buf_init(&v->out, CV_FLOW_WINDOW_MAX + 1024 * 1024);
    cv_buf_init(&v->infl, SIZE_MAX);
    if (uv_accept(l, (uv_stream_t *)&v->tcp) != 0 || t->conns.count >= CV_LIMIT_NATIVE_CONNS) {
        visitor_close(v);
        return;
    }
    uv_tcp_nodelay(&v->tcp, 1);
    struct conn *c = conn_new(t, FRONT_TCP, CV_KH_TCP);
    if (c == NULL) {
        visitor_close(v);
        return;
    }
    c->v = v;
    v->c = c;
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, CV_KH_CONNECT, CV_KH_TCP, c->tid, x->local_port);
    if (cv_ws_send(t->ws, CV_WS_BINARY, hdr, sizeof hdr) != 0) {
        conn_free(c);
        return;
    }
    if (can_read(v))
        start_reading(v);
    else
        stall(v);
}

void visitor_adopt(struct conn *c, int fd, const uint8_t *first, size_t n)
{
    struct cv_relay *r = c->r;
    struct visitor *v = calloc(1, sizeof *v);
    if (v == NULL) {
        close(fd);
        close_at_agent(c);
        conn_free(c);
        return;
    }
    v->r = r;
    uv_tcp_init(r->loop, &v->tcp);
    v->tcp.data = v;
    r->closing_handles++; /* counted until its close callback */
    cv_buf_init(&v->out, CV_FLOW_WINDOW_MAX + 1024 * 1024);
    cv_buf_init(&v->infl, SIZE_MAX);
    if (uv_tcp_open(&v->tcp, fd) != 0) {
        close(fd);
        close_at_agent(c);
        conn_free(c);
        visitor_close(v);
        return;
    }
    uv_tcp_nodelay(&v->tcp, 1);
    c->v = v;
    v->c = c;
    if (n > 0)
        front_data(c, first, n);
    if (c->dead)
        return; /* conn_free detached and closed v */
    if (can_read(v))
        start_reading(v);
    else
        stall(v);
}

/* ---- UDP visitors -------------------------------------------------------- */

static struct visitor *flow_find(struct exposure *x, const struct sockaddr *sa)
{
    socklen_t len = sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                             : sizeof(struct sockaddr_in6);
    for (struct visitor *v = x->flows; v; v = v->next)
        if (memcmp(&v->addr, sa, len) == 0)
            return v;
    return NULL;
}

static struct visitor *flow_new(struct exposure *x, const struct sockaddr *sa)
{
    struct tunnel *t = x->t;
    if (t->conns.count >= CV_LIMIT_NATIVE_CONNS)
        return NULL;
    struct visitor *v = calloc(1, sizeof *v);
    if (v == NULL)
        return NULL;
    struct conn *c = conn_new(t, FRONT_UDP, CV_KH_UDP);
    if (c == NULL) {
        free(v);
        return NULL;
    }
    v->r = t->r;
    v->x = x;
    memcpy(&v->addr, sa, sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6));
    v->c = c;
    c->v = v;
    v->next = x->flows;
    x->flows = v;
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, CV_KH_CONNECT, CV_KH_UDP, c->tid, x->local_port);
    cv_ws_send(t->ws, CV_WS_BINARY, hdr, sizeof hdr);
    return v;
}

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    static uint8_t dgram[CV_LIMIT_UDP_DGRAM];
    *buf = uv_buf_init((char *)dgram, sizeof dgram);
}

static void on_udp(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *sa,
                   unsigned flags)
{
    struct exposure *x = h->data;
    if (n < 0 || sa == NULL || (flags & UV_UDP_PARTIAL))
        return;
    struct visitor *v = flow_find(x, sa);
    if (v == NULL && (v = flow_new(x, sa)) == NULL)
        return;
    v->last = uv_now(h->loop);
    /* A datagram the agent's queue cannot take now is dropped (UDP). */
    if (v->c && cv_ws_is_writable(x->t->ws))
        front_data(v->c, (const uint8_t *)buf->base, (size_t)n);
}

static void on_sweep(uv_timer_t *tm)
{
    struct exposure *x = tm->data;
    uint64_t now = uv_now(tm->loop);
    struct visitor *v = x->flows;
    while (v) {
        struct visitor *next = v->next;
        if (now - v->last >= CV_LIMIT_UDP_IDLE_MS && v->c) {
            struct conn *c = v->c;
            close_at_agent(c);
            conn_free(c); /* detaches and frees v */
        }
        v = next;
    }
}

static bool udp_write(struct visitor *v, const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    v->last = uv_now(v->x->l.udp.loop);
    return uv_udp_try_send(&v->x->l.udp, &b, 1, (struct sockaddr *)&v->addr) >= 0;
}

/* ---- the hooks stream.c calls --------------------------------------------- */

bool visitor_write(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->kind == FRONT_HTTP)
        return vhost_write(c, p, n);
    struct visitor *v = c->v;
    if (v == NULL)
        return false;
    return c->kind == FRONT_TCP ? tcp_write(v, p, n) : udp_write(v, p, n);
}

void visitor_detach(struct conn *c)
{
    if (c->kind == FRONT_HTTP) {
        vhost_detach(c);
        return;
    }
    struct visitor *v = c->v;
    if (v == NULL)
        return;
    c->v = NULL;
    v->c = NULL;
    if (c->kind == FRONT_UDP) {
        for (struct visitor **pp = &v->x->flows; *pp; pp = &(*pp)->next) {
            if (*pp == v) {
                *pp = v->next;
                break;
            }
        }
        free(v);
        return;
    }
    unstall(v);
    uv_read_stop((uv_stream_t *)&v->tcp);
    /* Let what the agent sent reach the visitor, then close. */
    if (!v->writing && v->out.len == 0 && !v->fin_pending)
        visitor_close(v);
}

/* ---- exposures ------------------------------------------------------------- */

static void expose_reply(struct tunnel *t, uint8_t proto, uint32_t num, uint16_t port,
                         const char *reason)
{
    uint8_t hdr[CV_KH_HDR_LEN];
    if (reason)
        t->r->stats.expose_refusals++;
    cv_kh_encode(hdr, CV_KH_EXPOSED, proto, num, port);
    cv_ws_send2(t->ws, CV_WS_BINARY, hdr, sizeof hdr, reason, reason ? strlen(reason) : 0);
}

void exposures_each(struct tunnel *t,
                    void (*fn)(void *ud, uint8_t proto, uint16_t local_port, uint16_t public_port),
                    void *ud)
{
    for (struct exposure *x = t->exposures; x; x = x->next)
        fn(ud, x->proto, x->local_port, x->public_port);
}

static void on_exposure_closed(uv_handle_t *h)
{
    struct exposure *x = h->data;
    struct cv_relay *r = x->r;
    if (--x->handles > 0)
        return;
    free(x);
    r->closing_handles--;
    relay_maybe_free(r);
}

/* A bound (and for TCP listening) socket on public_bind:port, or -errno.
 * Plain syscalls, so that trying several ports leaves no libuv handle to
 * close for each failure. */
static int open_bound(const struct cv_relay *r, int type, uint16_t port)
{
    struct sockaddr_storage ss;
    if (cv_addr_from(r->opts.public_bind, port, &ss) != 0)
        return CV_EINVAL;
    socklen_t len = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                            : sizeof(struct sockaddr_in6);
    int fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (type == SOCK_STREAM)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 ||
        (type == SOCK_STREAM && listen(fd, 1024) != 0)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static int start_listener(struct exposure *x, int fd)
{
    struct cv_relay *r = x->t->r;
    int rc;
    if (x->proto == CV_KH_TCP) {
        uv_tcp_init(r->loop, &x->l.tcp);
        rc = uv_tcp_open(&x->l.tcp, fd);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&x->l.tcp, 1024, on_visitor);
    } else {
        uv_udp_init(r->loop, &x->l.udp);
        rc = uv_udp_open(&x->l.udp, fd);
        if (rc == 0)
            rc = uv_udp_recv_start(&x->l.udp, on_udp_alloc, on_udp);
        uv_timer_init(r->loop, &x->sweep);
        x->sweep.data = x;
        x->handles++;
    }
    x->l.h.data = x;
    x->handles++;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, (socklen_t *)&len) == 0)
        x->public_port = cv_addr_port((struct sockaddr *)&ss);
    return rc;
}

static void close_listener(struct exposure *x)
{
    struct cv_relay *r = x->r;
    r->closing_handles++;
    uv_close(&x->l.h, on_exposure_closed);
    if (x->proto == CV_KH_UDP)
        uv_close((uv_handle_t *)&x->sweep, on_exposure_closed);
}

/* Binds PUBLIC (or, for 0, the first free port of the allowed range; with
 * no range, any free port). Returns a socket or -errno / CV_EINVAL. */
static int bind_allowed(struct exposure *x, uint16_t want, const char **why)
{
    const struct cv_relay_opts *o = &x->t->r->opts;
    uint16_t lo = o->allow_lo, hi = o->allow_hi;
    bool ranged = !(lo == 0 && hi == 0);
    int type = x->proto == CV_KH_TCP ? SOCK_STREAM : SOCK_DGRAM;
    *why = "port not allowed";
    if (want != 0 && ranged && (want < lo || want > hi))
        return CV_EINVAL;
    uint32_t first = want ? want : (ranged ? lo : 0), last = want ? want : (ranged ? hi : 0);
    int fd = CV_EINVAL;
    for (uint32_t p = first; p <= last && p - first <= 4096; p++) {
        fd = open_bound(x->t->r, type, (uint16_t)p);
        if (fd >= 0)
            return fd;
    }
    *why = fd == -EADDRINUSE ? "port in use" : cv_strerror(fd);
    return fd;
}

void exposure_request(struct tunnel *t, const struct cv_kh_msg *m)
{
    if (m->proto == CV_KH_HTTP || m->proto == CV_KH_TLS) {
        named_request(t, m);
        return;
    }
    uint16_t local = m->len == 2 ? (uint16_t)(m->payload[0] << 8 | m->payload[1]) : 0;
    if (local == 0) {
        expose_reply(t, m->proto, m->id, 0, "malformed EXPOSE");
        return;
    }
    for (struct exposure *e = t->exposures; e; e = e->next) {
        if (e->num == m->id) {
            expose_reply(t, m->proto, m->id, 0, "duplicate exposure number");
            return;
        }
    }
    struct exposure *x = calloc(1, sizeof *x);
    if (x == NULL) {
        expose_reply(t, m->proto, m->id, 0, "out of memory");
        return;
    }
    x->t = t;
    x->r = t->r;
    x->num = m->id;
    x->proto = m->proto;
    x->local_port = local;
    const char *why;
    int fd = bind_allowed(x, m->port, &why);
    if (fd < 0) {
        cv_log_warn("agent %s: expose %s:%u on port %u refused: %s", t->id,
                    m->proto == CV_KH_UDP ? "udp" : "tcp", local, m->port, why);
        expose_reply(t, m->proto, m->id, 0, why);
        free(x);
        return;
    }
    if (start_listener(x, fd) != 0) {
        expose_reply(t, m->proto, m->id, 0, "cannot listen");
        close_listener(x);
        return;
    }
    if (x->proto == CV_KH_UDP)
        uv_timer_start(&x->sweep, on_sweep, UDP_SWEEP_MS, UDP_SWEEP_MS);
    x->next = t->exposures;
    t->exposures = x;
    cv_log_info("agent %s: exposes %s %s:%u -> its 127.0.0.1:%u", t->id,
                x->proto == CV_KH_UDP ? "udp" : "tcp", t->r->opts.public_bind, x->public_port,
                local);
    expose_reply(t, x->proto, x->num, x->public_port, NULL);
}

void exposure_release(struct tunnel *t, uint32_t num)
{
    struct exposure **pp = &t->exposures;
    while (*pp && (*pp)->num != num)
        pp = &(*pp)->next;
    struct exposure *x = *pp;
    if (x == NULL) {
        name_release(t, num); /* a named one, or already gone: nothing to do */
        return;
    }
    *pp = x->next;
    cv_log_info("agent %s: releases %s port %u", t->id, x->proto == CV_KH_UDP ? "udp" : "tcp",
                x->public_port);
    /* TCP visitors already connected keep their streams; UDP flows send
     * from the listener's socket, so they end with it. */
    while (x->flows) {
        struct visitor *v = x->flows;
        close_at_agent(v->c);
        conn_free(v->c); /* detaches v: removed from x->flows and freed */
    }
    close_listener(x);
}

void exposures_close(struct tunnel *t)
{
    while (t->exposures) {
        struct exposure *x = t->exposures;
        t->exposures = x->next;
        cv_log_info("agent %s: releases %s port %u", t->id, x->proto == CV_KH_UDP ? "udp" : "tcp",
                    x->public_port);
        close_listener(x);
    }
}
