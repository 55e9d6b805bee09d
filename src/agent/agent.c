#include "agent/agent.h"
#include "agent/internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/kohaku.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "codec/url.h"
#include "net/ws.h"
#include "tunnel/local.h"


static void attempt_connect(struct cv_agent *a);

/* Copies url with the token of a /t/TOKEN/ path prefix replaced by "***":
 * credentials never reach a log. Returns a malloc'd string or NULL. */
static char *mask_token(const char *url)
{
    char *out = strdup(url);
    if (out == NULL)
        return NULL;
    char *t = strstr(out, "/t/");
    char *end = t ? strchr(t + 3, '/') : NULL;
    if (end != NULL && end - (t + 3) >= 3) {
        memcpy(t + 3, "***", 3);
        memmove(t + 6, end, strlen(end) + 1);
    }
    return out;
}

void cv_agent_opts_default(struct cv_agent_opts *o)
{
    memset(o, 0, sizeof *o);
    o->reconnect_delay_ms = 5000;
    o->native = true;
}

int cv_agent_url(const char *runner_url, const char *container_id, char *buf, size_t len)
{
    size_t n = strlen(runner_url);
    while (n > 0 && runner_url[n - 1] == '/')
        n--;
    int w = snprintf(buf, len, "%.*s/ws/tunnel/%s", (int)n, runner_url, container_id);
    if (w < 0 || (size_t)w >= len)
        return CV_ETOOBIG;
    return 0;
}

/* ---- messages from the relay ------------------------------------------- */

static const char *proto_name(uint8_t proto)
{
    static const char *const protos[] = {"tcp", "udp", "http", "tls"};
    return protos[proto & 3];
}

