/* Relay streams: routing tunnel messages between an agent's tunnel and the
 * front of each connection (a /ws/forward session or a visitor on a public
 * port), with per-session id translation (specs/kohaku-tunnel.md §6.3) and
 * hop-by-hop flow control in native mode (docs/PROTOCOL.md §3).
 *
 * Only bytes 2-5 of a message change on the way through, in place, so a
 * message is copied once: into the destination's transmit queue.
 *
 * Agent -> front: data the front cannot take now waits in that conn's own
 * queue. With a native agent the queue is bounded by the window the relay
 * granted, and credit goes back only as the front takes the data, so
 * nothing is ever dropped. With a KohakuRiver agent (no flow control) the
 * queue is capped and overflow aborts only that conn (spec §11.4); reading
 * from the agent never stops for one slow front.
 *
 * Front -> agent: a session is paused while the agent's queue is above its
 * high mark; a native stream also waits for the agent's credit (its data
 * then waits in the conn's front queue, bounded by the session's window). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "codec/kohaku.h"
#include "core/err.h"
#include "core/limits.h"
#include "core/log.h"
#include "relay/internal.h"

static bool is_tcp_data(uint8_t type, uint8_t proto)
{
    return type == CV_KH_DATA && proto == CV_KH_TCP;
}

int relay_send(struct cv_ws *ws, uint8_t type, uint8_t proto, uint32_t id, const void *p, size_t n)
{
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, type, proto, id, 0);
    return cv_ws_send2(ws, CV_WS_BINARY, hdr, sizeof hdr, p, n);
}

/* Why a send to the agent failed, for the abort log line. */
static const char *send_failure(int rc)
{
    return rc == CV_ECLOSED ? "the agent's connection is closing" : "agent queue full";
}

static void send_window(struct cv_ws *ws, uint8_t proto, uint32_t id, uint32_t inc)
{
    uint32_t be = htonl(inc);
    relay_send(ws, CV_KH_WINDOW, proto, id, &be, sizeof be);
}

/* Queues are sequences of [u32 len][message]. */
static int queue_push(struct cv_buf *q, const uint8_t *msg, size_t len)
{
    uint32_t l = (uint32_t)len;
    int rc = cv_buf_reserve(q, sizeof l + len);
    if (rc != 0)
        return rc;
    cv_buf_append(q, &l, sizeof l);
    cv_buf_append(q, msg, len);
    return 0;
}

static uint8_t *queue_peek(struct cv_buf *q, size_t *len)
{
    uint32_t l;
    memcpy(&l, cv_buf_head(q), sizeof l);
    *len = l;
    return cv_buf_head(q) + sizeof l;
}

static void queue_pop(struct cv_buf *q, size_t len)
{
    cv_buf_consume(q, sizeof(uint32_t) + len);
}

/* The head message of q is a DATA whose first k payload bytes were sent:
 * make the rest its own message, in place (the new length and header go
 * over payload bytes already sent). */
static void queue_trim_head(struct cv_buf *q, size_t k)
{
    uint8_t *head = cv_buf_head(q);
    uint32_t l;
    memcpy(&l, head, sizeof l);
    uint8_t hdr[CV_KH_HDR_LEN];
    memcpy(hdr, head + sizeof l, sizeof hdr);
    l -= (uint32_t)k;
    memcpy(head + k, &l, sizeof l);
    memcpy(head + k + sizeof l, hdr, sizeof hdr);
    cv_buf_consume(q, k);
}

/* Smallest piece worth splitting a DATA for. A receiver returns credit once
 * half its window is consumed, so a sender holding more than half a window
 * of credit must be able to use it even when the next message is larger:
 * otherwise both sides wait for each other. */
#define MIN_PART 4096

/* Sends the head message of q to ws, or as much of a TCP DATA as *credit
 * allows (credit NULL: no flow control). With `wait`, nothing is sent while
 * ws is above its high mark. Returns the payload bytes of DATA sent (0 for
 * other types), or -1 if nothing could be sent. */
