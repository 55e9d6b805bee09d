/* The relay's SNI router (--tls-listen HOST:PORT): TLS passed through,
 * untouched, to the agent that claimed the name (`--expose tls:LOCAL:NAME`,
 * docs/PROTOCOL.md §6). The relay never terminates these connections: it
 * reads the ClientHello, takes the server name from it (codec/sni.c), finds
 * the `tls` exposure NAME for NAME.BASE (or a bare NAME), opens a stream to
 * that agent's local port and hands the socket to a public-port visitor
 * (public.c) with the bytes already read, so the client and the agent's
 * service do the TLS handshake end to end and the service's certificate
 * reaches the client unchanged.
 *
 * A name nobody claimed gets a fatal unrecognized_name alert, a name whose
 * agent left (or cannot take another stream) an internal_error alert; both
 * are logged with the name. Connections that send no whole ClientHello
 * within the handshake deadline, or send something else, are closed, and
 * so are those over the per-address connection rate (--conn-rate), at
 * once, before anything is read or routed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "codec/kohaku.h"
#include "codec/sni.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "core/ratelimit.h"
#include "net/addr.h"
#include "relay/internal.h"

/* A ClientHello in a few records: its limit plus record headers. */
#define HELLO_BUF (CV_SNI_MAX_HELLO + 5 * 8)
/* TLS alert descriptions (RFC 8446 §6). */
#define ALERT_INTERNAL_ERROR 80
#define ALERT_UNRECOGNIZED_NAME 112

struct hello {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct tlsfront *f; /* borrowed */
    struct hello *next, *prev;
    int refs;
    bool closing;
    size_t len;
    char peer[CV_ADDR_STRLEN];
    uint8_t buf[HELLO_BUF];
};

struct tlsfront {
    uv_tcp_t listener;
    struct cv_relay *r;
    struct hello *pending;
    struct cv_ratelimit *rl; /* owned; NULL: no per-address limit */
};

/* True if the connection from ss is over the per-address rate. */
static bool over_rate(struct tlsfront *f, const struct sockaddr_storage *ss, uint64_t now)
{
    if (f->rl == NULL)
        return false;
    uint8_t key[16];
    cv_ratelimit_key(ss, key);
    return cv_ratelimit_take(f->rl, key, now) > 0;
}

static void on_hello_closed(uv_handle_t *h)
{
    struct hello *c = h->data;
    if (--c->refs > 0)
        return;
    struct cv_relay *r = c->f->r;
    free(c);
    r->closing_handles--;
    relay_maybe_free(r);
}

static void hello_close(struct hello *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->f->pending = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, on_hello_closed);
    uv_close((uv_handle_t *)&c->timer, on_hello_closed);
}

/* A fatal alert in a TLS 1.2-framed record, then close: the client's TLS
 * library turns it into a readable error ("unrecognized name"). */
static void refuse(struct hello *c, uint8_t alert)
{
    uint8_t rec[7] = {21, 3, 3, 0, 2, 2, alert};
    uv_buf_t b = uv_buf_init((char *)rec, sizeof rec);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    hello_close(c);
}

/* NAME from NAME.BASE (case already folded by the parser), or the name
 * itself when it is one label. Returns its length, 0 if it is neither. */
static size_t label_of(const struct cv_relay *r, const char *name, size_t len)
{
    const char *base = r->opts.domain;
    size_t bl = base ? strlen(base) : 0;
    size_t n = len;
    if (bl > 0 && len > bl + 1 && name[len - bl - 1] == '.' &&
        strncasecmp(name + len - bl, base, bl) == 0)
        n = len - bl - 1;
    return memchr(name, '.', n) == NULL ? n : 0;
}