static void on_exposed(struct cv_agent *a, const struct cv_kh_msg *m)
{
    struct agent_exposure *st = NULL;
    for (size_t i = 0; i < a->nxs && st == NULL; i++)
        if (a->xs[i].num == m->id)
            st = &a->xs[i];
    if (st == NULL)
        return; /* released since: the relay's answer crossed our UNEXPOSE */
    const struct cv_agent_expose *x = &st->e;
    const char *proto = proto_name(x->proto);
    if (m->port == 0) {
        int n = m->len > 200 ? 200 : (int)m->len;
        if (x->name)
            cv_log_warn("expose %s:%u:%s refused by the relay: %.*s", proto, x->local_port,
                        x->name, n, (const char *)m->payload);
        else
            cv_log_warn("expose %s:%u refused by the relay: %.*s", proto, x->local_port, n,
                        (const char *)m->payload);
        st->state = AGENT_X_REFUSED;
        st->public_port = 0;
        snprintf(st->reason, sizeof st->reason, "%.*s", n, (const char *)m->payload);
        return;
    }
    st->state = AGENT_X_EXPOSED;
    st->public_port = m->port;
    st->reason[0] = 0;
    if (x->name) {
        /* The payload is where visitors reach it (a URL, or NAME.BASE:PORT). */
        int n = m->len >= sizeof st->url ? (int)sizeof st->url - 1 : (int)m->len;
        snprintf(st->url, sizeof st->url, "%.*s", n, (const char *)m->payload);
        for (char *c = st->url; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
        cv_log_info("exposed %s 127.0.0.1:%u at %s", proto, x->local_port, st->url);
        return;
    }
    cv_log_info("exposed %s 127.0.0.1:%u at %s:%u", proto, x->local_port, a->relay_host, m->port);
}

static void send_expose(struct cv_agent *a, struct agent_exposure *st);

static void send_exposes(struct cv_agent *a)
{
    for (size_t i = 0; i < a->nxs; i++)
        send_expose(a, &a->xs[i]);
}

static void send_expose(struct cv_agent *a, struct agent_exposure *st)
{
    const struct cv_agent_expose *x = &st->e;
    st->state = AGENT_X_PENDING;
    /* u16 BE local port, then (named kinds) the name (§6). */
    uint8_t p[2 + CV_KH_NAME_MAX];
    size_t n = x->name ? strlen(x->name) : 0;
    if (n > CV_KH_NAME_MAX)
        n = CV_KH_NAME_MAX;
    p[0] = (uint8_t)(x->local_port >> 8);
    p[1] = (uint8_t)x->local_port;
    memcpy(p + 2, x->name ? x->name : "", n);
    cv_tunnel_send(a->ws, CV_KH_EXPOSE, x->proto, st->num, x->public_port, p, 2 + n);
}

static bool same_expose(const struct cv_agent_expose *x, const struct cv_agent_expose *y)
{
    return x->proto == y->proto && x->local_port == y->local_port &&
           x->public_port == y->public_port &&
           strcmp(x->name ? x->name : "", y->name ? y->name : "") == 0;
}

/* The exposure's name points into its own storage (the caller's string
 * may go away on reload). */
static void own_name(struct agent_exposure *st)
{
    if (st->e.name) {
        snprintf(st->name, sizeof st->name, "%s", st->e.name);
        st->e.name = st->name;
    }
}

void cv_agent_set_token(struct cv_agent *a, const char *token)
{
    a->o.token = token;
}

int cv_agent_set_exposures(struct cv_agent *a, const struct cv_agent_expose *x, size_t n)
{
    if (n > 0 && !a->o.native)
        return CV_EINVAL;
    struct agent_exposure *nx = calloc(n ? n : 1, sizeof *nx);
    if (nx == NULL)
        return CV_ENOMEM;
    bool live = a->established && a->native && a->ws != NULL;
    /* Kept exposures keep their number and state: their port is not
     * touched, nor the visitors connected through it. */
    for (size_t i = 0; i < n; i++) {
        nx[i].e = x[i];
        nx[i].num = 0;
        for (size_t j = 0; j < a->nxs; j++) {
            if (a->xs[j].num != 0 && same_expose(&a->xs[j].e, &x[i])) {
                nx[i] = a->xs[j];
                a->xs[j].num = 0; /* taken */
                break;
            }
        }
        own_name(&nx[i]);
    }
    for (size_t j = 0; j < a->nxs; j++) {
        if (a->xs[j].num == 0)
            continue;
        cv_log_info("unexpose %s:%u%s%s", proto_name(a->xs[j].e.proto), a->xs[j].e.local_port,
                    a->xs[j].e.name ? ":" : "", a->xs[j].e.name ? a->xs[j].e.name : "");
        if (live)
            cv_tunnel_send(a->ws, CV_KH_UNEXPOSE, a->xs[j].e.proto, a->xs[j].num, 0, NULL, 0);
    }
    free(a->xs);
    a->xs = nx;
    a->nxs = n;
    for (size_t i = 0; i < n; i++) {
        if (nx[i].num != 0)
            continue;
        nx[i].num = a->next_num++;
        if (live)
            send_expose(a, &nx[i]);
    }
    return 0;
}

static void send_error(struct cv_agent *a, uint8_t proto, uint32_t id, const char *text)
{
    cv_log_debug("agent: id %u: ERROR %s", id, text);
    cv_tunnel_send(a->ws, CV_KH_ERROR, proto, id, 0, text, strlen(text));
}

static void handle_connect(struct cv_agent *a, const struct cv_kh_msg *m)
{
    if (cv_local_find(a->local, m->id) != NULL) {
        send_error(a, m->proto, m->id, "Duplicate client id"); /* spec §11.13 */
        return;
    }
    size_t cap = a->native ? CV_LIMIT_NATIVE_CONNS : CV_LIMIT_TUNNEL_CONNS;
    if (cv_local_count(a->local) >= cap) {
        a->stats.stream_refusals++;
        cv_log_warn("agent: %zu connections open: refusing id %u", cap, m->id);
        send_error(a, m->proto, m->id, "Too many connections");
        return;
    }
    cv_log_debug("agent: id %u: connect %s 127.0.0.1:%u", m->id,
                 m->proto == CV_KH_UDP ? "udp" : "tcp", m->port);
    int rc = m->proto == CV_KH_UDP ? cv_local_udp_connect(a->local, m->id, m->port)
                                   : cv_local_tcp_connect(a->local, m->id, m->port);
    if (rc < 0) {
        char msg[128];
        a->stats.stream_refusals++;
        send_error(a, m->proto, m->id, cv_local_os_error(rc, msg, sizeof msg));
        return;
    }
    a->stats.streams_total++;
}

static void on_msg(struct cv_ws *ws, uint8_t opcode, uint8_t *p, size_t n)
{
    struct cv_agent *a = cv_ws_data(ws);
    struct cv_kh_msg m;
    if (opcode != CV_WS_BINARY) {
        cv_log_debug("agent: ignoring a non-binary message (%zu bytes)", n);
        return;
    }
    int rc = a->native ? cv_kh_decode_native(p, n, &m) : cv_kh_decode(p, n, &m);
    if (rc < 0) {
        cv_log_debug("agent: ignoring a malformed message (%zu bytes)", n);
        return;
    }
    struct cv_lconn *c;
    switch (m.type) {
    case CV_KH_CONNECT:
        handle_connect(a, &m);
        break;
    case CV_KH_DATA:
        if ((c = cv_local_find(a->local, m.id)) != NULL)
            cv_local_write(c, m.payload, m.len);
        break;
    case CV_KH_CLOSE:
        if ((c = cv_local_find(a->local, m.id)) != NULL)
            cv_local_peer_close(c);
        break;
    case CV_KH_PING:
        cv_tunnel_send(ws, CV_KH_PONG, CV_KH_TCP, m.id, 0, NULL, 0);
        break;
    case CV_KH_WINDOW:
        if ((c = cv_local_find(a->local, m.id)) != NULL)
            cv_local_window_msg(c, m.payload, m.len);
        break;
    case CV_KH_EXPOSED:
        on_exposed(a, &m);
        break;
    default: /* CONNECTED, ERROR, PONG: ignored (spec §5.5) */
        break;
    }
}

/* ---- the reconnect loop ------------------------------------------------ */

static void on_retry_closed(uv_handle_t *h)
{
    struct cv_agent *a = h->data;
    if (a->done != NULL)
        a->done(a, a->end, a->data);
    free(a->xs);
    free(a->url);
    free(a->log_url);
    free(a);
}

static void finish(struct cv_agent *a, enum cv_agent_end end)
{
    a->stopping = true;
    a->end = end;
    agent_admin_stop(a);
    cv_local_free(a->local);
    a->local = NULL;
    uv_close((uv_handle_t *)&a->retry, on_retry_closed);
}

static void on_retry(uv_timer_t *t)
{
    attempt_connect(t->data);
}

/* Full jitter: uniform in [0, min(cap, base * 2^(k-1))], k >= 1. */
static uint64_t backoff_ms(uint64_t base, uint32_t k)
{
    uint64_t top = base;
    for (uint32_t i = 1; i < k && top < CV_LIMIT_BACKOFF_CAP_MS; i++)
        top *= 2;
    if (top > CV_LIMIT_BACKOFF_CAP_MS)
        top = base > CV_LIMIT_BACKOFF_CAP_MS ? base : CV_LIMIT_BACKOFF_CAP_MS;
    if (top == 0)
        return 0;
    uint64_t r;
    if (uv_random(NULL, NULL, &r, sizeof r, 0, NULL) != 0)
        r = (uint64_t)rand();
    return r % (top + 1);
}

static void schedule(struct cv_agent *a, uint64_t ms)
{
    cv_log_debug("agent: next attempt in %llu ms", (unsigned long long)ms);
    uv_timer_start(&a->retry, on_retry, ms, 0);
}

static void on_open(struct cv_ws *ws, int status)
{
    struct cv_agent *a = cv_ws_data(ws);
    if (status < 0)
        return; /* on_close follows with the reason */
    a->established = true;
    a->attempt = 0;
    a->since = (int64_t)time(NULL);
    a->stats.established_total++;
    a->native = cv_ws_subprotocol(ws) != NULL;
    cv_local_set_ws(a->local, ws);
    cv_log_info("tunnel established: %s%s", a->log_url, a->native ? " (native)" : "");
    if (a->native)
        send_exposes(a);
    else if (a->nxs > 0)
        cv_log_warn("the relay does not speak culvert.v1: --expose is not available");
}

static void on_drain(struct cv_ws *ws)
{
    struct cv_agent *a = cv_ws_data(ws);
    cv_local_resume(a->local);
}

static void on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct cv_agent *a = cv_ws_data(ws);
    a->stats.rx_closed += cv_ws_rx_bytes(ws);
    a->stats.tx_closed += cv_ws_tx_bytes(ws);
    for (size_t i = 0; i < a->nxs; i++) {
        a->xs[i].state = AGENT_X_PENDING;
        a->xs[i].public_port = 0;
        a->xs[i].reason[0] = 0;
    }
    a->ws = NULL;
    cv_local_set_ws(a->local, NULL);
    cv_local_close_all(a->local); /* nothing resumes (spec §7) */
    if (a->stopping) {
        if (a->established)
            cv_log_info("tunnel closed: %u%s%s", code, *reason ? " " : "", reason);
        finish(a, CV_AGENT_STOPPED);
        return;
    }
    if (a->established) {
        a->established = false;
        cv_log_info("tunnel closed: %u%s%s", code, *reason ? " " : "", reason);
        schedule(a, a->o.reconnect_delay_ms);
        return;
    }
    a->stats.failures_total++;
    cv_log_error("connection to %s failed: %s", a->log_url, reason);
    schedule(a, backoff_ms(a->o.reconnect_delay_ms, a->attempt));
}

