#include "forward/forward.h"

#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/kohaku.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/ws.h"
#include "tunnel/local.h"

#define MSG_MAX 512
/* A local half-close waits this long for the reverse direction to go quiet
 * before CLOSE is sent (the protocol has no half-close; see local.h). */
#define EOF_QUIET_MS 1000

struct cv_forward {
    uv_loop_t *loop;        /* borrowed */
    char *url;              /* owned */
    char *host;             /* owned: local host as given */
    struct cv_forward_opts o; /* string fields unused after start */
    struct cv_local *local; /* owned */
    struct cv_ws *ws;       /* owned by the ws layer until its on_close */
    uv_timer_t timer;       /* start, then the CONNECTED deadline */
    uv_tcp_t server;
    bool has_server;
    bool hello_done;
    bool native;            /* the session negotiated culvert.v1 */
    bool stopping;
    bool finished;
    int nhandles;
    int status;
    char msg[MSG_MAX];
    cv_forward_ready_cb ready;
    cv_forward_done_cb done;
    void *data;
};

int cv_forward_url(const struct cv_forward_opts *o, char *buf, size_t len)
{
    size_t n = strlen(o->relay_url);
    while (n > 0 && o->relay_url[n - 1] == '/')
        n--;
    int w = snprintf(buf, len, "%.*s/ws/forward/%s/%u?proto=%s", (int)n, o->relay_url,
                     o->container_id, o->remote_port, o->proto == CV_KH_UDP ? "udp" : "tcp");
    if (w < 0 || (size_t)w >= len)
        return CV_ETOOBIG;
    return 0;
}

/* ---- ending -------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct cv_forward *f = h->data;
    if (--f->nhandles > 0)
        return;
    if (f->done != NULL)
        f->done(f, f->status, f->msg, f->data);
    free(f->url);
    free(f->host);
    free(f);
}

/* Everything network-side is gone: close the local side and the handles. */
static void finish(struct cv_forward *f)
{
    if (f->finished)
        return;
    f->finished = true;
    cv_local_free(f->local);
    f->local = NULL;
    if (f->has_server)
        uv_close((uv_handle_t *)&f->server, on_handle_closed);
    uv_close((uv_handle_t *)&f->timer, on_handle_closed);
}

/* Ends the forward with an error line for the user. */
static void fail(struct cv_forward *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct cv_forward *f, const char *fmt, ...)
{
    if (f->stopping)
        return;
    f->stopping = true;
    f->status = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    uv_timer_stop(&f->timer);
    if (f->ws != NULL)
        cv_ws_close(f->ws, CV_WS_NORMAL, ""); /* on_close finishes */
    else
        finish(f);
}

/* ---- local listener ------------------------------------------------------ */

static void on_connection(uv_stream_t *server, int status)
{
    struct cv_forward *f = server->data;
    if (status < 0) {
        cv_log_warn("forward: accept: %s", uv_strerror(status));
        return;
    }
    int rc = cv_local_tcp_accept(f->local, server);
    if (rc == CV_ETOOBIG)
        cv_log_warn("forward: %zu connections open: connection refused", cv_local_count(f->local));
    else if (rc < 0)
        cv_log_warn("forward: accept: %s", cv_strerror(rc));
}

static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    if (cv_addr_from(host, port, ss) == 0)
        return 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_flags = AI_PASSIVE}, *res;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return CV_EINVAL;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    ((struct sockaddr_in *)ss)->sin_port = htons(port); /* same offset in v6 */
    freeaddrinfo(res);
    return 0;
}

static int listen_tcp(struct cv_forward *f, const struct sockaddr *sa,
                      struct sockaddr_storage *bound)
{
    int rc = cv_tcp_listen(f->loop, &f->server, sa, 511, on_connection, bound);
    f->server.data = f;
    f->has_server = true; /* closed with the session, on failure too */
    f->nhandles++;
    return rc;
}

