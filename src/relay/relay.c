/* The relay: KohakuRiver runner endpoints with culvert's fixes
 * (specs/kohaku-tunnel.md §6.3 and §11).
 *
 * Objects: a tunnel is one agent WebSocket; a session is one /ws/forward
 * WebSocket; a conn is one forwarded connection, known to its session by the
 * peer's id (sid) and to its tunnel by an id the relay allocates (tid), so
 * sessions never see each other's ids. Only bytes 2-5 of a message change on
 * the way through, in place, so a message is copied once: into the
 * destination's transmit queue.
 *
 * Backpressure: agent -> session data that the session's WebSocket cannot
 * take now waits in that conn's own queue (capped; overflow aborts only that
 * conn), so reading from the agent never stops for one slow session.
 * Session -> agent data pauses that session while the agent's queue is above
 * its high mark. */
#include "relay/relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec/kohaku.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/idmap.h"
#include "core/limits.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/http_server.h"

#define MAX_ID 256

struct tunnel;
struct session;

struct conn {
    struct session *s; /* borrowed: owner */
    struct tunnel *t;  /* borrowed; NULL once the tunnel side is done */
    uint32_t sid, tid;
    uint8_t proto;
    bool ending;           /* tunnel side done; free once q is flushed */
    bool blocked;          /* on s->blocked */
    struct conn *bnext;    /* link in s->blocked */
    struct cv_buf q;       /* queued messages to the session: [u32 len][msg] */
};

struct tunnel {
    struct cv_relay *r;
    struct cv_ws *ws; /* borrowed: freed by net after on_close */
    char id[MAX_ID];
    bool current;          /* the registration new CONNECTs use */
    uint32_t next_tid;
    struct cv_idmap conns; /* tid -> conn */
    struct tunnel *next, *prev;
    struct session *paused; /* sessions paused waiting for this tunnel */
};

struct session {
    struct cv_relay *r;
    struct cv_ws *ws;
    char container[MAX_ID];
    uint16_t url_port;
    uint8_t proto;
    struct cv_idmap conns; /* sid -> conn */
    struct conn *blocked, *blocked_tail;
    struct tunnel *paused_on; /* borrowed */
    struct session *pnext;    /* link in paused_on->paused */
    struct session *next, *prev;
};

struct cv_relay {
    uv_loop_t *loop;
    struct cv_relay_opts opts;
    struct cv_http_server *srv;
    struct tunnel *tunnels;
    struct session *sessions;
    bool stopping;
};

void cv_relay_opts_default(struct cv_relay_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8001;
    o->ping_interval_ms = CV_LIMIT_PING_INTERVAL_MS;
    o->pong_timeout_ms = CV_LIMIT_PONG_TIMEOUT_MS;
    o->conn_pending = CV_LIMIT_CONN_PENDING;
}

static void maybe_free_relay(struct cv_relay *r)
{
    if (r->stopping && r->tunnels == NULL && r->sessions == NULL)
        free(r);
}

/* ---- messages ----------------------------------------------------------- */

static int send_msg(struct cv_ws *ws, uint8_t type, uint8_t proto, uint32_t id, const char *text)
{
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, type, proto, id, 0);
    return cv_ws_send2(ws, CV_WS_BINARY, hdr, sizeof hdr, text, text ? strlen(text) : 0);
}

/* ---- conns -------------------------------------------------------------- */

static void conn_detach_tunnel(struct conn *c)
{
    if (c->t == NULL)
        return;
    cv_idmap_del(&c->t->conns, c->tid);
    c->t = NULL;
}

static void unblock(struct conn *c)
{
    if (!c->blocked)
        return;
    struct session *s = c->s;
    struct conn **pp = &s->blocked, *prev = NULL;
    while (*pp != c) {
        prev = *pp;
        pp = &(*pp)->bnext;
    }
    *pp = c->bnext;
    if (s->blocked_tail == c)
        s->blocked_tail = prev;
    c->bnext = NULL;
    c->blocked = false;
}

static void session_sync_pause(struct session *s);

static void conn_free(struct conn *c)
{
    bool was_blocked = c->blocked;
    conn_detach_tunnel(c);
    unblock(c);
    if (was_blocked && c->s->blocked == NULL)
        session_sync_pause(c->s);
    cv_idmap_del(&c->s->conns, c->sid);
    cv_buf_fini(&c->q);
    free(c);
}