static void attempt_connect(struct cv_agent *a)
{
    a->attempt++;
    if (a->o.max_reconnect > 0 && a->attempt > a->o.max_reconnect) {
        cv_log_error("giving up after %u failed attempts", a->o.max_reconnect);
        finish(a, CV_AGENT_GAVE_UP);
        return;
    }
    struct cv_ws_opts wo;
    cv_ws_opts_default(&wo);
    wo.max_msg = CV_LIMIT_WS_MSG_CLIENT;
    wo.ping_interval_ms = CV_LIMIT_AGENT_IDLE_PING_MS;
    wo.pong_timeout_ms = CV_LIMIT_AGENT_SILENT_MS - CV_LIMIT_AGENT_IDLE_PING_MS;
    wo.idle_timeout_ms = CV_LIMIT_AGENT_SILENT_MS;
    if (a->o.native) {
        /* Native keepalive (docs/PROTOCOL.md §5): a dead link within two
         * intervals. */
        wo.subprotocol = "culvert.v1";
        wo.ping_interval_ms = a->o.ping_interval_ms ? a->o.ping_interval_ms : 15000;
        wo.pong_timeout_ms = wo.ping_interval_ms;
        wo.idle_timeout_ms = 0;
    }
    wo.bearer = a->o.token;
    static const struct cv_ws_cbs cbs = {
        .on_open = on_open, .on_msg = on_msg, .on_close = on_close, .on_drain = on_drain};
    cv_log_debug("agent: connecting to %s (attempt %u)", a->log_url, a->attempt);
    int rc = cv_ws_connect(a->loop, a->url, &wo, &cbs, a, &a->ws);
    if (rc < 0) {
        a->ws = NULL;
        a->stats.failures_total++;
        cv_log_error("connection to %s failed: %s", a->log_url,
                     rc == CV_EINVAL ? "invalid URL (only ws:// is supported)" : cv_strerror(rc));
        schedule(a, backoff_ms(a->o.reconnect_delay_ms, a->attempt));
    }
}