static long send_head(struct cv_ws *ws, struct cv_buf *q, uint64_t *credit, bool wait)
{
    size_t len;
    uint8_t *msg = queue_peek(q, &len);
    size_t n = len - CV_KH_HDR_LEN;
    bool data = msg[0] == CV_KH_DATA;
    if (wait && !cv_ws_is_writable(ws))
        return -1;
    if (credit && is_tcp_data(msg[0], msg[1]) && *credit < n) {
        if (*credit < MIN_PART)
            return -1;
        size_t k = (size_t)*credit;
        if (cv_ws_send2(ws, CV_WS_BINARY, msg, CV_KH_HDR_LEN, msg + CV_KH_HDR_LEN, k) != 0)
            return -1;
        *credit -= k;
        queue_trim_head(q, k);
        return (long)k;
    }
    if (cv_ws_send(ws, CV_WS_BINARY, msg, len) != 0)
        return -1;
    if (credit && is_tcp_data(msg[0], msg[1]))
        *credit -= n;
    queue_pop(q, len);
    return data ? (long)n : 0;
}

/* ---- conn lifecycle ----------------------------------------------------- */

struct conn *conn_new(struct tunnel *t, uint8_t kind, uint8_t proto)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->r = t->r;
    c->t = t;
    c->kind = kind;
    c->proto = proto;
    for (;;) {
        uint32_t id = t->next_tid++;
        if (id != 0 && cv_idmap_get(&t->conns, id) == NULL) {
            c->tid = id;
            break;
        }
    }
    if (cv_idmap_put(&t->conns, c->tid, c) != 0) {
        free(c);
        return NULL;
    }
    t->r->stats.streams_total++;
    /* A native agent's data is bounded by the window we grant; a
     * KohakuRiver agent's only by this cap (overflow aborts the conn). */
    size_t cap = t->native ? CV_FLOW_WINDOW_MAX + 1024 * 1024 : t->r->opts.conn_pending;
    cv_buf_init(&c->q, cap);
    cv_buf_init(&c->fq, CV_FLOW_WINDOW_MAX + 1024 * 1024);
    cv_flow_rx_init(&c->a_rx, &t->budget);
    cv_flow_tx_init(&c->a_tx);
    cv_flow_tx_init(&c->f_tx);
    return c;
}

static void conn_detach_tunnel(struct conn *c)
{
    if (c->t == NULL)
        return;
    cv_flow_rx_fini(&c->a_rx, &c->t->budget);
    cv_idmap_del(&c->t->conns, c->tid);
    c->t = NULL;
}

static void session_sync_pause(struct session *s)
{
    if (s->paused_on || (s->blocked && !s->native))
        cv_ws_pause(s->ws);
    else
        cv_ws_resume(s->ws);
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

/* Puts c at the tail of its session's round-robin list of waiting conns.
 * A KohakuRiver session (no flow control) is not read while data toward it
 * waits: for request/response traffic that stops the sender until it reads,
 * so the queue stays bounded instead of aborting. Only this session waits.
 * A native session needs no such brake: credit bounds every queue. */
static void block(struct conn *c)
{
    struct session *s = c->s;
    if (c->blocked)
        return;
    if (s->blocked == NULL && !s->native)
        cv_ws_pause(s->ws);
    c->blocked = true;
    if (s->blocked_tail)
        s->blocked_tail->bnext = c;
    else
        s->blocked = c;
    s->blocked_tail = c;
}

static void on_reap(uv_timer_t *t)
{
    conns_reap(t->data);
    visitors_trim(t->data);
}

void reaper_start(struct cv_relay *r, uint64_t ms)
{
    uv_timer_start(&r->reaper, on_reap, ms, 0);
}

void conns_reap(struct cv_relay *r)
{
    while (r->graveyard) {
        struct conn *c = r->graveyard;
        r->graveyard = c->grave_next;
        free(c);
    }
}

void conn_free(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    conn_detach_tunnel(c);
    if (c->kind == FRONT_SESSION) {
        bool was_blocked = c->blocked;
        unblock(c);
        if (was_blocked && c->s->blocked == NULL)
            session_sync_pause(c->s);
        cv_idmap_del(&c->s->conns, c->sid);
        if (c->s->native && c->proto == CV_KH_TCP)
            cv_flow_rx_fini(&c->f_rx, &c->s->budget);
    } else {
        visitor_detach(c);
    }
    cv_buf_fini(&c->q);
    cv_buf_fini(&c->fq);
    c->grave_next = c->r->graveyard;
    c->r->graveyard = c;
    reaper_start(c->r, 0);
}

/* Tells the agent the connection is over (the only way to free its entry)
 * and forgets the tunnel side. */
void close_at_agent(struct conn *c)
{
    if (c->t)
        relay_send(c->t->ws, CV_KH_CLOSE, c->proto, c->tid, NULL, 0);
    conn_detach_tunnel(c);
}

static void front_deliver(struct conn *c, uint8_t *msg, size_t len);
static void maybe_finish(struct conn *c);

/* Ends c on both sides now, dropping what is queued (spec §11.4: only this
 * connection). */
void conn_abort(struct conn *c, const char *why)
{
    if (c->dead || (c->ending && c->t == NULL && c->q.len == 0 && c->fq.len == 0))
        return;
    c->r->stats.stream_errors++;
    cv_log_warn("connection %u (agent %s): aborted: %s (%zu bytes queued)", c->tid,
                c->t ? c->t->id : "-", why, c->q.len);
    close_at_agent(c);
    cv_buf_reset(&c->q);
    cv_buf_reset(&c->fq);
    c->ending = true;
    if (c->kind != FRONT_SESSION) {
        conn_free(c);
        return;
    }
    c->q.max += CV_KH_HDR_LEN + 4; /* room for the CLOSE itself */
    uint8_t m[CV_KH_HDR_LEN];
    cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->sid, 0);
    front_deliver(c, m, sizeof m);
    maybe_finish(c);
}