/* Tells the agent the connection is over (the only way to free its entry). */
static void close_at_agent(struct conn *c)
{
    if (c->t)
        send_msg(c->t->ws, CV_KH_CLOSE, c->proto, c->tid, NULL);
    conn_detach_tunnel(c);
}

static void conn_abort(struct conn *c, const char *why);

/* A session is not read while the agent it feeds is congested, or while
 * data toward it is queued: for request/response traffic that stops the
 * sender until it reads, so the queue stays bounded without an abort. Only
 * this session waits. */
static void session_sync_pause(struct session *s)
{
    if (s->paused_on || s->blocked)
        cv_ws_pause(s->ws);
    else
        cv_ws_resume(s->ws);
}

/* Puts c at the tail of its session's round-robin list of waiting conns. */
static void block(struct conn *c)
{
    struct session *s = c->s;
    if (c->blocked)
        return;
    if (s->blocked == NULL)
        cv_ws_pause(s->ws);
    c->blocked = true;
    if (s->blocked_tail)
        s->blocked_tail->bnext = c;
    else
        s->blocked = c;
    s->blocked_tail = c;
}

/* Sends msg (its id already rewritten to sid) to the session, or queues it
 * behind what is already waiting. */
static void to_session(struct conn *c, const uint8_t *msg, size_t len)
{
    struct session *s = c->s;
    if (c->q.len == 0 && cv_ws_is_writable(s->ws) &&
        cv_ws_send(s->ws, CV_WS_BINARY, msg, len) == 0)
        return;
    uint32_t l = (uint32_t)len;
    if (cv_buf_reserve(&c->q, sizeof l + len) != 0) {
        conn_abort(c, "queue toward the forward session is full");
        return;
    }
    cv_buf_append(&c->q, &l, sizeof l);
    cv_buf_append(&c->q, msg, len);
    block(c);
}

/* The session cannot keep up with this conn: drop what is queued and end it
 * on both sides (spec §11.4: only this connection). */
static void conn_abort(struct conn *c, const char *why)
{
    cv_log_warn("session %s: connection %u aborted: %s (%zu bytes queued)", cv_ws_peer(c->s->ws),
                c->sid, why, c->q.len);
    close_at_agent(c);
    cv_buf_reset(&c->q);
    c->q.max += CV_KH_HDR_LEN + 4; /* room for the CLOSE itself */
    c->ending = true;
    uint8_t m[CV_KH_HDR_LEN];
    cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->sid, 0);
    to_session(c, m, sizeof m);
}

/* Sends queued messages of one conn while the session takes them. Returns
 * true if the conn's queue is now empty. */
static bool flush_conn(struct conn *c, int budget)
{
    while (c->q.len > 0 && budget-- > 0 && cv_ws_is_writable(c->s->ws)) {
        uint32_t l;
        memcpy(&l, cv_buf_head(&c->q), sizeof l);
        if (cv_ws_send(c->s->ws, CV_WS_BINARY, cv_buf_head(&c->q) + sizeof l, l) != 0)
            return false;
        cv_buf_consume(&c->q, sizeof l + l);
    }
    return c->q.len == 0;
}

static void on_session_drain(struct cv_ws *ws)
{
    struct session *s = cv_ws_data(ws);
    /* Round-robin, a few messages per conn per turn, so one busy conn does
     * not starve the others. */
    while (s->blocked && cv_ws_is_writable(ws)) {
        struct conn *c = s->blocked;
        bool empty = flush_conn(c, 4);
        unblock(c);
        if (empty) {
            if (c->ending)
                conn_free(c);
        } else {
            block(c);
        }
    }
    session_sync_pause(s);
}

/* ---- tunnels (agents) ---------------------------------------------------- */

