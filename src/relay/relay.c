/* The relay's front door: HTTP routing, authentication, the agent registry,
 * and the WebSocket callbacks of tunnels (agents) and sessions (forward
 * peers). Streams are in stream.c, public ports in public.c.
 *
 * Endpoints (specs/kohaku-tunnel.md §6, docs/PROTOCOL.md §1):
 *   [/t/TOKEN]/ws/tunnel/{id}                   agents
 *   [/t/TOKEN]/ws/forward/{id}/{port}?proto=    forward sessions
 *   /healthz                                    200 ok */
#include "relay/relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/auth.h"
#include "codec/kohaku.h"
#include "codec/text.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "core/ratelimit.h"
#include "net/addr.h"
#include "net/http_server.h"
#include "relay/internal.h"

#define NATIVE_PROTO "culvert.v1"

void cv_relay_opts_default(struct cv_relay_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8001;
    o->ping_interval_ms = CV_LIMIT_PING_INTERVAL_MS;
    o->pong_timeout_ms = CV_LIMIT_PONG_TIMEOUT_MS;
    o->conn_pending = CV_LIMIT_CONN_PENDING;
    o->public_bind = "127.0.0.1";
    o->handshake_ms = CV_LIMIT_HANDSHAKE_MS;
    o->conn_rate = CV_LIMIT_CONN_RATE;
    o->conn_burst = CV_LIMIT_CONN_BURST;
}

static void on_relay_freed(uv_handle_t *h)
{
    free(h->data);
}

void relay_maybe_free(struct cv_relay *r)
{
    if (!r->stopping || r->tunnels || r->sessions || r->closing_handles > 0)
        return;
    if (uv_is_closing((uv_handle_t *)&r->reaper))
        return;
    conns_reap(r);
    names_free(r);
    uv_close((uv_handle_t *)&r->reaper, on_relay_freed);
}

static void ws_opts(const struct cv_relay *r, struct cv_ws_opts *o)
{
    cv_ws_opts_default(o);
    o->max_msg = CV_LIMIT_WS_MSG_RELAY;
    o->ping_interval_ms = r->opts.ping_interval_ms;
    o->pong_timeout_ms = r->opts.pong_timeout_ms;
    o->subprotocol = NATIVE_PROTO;
}