static void start_listening(struct cv_forward *f)
{
    struct sockaddr_storage sa, bound;
    const char *host = f->host ? f->host : "127.0.0.1";
    if (resolve(host, f->o.local_port, &sa) < 0) {
        fail(f, "Error: cannot resolve local host '%s'", host);
        return;
    }
    int rc = f->o.proto == CV_KH_UDP
                 ? cv_local_udp_listen(f->local, (struct sockaddr *)&sa, &bound)
                 : listen_tcp(f, (struct sockaddr *)&sa, &bound);
    if (rc < 0) {
        char a[CV_ADDR_STRLEN];
        fail(f, "Error: cannot listen on %s: %s", cv_addr_str((struct sockaddr *)&sa, a, sizeof a),
             cv_strerror(rc));
        return;
    }
    if (f->ready != NULL)
        f->ready(f, (struct sockaddr *)&bound, f->data);
}

/* ---- the session --------------------------------------------------------- */

static void handle_hello(struct cv_forward *f, uint8_t opcode, const uint8_t *p, size_t n)
{
    if (opcode == CV_WS_TEXT && n == 9 && memcmp(p, "CONNECTED", 9) == 0) {
        f->hello_done = true;
        f->native = cv_ws_subprotocol(f->ws) != NULL;
        uv_timer_stop(&f->timer);
        cv_local_set_ws(f->local, f->ws);
        start_listening(f);
        return;
    }
    if (opcode == CV_WS_TEXT && n >= 6 && memcmp(p, "Error:", 6) == 0) {
        fail(f, "%.*s", (int)(n < MSG_MAX - 1 ? n : MSG_MAX - 1), (const char *)p);
        return;
    }
    fail(f, "Error: unexpected first message from the relay (%s, %zu bytes)",
         opcode == CV_WS_TEXT ? "text" : "binary", n);
}

static void handle_error(struct cv_lconn *c, const struct cv_kh_msg *m)
{
    int n = m->len > 200 ? 200 : (int)m->len;
    cv_log_warn("forward: connection %u: %.*s", m->id, n, (const char *)m->payload);
    cv_local_peer_error(c);
}

static void on_msg(struct cv_ws *ws, uint8_t opcode, uint8_t *p, size_t n)
{
    struct cv_forward *f = cv_ws_data(ws);
    if (f->stopping)
        return;
    if (!f->hello_done) {
        handle_hello(f, opcode, p, n);
        return;
    }
    struct cv_kh_msg m;
    int rc = f->native ? cv_kh_decode_native(p, n, &m) : cv_kh_decode(p, n, &m);
    if (opcode != CV_WS_BINARY || rc < 0) {
        cv_log_debug("forward: ignoring a %s message of %zu bytes",
                     opcode == CV_WS_BINARY ? "malformed" : "text", n);
        return;
    }
    struct cv_lconn *c = cv_local_find(f->local, m.id);
    if (c == NULL)
        return;
    switch (m.type) {
    case CV_KH_DATA:
        cv_local_write(c, m.payload, m.len);
        break;
    case CV_KH_CLOSE:
        cv_local_peer_close(c);
        break;
    case CV_KH_ERROR:
        handle_error(c, &m);
        break;
    case CV_KH_WINDOW:
        cv_local_window_msg(c, m.payload, m.len);
        break;
    default: /* CONNECTED and the rest: nothing to do */
        break;
    }
}

static void on_hello_timeout(uv_timer_t *t)
{
    fail(t->data, "Error: the relay did not answer CONNECTED within %d s",
         CV_LIMIT_FORWARD_HELLO_MS / 1000);
}

static void on_open(struct cv_ws *ws, int status)
{
    struct cv_forward *f = cv_ws_data(ws);
    if (status < 0 || f->stopping)
        return;
    uv_timer_start(&f->timer, on_hello_timeout, CV_LIMIT_FORWARD_HELLO_MS, 0);
}

static void on_drain(struct cv_ws *ws)
{
    struct cv_forward *f = cv_ws_data(ws);
    if (f->local != NULL)
        cv_local_resume(f->local);
}