static void maybe_finish(struct conn *c)
{
    if (c->dead)
        return;
    bool done = c->ending || (c->fin_to_front && c->fin_to_agent);
    if (done && c->q.len == 0 && c->fq.len == 0)
        conn_free(c);
}

/* ---- agent -> front ------------------------------------------------------ */

/* n payload bytes of the agent's left the relay toward the front. */
static void a2f_consumed(struct conn *c, size_t n, bool idle)
{
    if (c->t == NULL || !c->t->native || c->proto != CV_KH_TCP)
        return;
    uint32_t inc = cv_flow_rx_consume(&c->a_rx, &c->t->budget, n, idle);
    if (inc)
        send_window(c->t->ws, c->proto, c->tid, inc);
}

void front_consumed(struct conn *c, size_t n, bool idle)
{
    a2f_consumed(c, n, idle);
}

/* Can the session take this whole message now? Consumes native credit if
 * so. */
static bool session_takes(struct conn *c, const uint8_t *msg, size_t len)
{
    struct session *s = c->s;
    if (!cv_ws_is_writable(s->ws))
        return false;
    if (!s->native || !is_tcp_data(msg[0], msg[1]))
        return true;
    size_t n = len - CV_KH_HDR_LEN;
    if (c->f_tx.credit < n)
        return false;
    c->f_tx.credit -= n;
    return true;
}

/* Sends queued messages of one conn while the session takes them (at most
 * budget). Returns how many were sent. */
static int flush_q(struct conn *c, int budget)
{
    int sent = 0;
    uint64_t *credit = c->s->native ? &c->f_tx.credit : NULL;
    while (c->q.len > 0 && sent < budget) {
        long n = send_head(c->s->ws, &c->q, credit, true);
        if (n < 0)
            break;
        sent++;
        if (n > 0)
            a2f_consumed(c, (size_t)n, c->q.len == 0);
    }
    return sent;
}

/* Delivers an agent message (id already rewritten for the session). */
static void session_deliver(struct conn *c, uint8_t *msg, size_t len)
{
    bool data = msg[0] == CV_KH_DATA;
    if (c->q.len == 0 && session_takes(c, msg, len) &&
        cv_ws_send(c->s->ws, CV_WS_BINARY, msg, len) == 0) {
        if (data)
            a2f_consumed(c, len - CV_KH_HDR_LEN, true);
        return;
    }
    if (data && c->proto == CV_KH_UDP)
        return; /* a datagram that does not fit is dropped, never queued */
    if (c->q.len == 0 && data && queue_push(&c->q, msg, len) == 0) {
        /* Whole it did not fit: part of it may (see MIN_PART). */
        flush_q(c, 1);
        if (c->q.len > 0)
            block(c);
        return;
    }
    if (queue_push(&c->q, msg, len) != 0) {
        conn_abort(c, "queue toward the forward session is full");
        return;
    }
    block(c);
}