static struct tunnel *find_current(struct cv_relay *r, const char *id)
{
    for (struct tunnel *t = r->tunnels; t; t = t->next)
        if (t->current && strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

/* ---- tunnels (agents) ---------------------------------------------------- */

static void tunnel_on_msg(struct cv_ws *ws, uint8_t op, uint8_t *data, size_t len)
{
    struct tunnel *t = cv_ws_data(ws);
    if (op != CV_WS_BINARY) {
        cv_log_warn("agent %s (%s): ignoring a text frame", t->id, cv_ws_peer(ws));
        return;
    }
    tunnel_msg(t, data, len);
}

static void tunnel_on_drain(struct cv_ws *ws)
{
    tunnel_drain(cv_ws_data(ws));
}

static void tunnel_on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct tunnel *t = cv_ws_data(ws);
    struct cv_relay *r = t->r;
    cv_log_info("agent %s (%s) disconnected: %u %s", t->id, cv_ws_peer(ws), code, reason);
    tunnel_end(t);
    cv_idmap_fini(&t->conns);
    if (t->prev)
        t->prev->next = t->next;
    else
        r->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    free(t);
    relay_maybe_free(r);
}

static void accept_tunnel(struct cv_relay *r, struct cv_http_req *req, const char *id)
{
    struct tunnel *t = calloc(1, sizeof *t);
    if (t == NULL) {
        cv_http_req_respond(req, 503, "text/plain", "out of memory\n", 14);
        return;
    }
    static const struct cv_ws_cbs cbs = {
        .on_msg = tunnel_on_msg, .on_close = tunnel_on_close, .on_drain = tunnel_on_drain};
    struct cv_ws_opts o;
    ws_opts(r, &o);
    if (cv_http_req_upgrade(req, &o, &cbs, t, &t->ws) != 0) {
        free(t);
        return;
    }
    t->r = r;
    t->since = (int64_t)time(NULL);
    r->stats.agents_total++;
    relay_stats_handshake(&r->stats, uv_hrtime() - cv_ws_born_ns(t->ws));
    snprintf(t->id, sizeof t->id, "%s", id);
    t->next_tid = 1;
    t->native = cv_ws_subprotocol(t->ws) != NULL;
    cv_idmap_init(&t->conns);
    cv_flow_budget_init(&t->budget, CV_FLOW_SESSION_CAP);
    /* The newest registration wins; the old tunnel keeps its live conns and
     * is not closed (§11.2), and its end never removes this entry. */
    struct tunnel *old = find_current(r, id);
    if (old)
        old->current = false;
    t->current = true;
    t->next = r->tunnels;
    if (r->tunnels)
        r->tunnels->prev = t;
    r->tunnels = t;
    cv_log_info("agent %s registered from %s (%s)%s", id, cv_ws_peer(t->ws),
                t->native ? "native" : "KohakuRiver",
                old ? ", replacing the previous registration" : "");
}

/* ---- sessions (forward peers) -------------------------------------------- */

static void session_on_msg(struct cv_ws *ws, uint8_t op, uint8_t *data, size_t len)
{
    struct session *s = cv_ws_data(ws);
    if (op != CV_WS_BINARY) {
        cv_log_warn("session %s: ignoring a text frame", cv_ws_peer(ws));
        return;
    }
    session_msg(s, data, len);
}

static void session_on_drain(struct cv_ws *ws)
{
    session_drain(cv_ws_data(ws));
}

static void session_on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct session *s = cv_ws_data(ws);
    struct cv_relay *r = s->r;
    cv_log_info("session %s for %s ended: %u %s", cv_ws_peer(ws), s->container, code, reason);
    session_end(s);
    cv_idmap_fini(&s->conns);
    if (s->prev)
        s->prev->next = s->next;
    else
        r->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
    relay_maybe_free(r);
}

static bool query_is_udp(const char *q)
{
    /* proto=udp in any case selects UDP; anything else TCP (§6.2). */
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        if (n == 9 && strncmp(q, "proto=", 6) == 0 && strncasecmp(q + 6, "udp", 3) == 0)
            return true;
        q += n + (amp ? 1 : 0);
    }
    return false;
}

static void accept_session(struct cv_relay *r, struct cv_http_req *req, const char *id,
                           uint16_t port)
{
    struct session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        cv_http_req_respond(req, 503, "text/plain", "out of memory\n", 14);
        return;
    }
    static const struct cv_ws_cbs cbs = {
        .on_msg = session_on_msg, .on_close = session_on_close, .on_drain = session_on_drain};
    struct cv_ws_opts o;
    ws_opts(r, &o);
    s->proto = query_is_udp(cv_http_req_query(req)) ? CV_KH_UDP : CV_KH_TCP;
    if (cv_http_req_upgrade(req, &o, &cbs, s, &s->ws) != 0) {
        free(s);
        return;
    }
    s->r = r;
    s->since = (int64_t)time(NULL);
    r->stats.sessions_total++;
    relay_stats_handshake(&r->stats, uv_hrtime() - cv_ws_born_ns(s->ws));
    snprintf(s->container, sizeof s->container, "%s", id);
    s->url_port = port;
    s->native = cv_ws_subprotocol(s->ws) != NULL;
    cv_idmap_init(&s->conns);
    cv_flow_budget_init(&s->budget, CV_FLOW_SESSION_CAP);
    s->next = r->sessions;
    if (r->sessions)
        r->sessions->prev = s;
    r->sessions = s;
    if (find_current(r, id) == NULL) {
        char msg[RELAY_MAX_ID + 64];
        snprintf(msg, sizeof msg, "Error: Container tunnel not connected (container=%s)", id);
        cv_log_info("session %s: no tunnel for %s", cv_ws_peer(s->ws), id);
        cv_ws_send(s->ws, CV_WS_TEXT, msg, strlen(msg));
        cv_ws_close(s->ws, CV_WS_INTERNAL, NULL);
        return;
    }
    cv_log_info("session %s for %s port %u/%s (%s)", cv_ws_peer(s->ws), id, port,
                s->proto == CV_KH_UDP ? "udp" : "tcp", s->native ? "native" : "KohakuRiver");
    cv_ws_send(s->ws, CV_WS_TEXT, "CONNECTED", 9);
}

