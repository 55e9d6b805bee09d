/* Private structures of the relay, shared by relay.c (HTTP front door,
 * registry, auth), stream.c (connections and flow control) and public.c
 * (agent-declared public ports). */
#ifndef CV_RELAY_INTERNAL_H
#define CV_RELAY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "codec/kohaku.h"
#include "core/idmap.h"
#include "net/ws.h"
#include "relay/relay.h"
#include "tunnel/flow.h"

#define RELAY_MAX_ID 256

struct tunnel;
struct session;
struct exposure;
struct visitor;
struct vhost;
struct cv_ratelimit;

/* FRONT_HTTP: a visitor of the HTTP virtual-host front door (vhost.c). */
enum front_kind { FRONT_SESSION, FRONT_TCP, FRONT_UDP, FRONT_HTTP };

/* One forwarded connection (a stream). The back leg is the agent's tunnel
 * (id tid); the front leg is a /ws/forward session (id sid), a visitor TCP
 * socket, or a visitor UDP address on a public port. */
struct conn {
    struct cv_relay *r;
    struct tunnel *t; /* borrowed; NULL once the tunnel side is done */
    uint32_t tid;
    uint8_t proto;
    uint8_t kind;      /* enum front_kind */
    bool ending;       /* tunnel side done; freed once q is delivered */
    bool fin_to_front; /* a FIN from the agent was delivered to the front */
    bool fin_to_agent; /* a FIN from the front was delivered to the agent */
    bool blocked;      /* on s->blocked */
    bool dead;         /* freed: unlinked from everything, memory reaped later */
    struct conn *grave_next;
    struct session *s; /* FRONT_SESSION: borrowed owner */
    uint32_t sid;
    struct conn *bnext;  /* link in s->blocked */
    struct visitor *v;   /* FRONT_TCP/UDP: owned (TCP) or borrowed (UDP) */
    struct hvisitor *hv; /* FRONT_HTTP: the virtual-host visitor (vhost.c) */
    /* agent -> front */
    struct cv_flow_rx a_rx; /* window granted to a native agent */
    struct cv_flow_tx f_tx; /* credit from a native session */
    struct cv_buf q;        /* messages waiting for the front: [u32 len][msg] */
    /* front -> agent */
    struct cv_flow_rx f_rx; /* window granted to a native session */
    struct cv_flow_tx a_tx; /* credit from a native agent */
    struct cv_buf fq;       /* messages waiting for agent credit: [u32 len][msg] */
    uint64_t up, down;      /* payload bytes toward / from the agent (admin API) */
};

struct tunnel {
    struct cv_relay *r;
    struct cv_ws *ws; /* borrowed: freed by net after on_close */
    char id[RELAY_MAX_ID];
    bool current; /* the registration new CONNECTs use */
    bool native;
    uint32_t next_tid;
    struct cv_idmap conns; /* tid -> conn */
    struct cv_flow_budget budget;
    struct tunnel *next, *prev;
    struct session *paused;     /* sessions paused waiting for this tunnel */
    struct exposure *exposures; /* public ports this tunnel holds */
    struct visitor *stalled;    /* visitor sockets waiting for credit or drain */
    struct hvisitor *hstalled;  /* virtual-host visitors waiting likewise */
    int64_t since;              /* unix time of registration */
    uint64_t up, down;          /* payload bytes toward / from this agent */
};

struct session {
    struct cv_relay *r;
    struct cv_ws *ws;
    char container[RELAY_MAX_ID];
    uint16_t url_port;
    uint8_t proto;
    bool native;
    struct cv_idmap conns; /* sid -> conn */
    struct cv_flow_budget budget;
    struct conn *blocked, *blocked_tail;
    struct tunnel *paused_on; /* borrowed */
    struct session *pnext;    /* link in paused_on->paused */
    struct session *next, *prev;
    int64_t since; /* unix time the session opened */
};

/* Handshake latency buckets (seconds, upper bounds) for /metrics. */
#define RELAY_HS_BUCKETS 12

/* Statuses the virtual hosts answer themselves (vhost_answers index). */
#define RELAY_VHOST_STATUSES 8
extern const int relay_vhost_statuses[RELAY_VHOST_STATUSES];