/* A KohakuRiver peer takes DATA payloads of at most 64 KiB (spec §2); a
 * native agent sends up to CV_LIMIT_NATIVE_PAYLOAD, so split them. */
static void session_deliver_split(struct conn *c, uint8_t *msg, size_t len)
{
    size_t n = len - CV_KH_HDR_LEN;
    if (msg[0] != CV_KH_DATA || c->s->native || n <= CV_LIMIT_DATA_PAYLOAD) {
        session_deliver(c, msg, len);
        return;
    }
    uint8_t *p = msg + CV_KH_HDR_LEN;
    for (size_t off = 0; off < n && !c->dead; off += CV_LIMIT_DATA_PAYLOAD) {
        size_t k = n - off < CV_LIMIT_DATA_PAYLOAD ? n - off : CV_LIMIT_DATA_PAYLOAD;
        uint8_t *piece = p + off - CV_KH_HDR_LEN; /* header goes over the previous bytes */
        uint8_t saved[CV_KH_HDR_LEN];
        memcpy(saved, piece, sizeof saved);
        memcpy(piece, msg, CV_KH_HDR_LEN);
        session_deliver(c, piece, k + CV_KH_HDR_LEN);
        memcpy(piece, saved, sizeof saved);
    }
}

static void front_deliver(struct conn *c, uint8_t *msg, size_t len)
{
    if (c->dead)
        return;
    if (c->kind == FRONT_SESSION) {
        cv_kh_set_id(msg, c->sid);
        session_deliver_split(c, msg, len);
        return;
    }
    if (msg[0] == CV_KH_DATA) {
        visitor_write(c, msg + CV_KH_HDR_LEN, len - CV_KH_HDR_LEN);
        if (c->proto == CV_KH_UDP)
            a2f_consumed(c, len - CV_KH_HDR_LEN, true);
    } else if (msg[0] == CV_KH_ERROR && c->kind == FRONT_HTTP) {
        vhost_error(c, msg + CV_KH_HDR_LEN, len - CV_KH_HDR_LEN); /* for its 502 page */
    }
}

void session_drain(struct session *s)
{
    /* Round-robin, a few messages per conn per turn, so one busy conn does
     * not starve the others; stop when the session is full again or a
     * whole turn moved nothing (the rest wait for credit). */
    bool moved = true;
    while (moved && s->blocked && cv_ws_is_writable(s->ws)) {
        moved = false;
        struct conn *end = s->blocked_tail;
        for (;;) {
            struct conn *c = s->blocked;
            bool last = c == end;
            if (flush_q(c, 4) > 0)
                moved = true;
            unblock(c);
            if (c->q.len > 0)
                block(c);
            else
                maybe_finish(c);
            if (last || s->blocked == NULL || !cv_ws_is_writable(s->ws))
                break;
        }
    }
    session_sync_pause(s);
}

/* A FIN or CLOSE from a native agent toward a KohakuRiver session, which
 * has no half-close: the session gets CLOSE and the agent is told too. */
static void agent_fin_to_compat(struct conn *c)
{
    uint8_t m[CV_KH_HDR_LEN];
    cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->tid, 0);
    close_at_agent(c);
    c->ending = true;
    front_deliver(c, m, sizeof m);
    maybe_finish(c);
}

static void f2a_consumed(struct conn *c, size_t n);

/* Front data waiting for the agent's credit. */
static void flush_fq(struct conn *c)
{
    while (c->fq.len > 0 && c->t) {
        /* The session is paused while the agent is congested (see
         * session_backpressure): only credit holds this queue back. */
        long n = send_head(c->t->ws, &c->fq, c->t->native ? &c->a_tx.credit : NULL, false);
        if (n < 0)
            break;
        if (n > 0)
            f2a_consumed(c, (size_t)n);
    }
}