/* ---- public ------------------------------------------------------------ */

int cv_agent_start(uv_loop_t *loop, const struct cv_agent_opts *opts, cv_agent_done_cb done,
                   void *data, struct cv_agent **out)
{
    if (opts->runner_url == NULL || opts->container_id == NULL)
        return CV_EINVAL;
    struct cv_agent *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CV_ENOMEM;
    size_t len = strlen(opts->runner_url) + strlen(opts->container_id) + 16;
    a->url = malloc(len);
    struct cv_local_opts lo = {.conn_pending_max = opts->conn_pending_max,
                               .eof_hold_ms = CV_LIMIT_CLOSED_ID_MS,
                               .name = "agent"};
    if (a->url == NULL || cv_local_new(loop, &lo, &a->local) < 0) {
        free(a->url);
        free(a);
        return CV_ENOMEM;
    }
    cv_agent_url(opts->runner_url, opts->container_id, a->url, len);
    a->log_url = mask_token(a->url);
    a->o = *opts;
    a->next_num = 1;
    if (a->log_url == NULL || cv_agent_set_exposures(a, opts->expose, opts->nexpose) != 0) {
        cv_local_free(a->local);
        free(a->xs);
        free(a->log_url);
        free(a->url);
        free(a);
        return CV_ENOMEM;
    }
    struct cv_url u;
    if (cv_url_parse(a->url, &u) == 0)
        snprintf(a->relay_host, sizeof a->relay_host, "%s", u.host);
    a->loop = loop;
    a->o = *opts;
    a->o.runner_url = a->o.container_id = NULL;
    a->o.expose = NULL; /* copied into a->xs */
    a->o.nexpose = 0;
    a->done = done;
    a->data = data;
    a->started = (int64_t)time(NULL);
    if (opts->admin_host) {
        int rc = agent_admin_start(a);
        if (rc != 0) {
            cv_local_free(a->local);
            free(a->xs);
            free(a->log_url);
            free(a->url);
            free(a);
            return rc;
        }
    }
    uv_timer_init(loop, &a->retry);
    a->retry.data = a;
    schedule(a, 0);
    *out = a;
    return 0;
}

const char *cv_agent_log_url(const struct cv_agent *a)
{
    return a->log_url;
}

void cv_agent_stop(struct cv_agent *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = true;
    uv_timer_stop(&a->retry);
    if (a->ws != NULL)
        cv_ws_close(a->ws, CV_WS_NORMAL, ""); /* on_close finishes */
    else
        finish(a, CV_AGENT_STOPPED);
}