static struct tunnel *find_current(struct cv_relay *r, const char *id)
{
    for (struct tunnel *t = r->tunnels; t; t = t->next)
        if (t->current && strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

static void resume_paused(struct tunnel *t)
{
    struct session *s = t->paused;
    t->paused = NULL;
    while (s) {
        struct session *n = s->pnext;
        s->paused_on = NULL;
        s->pnext = NULL;
        session_sync_pause(s);
        s = n;
    }
}

static void tunnel_on_msg(struct cv_ws *ws, uint8_t op, uint8_t *data, size_t len)
{
    struct tunnel *t = cv_ws_data(ws);
    if (op != CV_WS_BINARY) {
        cv_log_warn("agent %s (%s): ignoring a text frame", t->id, cv_ws_peer(ws));
        return;
    }
    struct cv_kh_msg m;
    if (cv_kh_decode(data, len, &m) == CV_EAGAIN)
        return; /* shorter than a header: ignored (spec §4) */
    if (m.type != CV_KH_CONNECTED && m.type != CV_KH_DATA && m.type != CV_KH_CLOSE &&
        m.type != CV_KH_ERROR)
        return;
    struct conn *c = cv_idmap_get(&t->conns, m.id);
    if (c == NULL)
        return;
    cv_kh_set_id(data, c->sid);
    if (m.type == CV_KH_CLOSE || m.type == CV_KH_ERROR) {
        cv_log_debug("agent %s: connection %u ended (%s)", t->id, m.id, cv_kh_type_name(m.type));
        close_at_agent(c); /* frees the reference agent's entry (§11.3) */
        c->ending = true;
    }
    to_session(c, data, len);
    if (c->ending && c->q.len == 0)
        conn_free(c);
}

static void tunnel_on_drain(struct cv_ws *ws)
{
    resume_paused(cv_ws_data(ws));
}

static void tunnel_on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct tunnel *t = cv_ws_data(ws);
    struct cv_relay *r = t->r;
    cv_log_info("agent %s (%s) disconnected: %u %s", t->id, cv_ws_peer(ws), code, reason);
    resume_paused(t);
    /* Every conn on this tunnel ends; its session stays open (§6.3). */
    while (t->conns.count > 0) {
        struct conn *c = NULL;
        for (size_t i = 0; i < t->conns.cap && c == NULL; i++)
            c = t->conns.slots[i].val;
        conn_detach_tunnel(c);
        c->ending = true;
        uint8_t m[CV_KH_HDR_LEN];
        cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->sid, 0);
        to_session(c, m, sizeof m);
        if (c->q.len == 0)
            conn_free(c);
    }
    cv_idmap_fini(&t->conns);
    if (t->prev)
        t->prev->next = t->next;
    else
        r->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    free(t);
    maybe_free_relay(r);
}

static void ws_opts(const struct cv_relay *r, struct cv_ws_opts *o)
{
    cv_ws_opts_default(o);
    o->max_msg = CV_LIMIT_WS_MSG_RELAY;
    o->ping_interval_ms = r->opts.ping_interval_ms;
    o->pong_timeout_ms = r->opts.pong_timeout_ms;
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
    snprintf(t->id, sizeof t->id, "%s", id);
    t->next_tid = 1;
    cv_idmap_init(&t->conns);
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
    cv_log_info("agent %s registered from %s%s", id, cv_ws_peer(t->ws),
                old ? " (replaces the previous registration)" : "");
}

/* ---- sessions (forward peers) -------------------------------------------- */

static void session_reply(struct session *s, uint8_t proto, uint32_t sid, const char *text)
{
    send_msg(s->ws, CV_KH_ERROR, proto, sid, text);
}

static uint32_t alloc_tid(struct tunnel *t)
{
    for (;;) {
        uint32_t id = t->next_tid++;
        if (id != 0 && cv_idmap_get(&t->conns, id) == NULL)
            return id;
    }
}