static void agent_window(struct conn *c, const struct cv_kh_msg *m)
{
    uint32_t inc;
    if (m->len != 4) {
        conn_abort(c, "malformed WINDOW");
        return;
    }
    memcpy(&inc, m->payload, 4);
    if (cv_flow_tx_window(&c->a_tx, ntohl(inc)) != 0) {
        conn_abort(c, "WINDOW beyond any window");
        return;
    }
    if (c->kind == FRONT_SESSION) {
        flush_fq(c);
        maybe_finish(c);
    } else {
        visitors_resume(c->t);
    }
}

static void agent_data(struct tunnel *t, struct conn *c, uint8_t *data, size_t len)
{
    size_t n = len - CV_KH_HDR_LEN;
    c->down += n;
    t->down += n;
    t->r->stats.bytes_from_agents += n;
    if (t->native && c->proto == CV_KH_TCP && cv_flow_rx_data(&c->a_rx, n) != 0) {
        static const char msg[] = "flow control violation";
        relay_send(t->ws, CV_KH_ERROR, c->proto, c->tid, msg, sizeof msg - 1);
        conn_abort(c, "agent sent beyond its window");
        return;
    }
    if (n == 0 && c->proto == CV_KH_TCP && t->native) {
        /* FIN from the agent. */
        if (c->kind == FRONT_SESSION && !c->s->native) {
            agent_fin_to_compat(c);
            return;
        }
        c->fin_to_front = true;
        front_deliver(c, data, len);
        maybe_finish(c);
        return;
    }
    front_deliver(c, data, len);
}

void tunnel_msg(struct tunnel *t, uint8_t *data, size_t len)
{
    struct cv_kh_msg m;
    int rc = t->native ? cv_kh_decode_native(data, len, &m) : cv_kh_decode(data, len, &m);
    if (rc == CV_EAGAIN)
        return; /* shorter than a header: ignored (spec §4) */
    if (m.type == CV_KH_EXPOSE && t->native) {
        exposure_request(t, &m);
        return;
    }
    if (m.type == CV_KH_UNEXPOSE && t->native) {
        exposure_release(t, m.id);
        return;
    }
    if (m.type == CV_KH_PING && t->native) {
        relay_send(t->ws, CV_KH_PONG, CV_KH_TCP, m.id, NULL, 0);
        return;
    }
    struct conn *c = cv_idmap_get(&t->conns, m.id);
    if (c == NULL || rc != 0)
        return;
    switch (m.type) {
    case CV_KH_WINDOW:
        agent_window(c, &m);
        break;
    case CV_KH_DATA:
        agent_data(t, c, data, len);
        break;
    case CV_KH_CONNECTED:
        front_deliver(c, data, len);
        break;
    case CV_KH_CLOSE:
    case CV_KH_ERROR:
        cv_log_debug("agent %s: connection %u ended (%s)", t->id, m.id, cv_kh_type_name(m.type));
        /* A KohakuRiver agent keeps the id until our CLOSE (§11.3). */
        if (!t->native)
            relay_send(t->ws, CV_KH_CLOSE, c->proto, c->tid, NULL, 0);
        conn_detach_tunnel(c);
        c->ending = true;
        front_deliver(c, data, len);
        maybe_finish(c);
        break;
    default:
        break;
    }
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

void tunnel_drain(struct tunnel *t)
{
    resume_paused(t);
    visitors_resume(t);
}

void tunnel_end(struct tunnel *t)
{
    resume_paused(t);
    exposures_close(t);
    names_release(t);
    /* Every session conn on this tunnel ends; its session stays open. */
    while (t->conns.count > 0) {
        struct conn *c = NULL;
        for (size_t i = 0; i < t->conns.cap && c == NULL; i++)
            c = t->conns.slots[i].val;
        conn_detach_tunnel(c);
        c->ending = true;
        cv_buf_reset(&c->fq);
        if (c->kind != FRONT_SESSION) {
            conn_free(c);
            continue;
        }
        uint8_t m[CV_KH_HDR_LEN];
        cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->sid, 0);
        front_deliver(c, m, sizeof m);
        maybe_finish(c);
    }
}

/* ---- front -> agent ------------------------------------------------------ */