/* Counters for the admin API and /metrics (monotonic unless noted). */
struct relay_stats {
    uint64_t agents_total;      /* agent registrations accepted */
    uint64_t sessions_total;    /* forward sessions accepted */
    uint64_t streams_total;     /* connections opened through agents */
    uint64_t stream_errors;     /* connections aborted (queue full, flow violations, ...) */
    uint64_t auth_failures;     /* handshakes refused with 401 */
    uint64_t expose_refusals;   /* EXPOSE requests refused */
    uint64_t bytes_to_agents;   /* payload bytes */
    uint64_t bytes_from_agents;
    uint64_t hs_count;          /* WebSocket handshakes completed */
    double hs_sum;              /* seconds */
    uint64_t hs_bucket[RELAY_HS_BUCKETS]; /* not cumulative: one count per bucket */
    uint64_t vhost_requests;    /* request heads forwarded by the HTTP virtual hosts */
    uint64_t vhost_answers[RELAY_VHOST_STATUSES]; /* the relay's own answers, by status */
    uint64_t vhost_conns[2];       /* visitor connections accepted: [0] HTTP, [1] HTTPS */
    uint64_t vhost_tls_handshakes; /* HTTPS visitors' TLS handshakes completed */
    uint64_t vhost_tls_failures;   /* ... and failed (bad ClientHello, alerts) */
    uint64_t sni_rate_limited;     /* SNI router connections closed by the per-address rate */
};

struct relay_admin;

/* A named exposure (docs/PROTOCOL.md §6): NAME.BASE routed to an agent's
 * local port, by Host (kind CV_KH_HTTP, vhost.c) or by SNI (CV_KH_TLS).
 * One agent holds a (kind, name) at a time. When its tunnel ends the entry
 * stays, with t NULL, so that visitors learn the agent is gone (502) rather
 * than that the name is unknown (404); the next claim takes it over. */
struct named {
    struct named *next;
    struct tunnel *t;   /* holder; NULL once its tunnel ended */
    uint8_t kind;       /* CV_KH_HTTP or CV_KH_TLS */
    uint16_t local_port;
    uint32_t num;       /* the agent's exposure number */
    int64_t since;      /* unix time claimed */
    int64_t gone;       /* unix time the holder left (t NULL) */
    char agent[RELAY_MAX_ID];
    char name[CV_KH_NAME_MAX + 1];
};

struct cv_relay {
    uv_loop_t *loop;
    struct cv_relay_opts opts;
    struct cv_http_server *srv;
    struct tunnel *tunnels;
    struct session *sessions;
    int closing_handles; /* public listeners and visitors still closing */
    struct conn *graveyard; /* dead conns, freed from the reaper timer */
    uv_timer_t reaper;
    /* TCP visitors between two writes that keep their buffers' storage for
     * the next one; the reaper timer frees it once they stay idle. */
    struct visitor *spare;
    uint64_t spare_since;
    bool stopping;
    struct relay_stats stats;
    struct relay_admin *admin; /* NULL unless opts.admin_host */
    int64_t started;           /* unix time */
    struct named *names;       /* named exposures, held and gone */
    size_t names_gone;         /* entries with t NULL (bounded) */
    struct vhost *vhost;       /* HTTP virtual hosts; NULL unless opts.http_host */
    struct vhost *vhost_tls;   /* the same over TLS; NULL unless opts.https_host */
    char domain[256];          /* opts.domain, lowercased (opts.domain points here) */
    /* Owned copies of the address strings in opts (opts points here): the
     * caller's strings may go away, e.g. on a config reload. */
    char own_host[64], own_public_bind[64], own_admin_host[64], own_http_host[64],
        own_https_host[64], own_tls_listen_host[64];
    uint16_t tls_front_port;   /* port routing tls names by SNI; 0: none (tlsfront.c sets it) */
    struct tlsfront *tlsfront; /* the SNI router; NULL unless opts.tls_listen_host */
};

/* stream.c */
int relay_send(struct cv_ws *ws, uint8_t type, uint8_t proto, uint32_t id, const void *p, size_t n);
struct conn *conn_new(struct tunnel *t, uint8_t kind, uint8_t proto);
/* Unlinks c from everything at once and frees its memory after the current
 * callback (so pointers held up the stack stay valid; check c->dead). */
void conn_free(struct conn *c);
void conns_reap(struct cv_relay *r);
void visitors_trim(struct cv_relay *r);
/* Runs the reaper (conns_reap, visitors_trim) in ms, replacing any earlier
 * schedule. */
void reaper_start(struct cv_relay *r, uint64_t ms);
void conn_abort(struct conn *c, const char *why);
void close_at_agent(struct conn *c);
void tunnel_msg(struct tunnel *t, uint8_t *data, size_t len);
void tunnel_drain(struct tunnel *t);
void tunnel_end(struct tunnel *t);
void session_msg(struct session *s, uint8_t *data, size_t len);
void session_drain(struct session *s);
void session_end(struct session *s);
/* Data from a visitor (TCP or UDP) toward the agent; n == 0 on TCP is FIN. */
void front_data(struct conn *c, const uint8_t *p, size_t n);
/* A visitor socket wrote n bytes of what the agent sent (flow credit). */
void front_consumed(struct conn *c, size_t n, bool idle);