static void session_connect(struct session *s, uint8_t *data, size_t len, struct cv_kh_msg *m)
{
    if (cv_idmap_get(&s->conns, m->id)) {
        session_reply(s, m->proto, m->id, "Duplicate client id");
        return;
    }
    if (m->port != 0 && m->port != s->url_port && !s->r->opts.any_port) {
        cv_log_info("session %s: CONNECT to port %u refused (URL port %u)", cv_ws_peer(s->ws),
                    m->port, s->url_port);
        session_reply(s, m->proto, m->id, "Port not allowed");
        return;
    }
    struct tunnel *t = find_current(s->r, s->container);
    if (t == NULL) {
        session_reply(s, m->proto, m->id, "Tunnel send failed");
        return;
    }
    if (t->conns.count >= CV_LIMIT_TUNNEL_CONNS || s->conns.count >= CV_LIMIT_SESSION_CONNS) {
        session_reply(s, m->proto, m->id, "Too many connections");
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        session_reply(s, m->proto, m->id, "Tunnel send failed");
        return;
    }
    c->s = s;
    c->t = t;
    c->sid = m->id;
    c->tid = alloc_tid(t);
    c->proto = m->proto;
    cv_buf_init(&c->q, s->r->opts.conn_pending);
    /* Map before sending, so a fast reply is never lost (§11.9). */
    if (cv_idmap_put(&t->conns, c->tid, c) != 0 || cv_idmap_put(&s->conns, c->sid, c) != 0) {
        cv_idmap_del(&t->conns, c->tid);
        free(c);
        session_reply(s, m->proto, m->id, "Tunnel send failed");
        return;
    }
    if (m->port == 0)
        data[6] = (uint8_t)(s->url_port >> 8), data[7] = (uint8_t)s->url_port;
    cv_kh_set_id(data, c->tid);
    if (cv_ws_send(t->ws, CV_WS_BINARY, data, len) != 0) {
        c->t = NULL;
        cv_idmap_del(&t->conns, c->tid);
        conn_free(c);
        session_reply(s, m->proto, m->id, "Tunnel send failed");
    }
}

static void session_backpressure(struct session *s, struct tunnel *t)
{
    if (cv_ws_is_writable(t->ws) || s->paused_on)
        return;
    cv_ws_pause(s->ws);
    s->paused_on = t;
    s->pnext = t->paused;
    t->paused = s;
}

static void session_on_msg(struct cv_ws *ws, uint8_t op, uint8_t *data, size_t len)
{
    struct session *s = cv_ws_data(ws);
    if (op != CV_WS_BINARY) {
        cv_log_warn("session %s: ignoring a text frame", cv_ws_peer(ws));
        return;
    }
    struct cv_kh_msg m;
    if (cv_kh_decode(data, len, &m) == CV_EAGAIN)
        return;
    if (m.type == CV_KH_CONNECT) {
        session_connect(s, data, len, &m);
        return;
    }
    if (m.type != CV_KH_DATA && m.type != CV_KH_CLOSE)
        return; /* §6.3: other forward-side types are dropped */
    struct conn *c = cv_idmap_get(&s->conns, m.id);
    if (c == NULL || c->ending)
        return;
    struct tunnel *t = c->t;
    if (m.type == CV_KH_CLOSE) {
        close_at_agent(c);
        conn_free(c);
        return;
    }
    cv_kh_set_id(data, c->tid);
    if (cv_ws_send(t->ws, CV_WS_BINARY, data, len) != 0) {
        conn_abort(c, "agent queue full");
        return;
    }
    session_backpressure(s, t);
}

static void session_unpause(struct session *s)
{
    struct tunnel *t = s->paused_on;
    if (t == NULL)
        return;
    for (struct session **pp = &t->paused; *pp; pp = &(*pp)->pnext) {
        if (*pp == s) {
            *pp = s->pnext;
            break;
        }
    }
    s->paused_on = NULL;
}

static void session_on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct session *s = cv_ws_data(ws);
    struct cv_relay *r = s->r;
    cv_log_info("session %s for %s ended: %u %s", cv_ws_peer(ws), s->container, code, reason);
    session_unpause(s);
    /* CLOSE to the agent only for this session's live conns (§6.3, §11.7). */
    while (s->conns.count > 0) {
        struct conn *c = NULL;
        for (size_t i = 0; i < s->conns.cap && c == NULL; i++)
            c = s->conns.slots[i].val;
        close_at_agent(c);
        conn_free(c);
    }
    cv_idmap_fini(&s->conns);
    if (s->prev)
        s->prev->next = s->next;
    else
        r->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
    maybe_free_relay(r);
}