static void session_backpressure(struct session *s, struct tunnel *t)
{
    if (cv_ws_is_writable(t->ws) || s->paused_on)
        return;
    cv_ws_pause(s->ws);
    s->paused_on = t;
    s->pnext = t->paused;
    t->paused = s;
}

/* Sends a front message (id already rewritten to tid) to the agent, or
 * queues it until the agent grants credit. Returns -1 if c was aborted, 1
 * if the message went to the agent now, 0 if it waits in c->fq. */
static int to_agent(struct conn *c, uint8_t *msg, size_t len)
{
    struct tunnel *t = c->t;
    bool tcp_data = is_tcp_data(msg[0], msg[1]);
    size_t n = len - CV_KH_HDR_LEN;
    bool credit = !t->native || !tcp_data || c->a_tx.credit >= n;
    if (msg[0] == CV_KH_DATA) {
        c->up += n;
        t->up += n;
        t->r->stats.bytes_to_agents += n;
    }
    if (c->fq.len == 0 && credit) {
        if (t->native && tcp_data)
            c->a_tx.credit -= n;
        int rc = cv_ws_send(t->ws, CV_WS_BINARY, msg, len);
        if (rc != 0) {
            conn_abort(c, send_failure(rc));
            return -1;
        }
        return 1;
    }
    if (queue_push(&c->fq, msg, len) != 0) {
        conn_abort(c, "front sent beyond its window");
        return -1;
    }
    return 0; /* the caller flushes what fits (flush_fq) */
}

/* n payload bytes of the session's reached the agent's queue. */
static void f2a_consumed(struct conn *c, size_t n)
{
    if (!c->s->native || c->proto != CV_KH_TCP)
        return;
    uint32_t inc = cv_flow_rx_consume(&c->f_rx, &c->s->budget, n, c->fq.len == 0);
    if (inc)
        send_window(c->s->ws, c->proto, c->sid, inc);
}

static void session_window(struct conn *c, const struct cv_kh_msg *m)
{
    uint32_t inc;
    if (m->len != 4) {
        conn_abort(c, "malformed WINDOW from session");
        return;
    }
    memcpy(&inc, m->payload, 4);
    if (cv_flow_tx_window(&c->f_tx, ntohl(inc)) != 0) {
        conn_abort(c, "session WINDOW beyond any window");
        return;
    }
    if (c->q.len > 0) {
        flush_q(c, INT32_MAX);
        if (c->q.len == 0) {
            unblock(c);
            session_sync_pause(c->s);
            maybe_finish(c);
        }
    }
}

static void session_data(struct session *s, struct conn *c, uint8_t *data, size_t len)
{
    size_t n = len - CV_KH_HDR_LEN;
    struct tunnel *t = c->t;
    if (s->native && c->proto == CV_KH_TCP) {
        if (cv_flow_rx_data(&c->f_rx, n) != 0) {
            static const char msg[] = "flow control violation";
            relay_send(s->ws, CV_KH_ERROR, c->proto, c->sid, msg, sizeof msg - 1);
            conn_abort(c, "session sent beyond its window");
            return;
        }
        if (n == 0) { /* FIN from the session */
            if (!t->native) {
                uint8_t m[CV_KH_HDR_LEN];
                cv_kh_encode(m, CV_KH_CLOSE, c->proto, c->sid, 0);
                close_at_agent(c);
                c->ending = true;
                front_deliver(c, m, sizeof m);
                maybe_finish(c);
                return;
            }
            c->fin_to_agent = true;
        }
    }
    cv_kh_set_id(data, c->tid);
    int sent = to_agent(c, data, len);
    if (sent < 0)
        return;
    /* Credit goes back to the session only as the agent takes the data. */
    if (sent > 0)
        f2a_consumed(c, n);
    else
        flush_fq(c);
    session_backpressure(s, t);
    if (n == 0)
        maybe_finish(c);
}

static void session_reply(struct session *s, uint8_t proto, uint32_t sid, const char *text)
{
    relay_send(s->ws, CV_KH_ERROR, proto, sid, text, text ? strlen(text) : 0);
}