static void route(struct hello *c, const char *name, size_t len)
{
    struct cv_relay *r = c->f->r;
    size_t ll = len ? label_of(r, name, len) : 0;
    struct named *n = ll ? relay_find_name(r, CV_KH_TLS, name, ll) : NULL;
    if (n == NULL) {
        cv_log_info("tls: %s asked for %s: no tls exposure by that name", c->peer,
                    len ? name : "(no server name)");
        refuse(c, ALERT_UNRECOGNIZED_NAME);
        return;
    }
    struct conn *s = n->t ? named_connect(n, FRONT_TCP) : NULL;
    if (s == NULL) {
        cv_log_info("tls: %s asked for %s: agent %s %s", c->peer, name, n->agent,
                    n->t ? "cannot take another stream" : "is gone");
        refuse(c, ALERT_INTERNAL_ERROR);
        return;
    }
    /* The socket moves to a public-port visitor: a libuv handle cannot
     * change owners, its descriptor can. */
    uv_os_fd_t fd;
    int nfd = uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 ? dup(fd) : -1;
    if (nfd < 0) {
        close_at_agent(s);
        conn_free(s);
        hello_close(c);
        return;
    }
    cv_log_debug("tls: %s -> %s (agent %s, port %u)", c->peer, name, n->agent, n->local_port);
    uv_read_stop((uv_stream_t *)&c->tcp);
    visitor_adopt(s, nfd, c->buf, c->len);
    hello_close(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct hello *c = h->data;
    *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(sizeof c->buf - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct hello *c = s->data;
    if (n == 0 || c->closing)
        return;
    if (n < 0) {
        hello_close(c);
        return;
    }
    c->len += (size_t)n;
    char name[CV_SNI_NAME_MAX + 1];
    size_t len;
    int rc = cv_sni_parse(c->buf, c->len, name, &len);
    if (rc == CV_EAGAIN && c->len < sizeof c->buf)
        return;
    if (rc != 0) {
        cv_log_debug("tls: %s: not a TLS ClientHello (%s)", c->peer, cv_strerror(rc));
        hello_close(c);
        return;
    }
    route(c, name, len);
}

static void on_deadline(uv_timer_t *t)
{
    struct hello *c = t->data;
    cv_log_debug("tls: %s: no ClientHello in time", c->peer);
    hello_close(c);
}

static void on_connection(uv_stream_t *l, int status)
{
    struct tlsfront *f = l->data;
    if (status < 0)
        return;
    struct hello *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->f = f;
    c->refs = 2;
    uv_tcp_init(l->loop, &c->tcp);
    uv_timer_init(l->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    f->r->closing_handles++; /* until both handles are closed */
    c->next = f->pending;
    if (f->pending)
        f->pending->prev = c;
    f->pending = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        hello_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        cv_addr_str((struct sockaddr *)&ss, c->peer, sizeof c->peer);
        if (over_rate(f, &ss, uv_now(l->loop))) {
            /* Nothing a TLS client could read fits here: close. */
            cv_log_debug("tls: %s: too many connections, closed", c->peer);
            f->r->stats.sni_rate_limited++;
            hello_close(c);
            return;
        }
    }
    uint64_t ms = f->r->opts.handshake_ms ? f->r->opts.handshake_ms : CV_LIMIT_HANDSHAKE_MS;
    uv_timer_start(&c->timer, on_deadline, ms, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct tlsfront *f = h->data;
    struct cv_relay *r = f->r;
    free(f);
    r->closing_handles--;
    relay_maybe_free(r);
}

int tlsfront_set_limits(struct cv_relay *r, struct tlsfront *f)
{
    return f == NULL ? 0 : relay_rate_renew(r, &f->rl);
}

int tlsfront_start(struct cv_relay *r)
{
    if (r->opts.tls_listen_host == NULL)
        return 0;
    struct sockaddr_storage ss;
    if (cv_addr_from(r->opts.tls_listen_host, r->opts.tls_listen_port, &ss) != 0)
        return CV_EINVAL;
    struct tlsfront *f = calloc(1, sizeof *f);
    if (f == NULL)
        return CV_ENOMEM;
    f->r = r;
    if (tlsfront_set_limits(r, f) != 0) {
        free(f);
        return CV_ENOMEM;
    }
    int rc = cv_tcp_listen(r->loop, &f->listener, (struct sockaddr *)&ss, 1024, on_connection, &ss);
    f->listener.data = f;
    r->closing_handles++;
    if (rc != 0) {
        cv_ratelimit_free(f->rl);
        uv_close((uv_handle_t *)&f->listener, on_listener_closed);
        return rc;
    }
    r->tls_front_port = cv_addr_port((struct sockaddr *)&ss);
    r->tlsfront = f;
    return 0;
}

void tlsfront_stop(struct cv_relay *r)
{
    struct tlsfront *f = r->tlsfront;
    if (f == NULL)
        return;
    r->tlsfront = NULL;
    while (f->pending)
        hello_close(f->pending);
    cv_ratelimit_free(f->rl);
    f->rl = NULL;
    uv_close((uv_handle_t *)&f->listener, on_listener_closed);
}