static bool query_is_udp(const char *q)
{
    /* proto=udp in any case selects UDP; anything else TCP (§6.2). */
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        if (n == 9 && strncasecmp(q, "proto=udp", 9) == 0)
            return strncmp(q, "proto", 5) == 0;
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
        .on_msg = session_on_msg, .on_close = session_on_close, .on_drain = on_session_drain};
    struct cv_ws_opts o;
    ws_opts(r, &o);
    s->proto = query_is_udp(cv_http_req_query(req)) ? CV_KH_UDP : CV_KH_TCP;
    if (cv_http_req_upgrade(req, &o, &cbs, s, &s->ws) != 0) {
        free(s);
        return;
    }
    s->r = r;
    snprintf(s->container, sizeof s->container, "%s", id);
    s->url_port = port;
    cv_idmap_init(&s->conns);
    s->next = r->sessions;
    if (r->sessions)
        r->sessions->prev = s;
    r->sessions = s;
    if (find_current(r, id) == NULL) {
        char msg[MAX_ID + 64];
        snprintf(msg, sizeof msg, "Error: Container tunnel not connected (container=%s)", id);
        cv_log_info("session %s: no tunnel for %s", cv_ws_peer(s->ws), id);
        cv_ws_send(s->ws, CV_WS_TEXT, msg, strlen(msg));
        cv_ws_close(s->ws, CV_WS_INTERNAL, NULL);
        return;
    }
    cv_log_info("session %s for %s port %u/%s", cv_ws_peer(s->ws), id, port,
                s->proto == CV_KH_UDP ? "udp" : "tcp");
    cv_ws_send(s->ws, CV_WS_TEXT, "CONNECTED", 9);
}

/* ---- HTTP dispatch ------------------------------------------------------- */

/* Percent-decodes one path segment into out (NUL-terminated). Returns false
 * if it is empty, too long, badly escaped or decodes to a control byte. */
static bool decode_segment(const char *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)p[i];
        if (c == '%') {
            unsigned v = 0;
            for (int k = 1; k <= 2; k++) {
                if (i + (size_t)k >= n)
                    return false;
                unsigned d = (unsigned char)p[i + (size_t)k];
                int x = d >= '0' && d <= '9' ? (int)(d - '0')
                        : (d | 32) >= 'a' && (d | 32) <= 'f' ? (int)((d | 32) - 'a' + 10)
                                                             : -1;
                if (x < 0)
                    return false;
                v = v * 16 + (unsigned)x;
            }
            c = v;
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

static void route_forward(struct cv_relay *r, struct cv_http_req *req, const char *rest)
{
    const char *slash = strchr(rest, '/');
    char id[MAX_ID];
    uint16_t port;
    if (slash == NULL || !decode_segment(rest, (size_t)(slash - rest), id, sizeof id)) {
        respond_text(req, 404, "not found: expected /ws/forward/{container_id}/{port}\n");
        return;
    }
    if (strchr(slash + 1, '/') != NULL || cv_port_parse(slash + 1, &port) != 0) {
        respond_text(req, 400, "bad request: {port} must be an integer 0-65535\n");
        return;
    }
    accept_session(r, req, id, port);
}

static void on_request(struct cv_http_server *srv, struct cv_http_req *req)
{
    struct cv_relay *r = cv_http_server_data(srv);
    const char *path = cv_http_req_path(req);
    char id[MAX_ID];
    if (r->stopping) {
        respond_text(req, 503, "relay is shutting down\n");
    } else if (strcmp(path, "/healthz") == 0) {
        respond_text(req, 200, "ok\n");
    } else if (strncmp(path, "/ws/tunnel/", 11) == 0) {
        const char *seg = path + 11;
        if (strchr(seg, '/') || !decode_segment(seg, strlen(seg), id, sizeof id))
            respond_text(req, 404, "not found: expected /ws/tunnel/{container_id}\n");
        else
            accept_tunnel(r, req, id);
    } else if (strncmp(path, "/ws/forward/", 12) == 0) {
        route_forward(r, req, path + 12);
    } else {
        char msg[192];
        snprintf(msg, sizeof msg,
                 "not found: %.60s (culvert relay serves /ws/tunnel/, /ws/forward/, /healthz)\n",
                 path);
        respond_text(req, 404, msg);
    }
}

int cv_relay_start(uv_loop_t *loop, const struct cv_relay_opts *opts, struct cv_relay **out)
{
    struct cv_relay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return CV_ENOMEM;
    r->loop = loop;
    r->opts = *opts;
    int rc = cv_http_server_start(loop, opts->host, opts->port, on_request, r, &r->srv);
    if (rc != 0) {
        free(r);
        return rc;
    }
    *out = r;
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
    for (struct tunnel *t = r->tunnels; t; t = t->next)
        cv_ws_close(t->ws, CV_WS_GOING_AWAY, "relay shutting down");
    for (struct session *s = r->sessions; s; s = s->next)
        cv_ws_close(s->ws, CV_WS_GOING_AWAY, "relay shutting down");
    maybe_free_relay(r);
}