static struct tunnel *find_current(struct cv_relay *r, const char *id)
{
    for (struct tunnel *t = r->tunnels; t; t = t->next)
        if (t->current && strcmp(t->id, id) == 0)
            return t;
    return NULL;
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
    size_t cap = t->native ? CV_LIMIT_NATIVE_CONNS : CV_LIMIT_TUNNEL_CONNS;
    size_t scap = s->native ? CV_LIMIT_NATIVE_CONNS : CV_LIMIT_SESSION_CONNS;
    if (t->conns.count >= cap || s->conns.count >= scap) {
        session_reply(s, m->proto, m->id, "Too many connections");
        return;
    }
    /* Map before sending, so a fast reply is never lost (§11.9). */
    struct conn *c = conn_new(t, FRONT_SESSION, m->proto);
    if (c == NULL) {
        session_reply(s, m->proto, m->id, "Tunnel send failed");
        return;
    }
    c->s = s;
    c->sid = m->id;
    if (s->native && c->proto == CV_KH_TCP)
        cv_flow_rx_init(&c->f_rx, &s->budget);
    if (cv_idmap_put(&s->conns, c->sid, c) != 0) {
        conn_free(c); /* removing an absent sid from the map is harmless */
        session_reply(s, m->proto, m->id, "Tunnel send failed");
        return;
    }
    if (m->port == 0)
        data[6] = (uint8_t)(s->url_port >> 8), data[7] = (uint8_t)s->url_port;
    cv_kh_set_id(data, c->tid);
    if (cv_ws_send(t->ws, CV_WS_BINARY, data, len) != 0) {
        conn_detach_tunnel(c);
        conn_free(c);
        session_reply(s, m->proto, m->id, "Tunnel send failed");
    }
}

void session_msg(struct session *s, uint8_t *data, size_t len)
{
    struct cv_kh_msg m;
    int rc = s->native ? cv_kh_decode_native(data, len, &m) : cv_kh_decode(data, len, &m);
    if (rc == CV_EAGAIN)
        return;
    if (m.type == CV_KH_CONNECT) {
        session_connect(s, data, len, &m);
        return;
    }
    if (m.type == CV_KH_PING && s->native) {
        relay_send(s->ws, CV_KH_PONG, CV_KH_TCP, m.id, NULL, 0);
        return;
    }
    struct conn *c = cv_idmap_get(&s->conns, m.id);
    if (c == NULL || rc != 0)
        return;
    if (m.type == CV_KH_WINDOW) {
        session_window(c, &m);
        return;
    }
    if (c->ending || c->t == NULL)
        return;
    if (m.type == CV_KH_CLOSE) {
        close_at_agent(c);
        conn_free(c);
    } else if (m.type == CV_KH_DATA) {
        session_data(s, c, data, len);
    }
    /* §6.3: other forward-side types are dropped. */
}

void session_end(struct session *s)
{
    if (s->paused_on) {
        struct tunnel *t = s->paused_on;
        for (struct session **pp = &t->paused; *pp; pp = &(*pp)->pnext) {
            if (*pp == s) {
                *pp = s->pnext;
                break;
            }
        }
        s->paused_on = NULL;
    }
    /* CLOSE to the agent only for this session's live conns (§6.3, §11.7). */
    while (s->conns.count > 0) {
        struct conn *c = NULL;
        for (size_t i = 0; i < s->conns.cap && c == NULL; i++)
            c = s->conns.slots[i].val;
        close_at_agent(c);
        conn_free(c);
    }
}

/* ---- visitors -> agent ---------------------------------------------------- */

void front_data(struct conn *c, const uint8_t *p, size_t n)
{
    struct tunnel *t = c->t;
    if (t == NULL)
        return;
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, CV_KH_DATA, c->proto, c->tid, 0);
    c->up += n;
    t->up += n;
    t->r->stats.bytes_to_agents += n;
    if (c->proto == CV_KH_TCP) {
        /* The visitor is read only within credit (public.c). */
        c->a_tx.credit -= n <= c->a_tx.credit ? n : c->a_tx.credit;
        if (n == 0)
            c->fin_to_agent = true;
    }
    int rc = cv_ws_send2(t->ws, CV_WS_BINARY, hdr, sizeof hdr, p, n);
    if (rc != 0)
        conn_abort(c, send_failure(rc));
    else if (n == 0 && c->proto == CV_KH_TCP)
        maybe_finish(c);
}