/* public.c */
void exposure_request(struct tunnel *t, const struct cv_kh_msg *m);
void exposures_close(struct tunnel *t);
/* UNEXPOSE: the agent releases exposure num (unknown numbers are ignored). */
void exposure_release(struct tunnel *t, uint32_t num);
/* Calls fn for each public port t holds (admin API). */
void exposures_each(struct tunnel *t,
                    void (*fn)(void *ud, uint8_t proto, uint16_t local_port, uint16_t public_port),
                    void *ud);
/* Agent -> visitor data for a public-port conn (n == 0 on TCP is FIN).
 * Returns false if the visitor cannot take it (UDP: dropped). */
bool visitor_write(struct conn *c, const uint8_t *p, size_t n);
/* The conn is going away: close the visitor side too. */
void visitor_detach(struct conn *c);
/* Makes a TCP visitor for c (FRONT_TCP, from named_connect) on the
 * connected socket fd (owned from now on, closed on failure) and sends
 * first[0..n) (bytes already read from it, within the initial credit) to
 * the agent before anything else. */
void visitor_adopt(struct conn *c, int fd, const uint8_t *first, size_t n);
/* Agent credit arrived or its queue drained: resume stalled visitors. */
void visitors_resume(struct tunnel *t);

/* named.c */
/* EXPOSE with proto CV_KH_HTTP or CV_KH_TLS: claims a name for t. */
void named_request(struct tunnel *t, const struct cv_kh_msg *m);
/* UNEXPOSE num: t's name with that exposure number becomes gone. Returns
 * false if t holds no such name. */
bool name_release(struct tunnel *t, uint32_t num);
/* t ended: its names become gone (kept for 502 pages). */
void names_release(struct tunnel *t);
void names_free(struct cv_relay *r);
/* The entry for (kind, name[0..len)), compared case-insensitively, held or
 * gone (check n->t); NULL if no agent ever claimed it (or it was evicted). */
struct named *relay_find_name(struct cv_relay *r, uint8_t kind, const char *name, size_t len);
/* Opens a TCP stream to n's agent local port: a new conn of front kind
 * `kind` (the caller sets c->v or c->hv) and a CONNECT sent. NULL if the
 * agent is gone, at its connection limit, or its link failed. Data then
 * flows as for public ports: front_data() toward the agent within
 * c->a_tx.credit, the agent's data through visitor_write(), credit back
 * with front_consumed(). */
struct conn *named_connect(struct named *n, uint8_t kind);
/* Where visitors reach n: http://NAME.BASE[:PORT]/ or NAME.BASE:PORT. */
void named_url(struct cv_relay *r, const struct named *n, char *out, size_t cap);
/* Calls fn for each name t holds (admin API). */
void names_each(struct tunnel *t, void (*fn)(void *ud, const struct named *n), void *ud);

/* tlsfront.c: the SNI router (--tls-listen). */
int tlsfront_start(struct cv_relay *r);
/* Applies r->opts.conn_rate/burst to f (NULL: none). 0 or CV_ENOMEM. */
int tlsfront_set_limits(struct cv_relay *r, struct tlsfront *f);
void tlsfront_stop(struct cv_relay *r);

/* vhost.c */
int vhost_start(struct cv_relay *r);
void vhost_stop(struct cv_relay *r);
/* The per-address rate in r->opts changed (reload). */
int vhost_set_limits(struct cv_relay *r);
/* Hooks stream.c and public.c call for FRONT_HTTP conns. */
bool vhost_write(struct conn *c, const uint8_t *p, size_t n);
void vhost_detach(struct conn *c);
void vhost_error(struct conn *c, const uint8_t *p, size_t n);
void vhosts_resume(struct tunnel *t);
/* c's visitor came through --https-listen (admin API). */
bool vhost_is_tls(const struct conn *c);

/* admin.c */
int relay_admin_start(struct cv_relay *r);
void relay_admin_stop(struct cv_relay *r);
/* A WebSocket handshake took ns nanoseconds (accept to 101). */
void relay_stats_handshake(struct relay_stats *st, uint64_t ns);

/* relay.c */
void relay_handle_closed(uv_handle_t *h);
/* Replaces *slot (freed) with a per-address limiter for r->opts.conn_rate
 * and conn_burst, or NULL when the rate is 0. Returns 0, or CV_ENOMEM with
 * *slot unchanged. */
int relay_rate_renew(struct cv_relay *r, struct cv_ratelimit **slot);
void relay_maybe_free(struct cv_relay *r);

#endif