/* ---- HTTP dispatch ------------------------------------------------------- */

/* Percent-decodes one path segment into out (NUL-terminated). Returns false
 * if it is empty, too long, badly escaped or decodes to a control byte. */
static bool decode_segment(const char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
            int hi = i + 2 < n ? cv_hexval((unsigned char)(unsigned char)p[i + 1]) : -1;
            int lo = i + 2 < n ? cv_hexval((unsigned char)(unsigned char)p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return false;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || o + 1 >= cap)
            return false;
        out[o++] = (char)c;
    }
    out[o] = 0;
    return o > 0;
}

static void respond_text(struct cv_http_req *req, int status, const char *text)
{
    cv_http_req_respond(req, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Checks the request's credentials (bearer header, else the /t/TOKEN
 * prefix) for an agent id (or NULL for a session). Answers 401 itself and
 * returns false when they are refused. */
static bool authorized(struct cv_relay *r, struct cv_http_req *req, const char *prefix_token,
                       const char *agent_id)
{
    if (r->opts.token == NULL)
        return true; /* --allow-anonymous with no secret */
    const char *tok = prefix_token;
    size_t len = tok ? strlen(tok) : 0;
    const struct cv_http_header *h = cv_http_find(cv_http_req_head(req), "Authorization");
    if (h && h->value_len > 7 && strncasecmp(h->value, "Bearer ", 7) == 0) {
        tok = h->value + 7;
        len = h->value_len - 7;
    }
    if (tok == NULL && r->opts.allow_anonymous)
        return true;
    enum cv_auth_result res =
        cv_auth_check(r->opts.token, tok, len, agent_id, (int64_t)time(NULL));
    if (res == CV_AUTH_OK)
        return true;
    const char *why = cv_auth_reason(res);
    r->stats.auth_failures++;
    cv_log_warn("refused %s from %s: %s", agent_id ? "agent" : "session", cv_http_req_peer(req),
                why);
    char body[96];
    snprintf(body, sizeof body, "%s\n", why);
    respond_text(req, 401, body);
    return false;
}

static void route_forward(struct cv_relay *r, struct cv_http_req *req, const char *rest,
                          const char *token)
{
    const char *slash = strchr(rest, '/');
    char id[RELAY_MAX_ID];
    uint16_t port;
    if (slash == NULL || !decode_segment(rest, (size_t)(slash - rest), id, sizeof id)) {
        respond_text(req, 404, "not found: expected /ws/forward/{container_id}/{port}\n");
        return;
    }
    if (strchr(slash + 1, '/') != NULL || cv_port_parse(slash + 1, &port) != 0) {
        respond_text(req, 400, "bad request: {port} must be an integer 0-65535\n");
        return;
    }
    if (authorized(r, req, token, NULL))
        accept_session(r, req, id, port);
}

static void route_ws(struct cv_relay *r, struct cv_http_req *req, const char *path,
                     const char *token)
{
    char id[RELAY_MAX_ID];
    if (strncmp(path, "/ws/tunnel/", 11) == 0) {
        const char *seg = path + 11;
        if (strchr(seg, '/') || !decode_segment(seg, strlen(seg), id, sizeof id))
            respond_text(req, 404, "not found: expected /ws/tunnel/{container_id}\n");
        else if (authorized(r, req, token, id))
            accept_tunnel(r, req, id);
    } else if (strncmp(path, "/ws/forward/", 12) == 0) {
        route_forward(r, req, path + 12, token);
    } else {
        char msg[192];
        snprintf(msg, sizeof msg,
                 "not found: %.60s (culvert relay serves /ws/tunnel/, /ws/forward/, /healthz)\n",
                 path);
        respond_text(req, 404, msg);
    }
}

static void on_request(struct cv_http_server *srv, struct cv_http_req *req)
{
    struct cv_relay *r = cv_http_server_data(srv);
    const char *path = cv_http_req_path(req);
    if (r->stopping) {
        respond_text(req, 503, "relay is shutting down\n");
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        respond_text(req, 200, "ok\n");
        return;
    }
    /* A reference agent cannot send headers: /t/TOKEN/ws/... carries it. */
    char token[2048];
    const char *tok = NULL;
    if (strncmp(path, "/t/", 3) == 0) {
        const char *end = strchr(path + 3, '/');
        if (end == NULL || !decode_segment(path + 3, (size_t)(end - path - 3), token, sizeof token)) {
            respond_text(req, 404, "not found: expected /t/{token}/ws/...\n");
            return;
        }
        tok = token;
        path = end;
    }
    route_ws(r, req, path, tok);
}

/* Copies *s into buf and points *s there (NULL stays NULL). False if it
 * does not fit (numeric addresses always do). */
static bool own_str(char *buf, size_t cap, const char **s)
{
    if (*s == NULL)
        return true;
    size_t n = strlen(*s);
    if (n >= cap)
        return false;
    memcpy(buf, *s, n + 1);
    *s = buf;
    return true;
}

int cv_relay_start(uv_loop_t *loop, const struct cv_relay_opts *opts, struct cv_relay **out)
{
    if ((opts->token == NULL || opts->token[0] == 0) && !opts->allow_anonymous)
        return CV_EINVAL;
    if ((opts->http_host || opts->https_host) && (opts->domain == NULL || opts->domain[0] == 0))
        return CV_EINVAL; /* virtual hosts need a BASE */
    if (opts->https_host && opts->tls == NULL)
        return CV_EINVAL; /* HTTPS needs certificates */
    struct cv_relay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return CV_ENOMEM;
    r->loop = loop;
    r->opts = *opts;
    if (!own_str(r->own_host, sizeof r->own_host, &r->opts.host) ||
        !own_str(r->own_public_bind, sizeof r->own_public_bind, &r->opts.public_bind) ||
        !own_str(r->own_admin_host, sizeof r->own_admin_host, &r->opts.admin_host) ||
        !own_str(r->own_http_host, sizeof r->own_http_host, &r->opts.http_host) ||
        !own_str(r->own_https_host, sizeof r->own_https_host, &r->opts.https_host) ||
        !own_str(r->own_tls_listen_host, sizeof r->own_tls_listen_host, &r->opts.tls_listen_host)) {
        free(r);
        return CV_EINVAL;
    }
    if (opts->domain) {
        /* Owned and lowercased: names compare against it for every visitor. */
        size_t i = 0;
        for (; opts->domain[i] && i + 1 < sizeof r->domain; i++) {
            char ch = opts->domain[i];
            r->domain[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
        }
        r->domain[i] = 0;
        r->opts.domain = r->domain;
    }
    if (r->opts.token && r->opts.token[0] == 0)
        r->opts.token = NULL;
    int rc = cv_http_server_start(loop, opts->host, opts->port, on_request, r, &r->srv);
    if (rc != 0) {
        free(r);
        return rc;
    }
    if (opts->tls != NULL)
        cv_http_server_set_tls(r->srv, opts->tls);
    struct cv_http_server_limits lim = {.handshake_ms = opts->handshake_ms,
                                        .rate_per_ip = opts->conn_rate,
                                        .burst_per_ip = opts->conn_burst};
    if ((rc = cv_http_server_set_limits(r->srv, &lim)) != 0) {
        cv_http_server_close(r->srv);
        free(r);
        return rc;
    }
    uv_timer_init(loop, &r->reaper);
    r->reaper.data = r;
    r->started = (int64_t)time(NULL);
    if ((opts->admin_host && (rc = relay_admin_start(r)) != 0) ||
        (opts->domain && (rc = vhost_start(r)) != 0)) {
        relay_admin_stop(r);
        r->stopping = true;
        cv_http_server_close(r->srv);
        r->srv = NULL;
        relay_maybe_free(r);
        return rc;
    }
    if ((rc = tlsfront_start(r)) != 0) {
        r->stopping = true;
        cv_http_server_close(r->srv);
        r->srv = NULL;
        relay_admin_stop(r);
        vhost_stop(r);
        relay_maybe_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

int cv_relay_reload(struct cv_relay *r, const struct cv_relay_opts *o)
{
    if (r->stopping || ((o->token == NULL || o->token[0] == 0) && !o->allow_anonymous))
        return CV_EINVAL;
    struct cv_http_server_limits lim = {.handshake_ms = o->handshake_ms,
                                        .rate_per_ip = o->conn_rate,
                                        .burst_per_ip = o->conn_burst};
    int rc = cv_http_server_set_limits(r->srv, &lim);
    if (rc != 0)
        return rc;
    double rate = r->opts.conn_rate, burst = r->opts.conn_burst;
    r->opts.conn_rate = o->conn_rate;
    r->opts.conn_burst = o->conn_burst;
    if ((rate != o->conn_rate || burst != o->conn_burst) &&
        ((rc = vhost_set_limits(r)) != 0 || (rc = tlsfront_set_limits(r, r->tlsfront)) != 0)) {
        r->opts.conn_rate = rate;
        r->opts.conn_burst = burst;
        return rc;
    }
    r->opts.token = o->token && o->token[0] ? o->token : NULL;
    r->opts.allow_anonymous = o->allow_anonymous;
    r->opts.allow_lo = o->allow_lo;
    r->opts.allow_hi = o->allow_hi;
    r->opts.any_port = o->any_port;
    r->opts.conn_pending = o->conn_pending;
    r->opts.handshake_ms = o->handshake_ms;
    r->opts.conn_rate = o->conn_rate;
    r->opts.conn_burst = o->conn_burst;
    return 0;
}

int relay_rate_renew(struct cv_relay *r, struct cv_ratelimit **slot)
{
    struct cv_ratelimit *rl = NULL;
    if (r->opts.conn_rate > 0 &&
        (rl = cv_ratelimit_new(r->opts.conn_rate, r->opts.conn_burst, 4096)) == NULL)
        return CV_ENOMEM;
    cv_ratelimit_free(*slot);
    *slot = rl;
    return 0;
}

int cv_relay_set_tls(struct cv_relay *r, struct cv_tls_ctx *tls)
{
    if (r->stopping || r->opts.tls == NULL || tls == NULL)
        return CV_EINVAL;
    r->opts.tls = tls;
    cv_http_server_set_tls(r->srv, tls);
    return 0;
}

uint16_t cv_relay_port(const struct cv_relay *r) { return cv_http_server_port(r->srv); }

void cv_relay_stop(struct cv_relay *r)
{
    if (r == NULL || r->stopping)
        return;
    r->stopping = true;
    cv_http_server_close(r->srv);
    r->srv = NULL;
    relay_admin_stop(r);
    tlsfront_stop(r);
    vhost_stop(r);
    for (struct tunnel *t = r->tunnels; t; t = t->next)
        cv_ws_close(t->ws, CV_WS_GOING_AWAY, "relay shutting down");
    for (struct session *s = r->sessions; s; s = s->next)
        cv_ws_close(s->ws, CV_WS_GOING_AWAY, "relay shutting down");
    relay_maybe_free(r);
}

uint16_t cv_relay_tls_port(const struct cv_relay *r) { return r->tls_front_port; }