static void on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct cv_forward *f = cv_ws_data(ws);
    f->ws = NULL;
    cv_local_set_ws(f->local, NULL);
    cv_local_close_all(f->local);
    if (!f->stopping) {
        f->stopping = true;
        f->status = 1;
        if (f->hello_done)
            snprintf(f->msg, sizeof f->msg, "Error: relay connection closed (%u %s)", code,
                     reason);
        else
            snprintf(f->msg, sizeof f->msg, "Error: cannot connect to %s: %s", f->url, reason);
    }
    finish(f);
}

static void on_start(uv_timer_t *t)
{
    struct cv_forward *f = t->data;
    struct cv_ws_opts wo;
    cv_ws_opts_default(&wo);
    wo.max_msg = CV_LIMIT_WS_MSG_CLIENT;
    wo.ping_interval_ms = CV_LIMIT_AGENT_IDLE_PING_MS;
    wo.pong_timeout_ms = CV_LIMIT_AGENT_SILENT_MS - CV_LIMIT_AGENT_IDLE_PING_MS;
    wo.subprotocol = f->o.native ? "culvert.v1" : NULL;
    wo.bearer = f->o.token;
    static const struct cv_ws_cbs cbs = {
        .on_open = on_open, .on_msg = on_msg, .on_close = on_close, .on_drain = on_drain};
    int rc = cv_ws_connect(f->loop, f->url, &wo, &cbs, f, &f->ws);
    if (rc < 0) {
        f->ws = NULL;
        fail(f, "Error: cannot connect to %s: %s", f->url,
             rc == CV_EINVAL ? "invalid URL (only ws:// is supported)" : cv_strerror(rc));
    }
}

/* ---- public -------------------------------------------------------------- */

/* Forward pauses its WebSocket only when a local socket has 3/4 of its cap
 * queued: a pause makes the relay queue the session's data instead, for
 * every connection of the session, and the relay must not push back on the
 * agent (issue 2), so the local queue is the better place for a burst. */
static size_t press_high(size_t pending_max)
{
    if (pending_max == 0)
        pending_max = CV_LIMIT_CONN_PENDING;
    return pending_max / 4 * 3;
}

int cv_forward_start(uv_loop_t *loop, const struct cv_forward_opts *opts,
                     cv_forward_ready_cb ready, cv_forward_done_cb done, void *data,
                     struct cv_forward **out)
{
    if (opts->relay_url == NULL || opts->container_id == NULL)
        return CV_EINVAL;
    struct cv_forward *f = calloc(1, sizeof *f);
    if (f == NULL)
        return CV_ENOMEM;
    size_t len = strlen(opts->relay_url) + strlen(opts->container_id) + 48;
    f->url = malloc(len);
    f->host = opts->local_host ? strdup(opts->local_host) : NULL;
    struct cv_local_opts lo = {.conn_pending_max = opts->conn_pending_max,
                               .udp_idle_ms = CV_LIMIT_UDP_IDLE_MS,
                               .eof_quiet_ms = EOF_QUIET_MS,
                               .press_high = press_high(opts->conn_pending_max),
                               .connect_port = opts->remote_port,
                               .name = "forward"};
    if (f->url == NULL || (opts->local_host && f->host == NULL) ||
        cv_local_new(loop, &lo, &f->local) < 0) {
        free(f->url);
        free(f->host);
        free(f);
        return CV_ENOMEM;
    }
    cv_forward_url(opts, f->url, len);
    f->loop = loop;
    f->o = *opts;
    f->o.relay_url = f->o.container_id = f->o.local_host = NULL;
    f->ready = ready;
    f->done = done;
    f->data = data;
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    f->nhandles = 1;
    uv_timer_start(&f->timer, on_start, 0, 0);
    *out = f;
    return 0;
}

void cv_forward_stop(struct cv_forward *f)
{
    if (f == NULL || f->stopping)
        return;
    f->stopping = true;
    f->status = 0;
    f->msg[0] = '\0';
    uv_timer_stop(&f->timer);
    if (f->ws != NULL)
        cv_ws_close(f->ws, CV_WS_NORMAL, "");
    else
        finish(f);
}
