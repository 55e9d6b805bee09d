/* The relay's admin listener (--admin HOST:PORT, off by default): a JSON
 * API over the registry and Prometheus text at /metrics. Read-only; it
 * binds where it is told (loopback in the examples) and has no auth of its
 * own, so a non-loopback address is warned about at start.
 *
 *   GET /healthz       200 ok while the process runs
 *   GET /readyz        200 while accepting agents, 503 once stopping
 *   GET /api/agents    agents: id, peer, mode, since, streams, bytes, exposures
 *   GET /api/sessions  forward sessions
 *   GET /api/streams   every connection through an agent, with byte counters
 *   GET /api/stats     the counters behind /metrics, as JSON
 *   GET /metrics       Prometheus text exposition format 0.0.4 */
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "net/admin.h"
#include "net/http_server.h"
#include "relay/internal.h"

struct relay_admin {
    struct cv_http_server *srv;
};

/* Upper bounds of the handshake latency buckets, in seconds; the last
 * bucket of stats->hs_bucket counts everything above them (+Inf). */
static const double hs_bounds[RELAY_HS_BUCKETS - 1] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                        0.005,  0.01,    0.025,  0.05,  0.1,
                                                        0.5};

void relay_stats_handshake(struct relay_stats *st, uint64_t ns)
{
    double s = (double)ns / 1e9;
    size_t i = 0;
    while (i < RELAY_HS_BUCKETS - 1 && s > hs_bounds[i])
        i++;
    st->hs_bucket[i]++;
    st->hs_count++;
    st->hs_sum += s;
}

static const char *front_name(const struct conn *c)
{
    uint8_t kind = c->kind;
    if (kind == FRONT_HTTP && vhost_is_tls(c))
        return "https-vhost";
    static const char *const names[] = {
        [FRONT_SESSION] = "session", [FRONT_TCP] = "tcp-port", [FRONT_UDP] = "udp-port",
        [FRONT_HTTP] = "http-vhost"};
    return kind <= FRONT_HTTP ? names[kind] : "?";
}

static const char *proto_name(uint8_t proto) { return proto == CV_KH_UDP ? "udp" : "tcp"; }

static void add_exposure(void *ud, uint8_t proto, uint16_t local_port, uint16_t public_port)
{
    json_array_append_new(ud, json_pack("{s:s,s:i,s:i}", "proto", proto_name(proto), "local_port",
                                        (json_int_t)local_port, "public_port",
                                        (json_int_t)public_port));
}

struct names_ctx {
    struct cv_relay *r;
    json_t *arr;
};

static void add_name(void *ud, const struct named *n)
{
    struct names_ctx *x = ud;
    char url[512];
    named_url(x->r, n, url, sizeof url);
    json_array_append_new(x->arr, json_pack("{s:s,s:i,s:s,s:s}", "proto",
                                            n->kind == CV_KH_TLS ? "tls" : "http", "local_port",
                                            (json_int_t)n->local_port, "name", n->name, "url",
                                            url));
}

static json_t *agents_json(struct cv_relay *r)
{
    json_t *arr = json_array();
    for (struct tunnel *t = r->tunnels; t; t = t->next) {
        json_t *xs = json_array();
        exposures_each(t, add_exposure, xs);
        struct names_ctx nx = {r, xs};
        names_each(t, add_name, &nx);
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:b,s:I,s:I,s:I,s:I,s:o}", "id", t->id, "peer",
                           cv_ws_peer(t->ws), "mode", t->native ? "native" : "kohakuriver",
                           "current", t->current, "since", (json_int_t)t->since, "streams",
                           (json_int_t)t->conns.count, "bytes_to_agent", (json_int_t)t->up,
                           "bytes_from_agent", (json_int_t)t->down, "exposures", xs));
    }
    return json_pack("{s:o}", "agents", arr);
}

static json_t *sessions_json(struct cv_relay *r)
{
    json_t *arr = json_array();
    for (struct session *s = r->sessions; s; s = s->next)
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:i,s:s,s:s,s:I,s:I}", "peer", cv_ws_peer(s->ws), "agent",
                           s->container, "port", (json_int_t)s->url_port, "proto",
                           proto_name(s->proto), "mode", s->native ? "native" : "kohakuriver",
                           "since", (json_int_t)s->since, "streams", (json_int_t)s->conns.count));
    return json_pack("{s:o}", "sessions", arr);
}

static json_t *streams_json(struct cv_relay *r)
{
    json_t *arr = json_array();
    for (struct tunnel *t = r->tunnels; t; t = t->next) {
        for (size_t i = 0; i < t->conns.cap; i++) {
            const struct conn *c = t->conns.slots[i].val;
            if (c == NULL)
                continue;
            json_array_append_new(arr, json_pack("{s:s,s:I,s:s,s:s,s:I,s:I}", "agent", t->id, "id",
                                                 (json_int_t)c->tid, "proto", proto_name(c->proto),
                                                 "front", front_name(c), "bytes_to_agent",
                                                 (json_int_t)c->up, "bytes_from_agent",
                                                 (json_int_t)c->down));
        }
    }
    return json_pack("{s:o}", "streams", arr);
}

struct gauges {
    uint64_t agents_native, agents_compat, sessions, streams, exposures, names;
};

static void count_exposure(void *ud, uint8_t proto, uint16_t l, uint16_t p)
{
    (void)proto, (void)l, (void)p;
    ((struct gauges *)ud)->exposures++;
}

static void count_name(void *ud, const struct named *n)
{
    (void)n;
    ((struct gauges *)ud)->names++;
}

static void gauges(struct cv_relay *r, struct gauges *g)
{
    memset(g, 0, sizeof *g);
    for (struct tunnel *t = r->tunnels; t; t = t->next) {
        if (t->native)
            g->agents_native++;
        else
            g->agents_compat++;
        g->streams += t->conns.count;
        exposures_each(t, count_exposure, g);
        names_each(t, count_name, g);
    }
    for (struct session *s = r->sessions; s; s = s->next)
        g->sessions++;
}

static json_t *stats_json(struct cv_relay *r)
{
    const struct relay_stats *st = &r->stats;
    struct gauges g;
    gauges(r, &g);
    json_t *o = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "started",
        (json_int_t)r->started, "agents", (json_int_t)(g.agents_native + g.agents_compat),
        "sessions", (json_int_t)g.sessions, "streams", (json_int_t)g.streams, "exposures",
        (json_int_t)g.exposures, "agents_total", (json_int_t)st->agents_total, "sessions_total",
        (json_int_t)st->sessions_total, "streams_total", (json_int_t)st->streams_total,
        "stream_errors_total", (json_int_t)st->stream_errors, "auth_failures_total",
        (json_int_t)st->auth_failures, "expose_refusals_total", (json_int_t)st->expose_refusals,
        "bytes_to_agents_total", (json_int_t)st->bytes_to_agents, "bytes_from_agents_total",
        (json_int_t)st->bytes_from_agents, "handshakes_total", (json_int_t)st->hs_count,
        "handshake_seconds_sum", st->hs_sum);
    json_t *v = json_pack("{s:I,s:{s:I,s:I},s:I,s:I}", "requests_total",
                          (json_int_t)st->vhost_requests, "connections_total", "http",
                          (json_int_t)st->vhost_conns[0], "https", (json_int_t)st->vhost_conns[1],
                          "tls_handshakes_total", (json_int_t)st->vhost_tls_handshakes,
                          "tls_handshake_failures_total", (json_int_t)st->vhost_tls_failures);
    if (o != NULL && v != NULL)
        json_object_set_new(o, "vhost", v);
    else
        json_decref(v);
    return o;
}

static void metrics_text(struct cv_relay *r, struct cv_buf *b)
{
    const struct relay_stats *st = &r->stats;
    struct gauges g;
    gauges(r, &g);
    cv_prom_head(b, "culvert_relay_agents", "gauge", "Agents connected now, by protocol mode.");
    cv_prom_value(b, "culvert_relay_agents", "mode=\"native\"", g.agents_native);
    cv_prom_value(b, "culvert_relay_agents", "mode=\"kohakuriver\"", g.agents_compat);
    cv_prom_metric(b, "culvert_relay_sessions", "gauge", "Forward sessions open now.", g.sessions);
    cv_prom_metric(b, "culvert_relay_streams", "gauge", "Connections through agents open now.",
                   g.streams);
    cv_prom_metric(b, "culvert_relay_exposures", "gauge", "Public ports held for agents now.",
                   g.exposures);
    cv_prom_metric(b, "culvert_relay_agent_registrations_total", "counter",
                   "Agent registrations accepted.", st->agents_total);
    cv_prom_metric(b, "culvert_relay_sessions_total", "counter", "Forward sessions accepted.",
                   st->sessions_total);
    cv_prom_metric(b, "culvert_relay_streams_total", "counter",
                   "Connections opened through agents.", st->streams_total);
    cv_prom_metric(b, "culvert_relay_stream_errors_total", "counter",
                   "Connections aborted by the relay.", st->stream_errors);
    cv_prom_metric(b, "culvert_relay_auth_failures_total", "counter",
                   "Handshakes refused for bad credentials.", st->auth_failures);
    cv_prom_metric(b, "culvert_relay_expose_refusals_total", "counter",
                   "Public port requests refused.", st->expose_refusals);
    cv_prom_metric(b, "culvert_relay_rate_limited_total", "counter",
                   "Connections refused by the per-address rate limit (agent listener and SNI "
                   "router; the virtual hosts count theirs as answers with status 429).",
                   (r->srv ? cv_http_server_rate_limited(r->srv) : 0) + st->sni_rate_limited);
    cv_prom_metric(b, "culvert_relay_names", "gauge",
                   "Names (http and tls) held for agents now.", g.names);
    cv_prom_metric(b, "culvert_relay_vhost_requests_total", "counter",
                   "Requests forwarded by the HTTP virtual hosts.", st->vhost_requests);
    cv_prom_head(b, "culvert_relay_vhost_connections_total", "counter",
                 "Visitor connections accepted by the virtual hosts, by scheme.");
    cv_prom_value(b, "culvert_relay_vhost_connections_total", "scheme=\"http\"",
                  st->vhost_conns[0]);
    cv_prom_value(b, "culvert_relay_vhost_connections_total", "scheme=\"https\"",
                  st->vhost_conns[1]);
    cv_prom_head(b, "culvert_relay_vhost_tls_handshakes_total", "counter",
                 "TLS handshakes of HTTPS virtual-host visitors, by result.");
    cv_prom_value(b, "culvert_relay_vhost_tls_handshakes_total", "result=\"ok\"",
                  st->vhost_tls_handshakes);
    cv_prom_value(b, "culvert_relay_vhost_tls_handshakes_total", "result=\"failed\"",
                  st->vhost_tls_failures);
    cv_prom_head(b, "culvert_relay_vhost_answers_total", "counter",
                 "Answers the HTTP virtual hosts gave themselves (unknown host, agent gone, ...).");
    for (size_t i = 0; i < RELAY_VHOST_STATUSES; i++) {
        char lbl[32];
        snprintf(lbl, sizeof lbl, "status=\"%d\"", relay_vhost_statuses[i]);
        cv_prom_value(b, "culvert_relay_vhost_answers_total", lbl, st->vhost_answers[i]);
    }
    cv_prom_head(b, "culvert_relay_bytes_total", "counter",
                 "Payload bytes carried, by direction relative to the agents.");
    cv_prom_value(b, "culvert_relay_bytes_total", "direction=\"to_agents\"", st->bytes_to_agents);
    cv_prom_value(b, "culvert_relay_bytes_total", "direction=\"from_agents\"",
                  st->bytes_from_agents);
    cv_prom_head(b, "culvert_relay_handshake_seconds", "histogram",
                 "WebSocket handshakes of agents and sessions, TCP accept to 101.");
    uint64_t cum = 0;
    char le[32];
    for (size_t i = 0; i < RELAY_HS_BUCKETS - 1; i++) {
        cum += st->hs_bucket[i];
        snprintf(le, sizeof le, "le=\"%g\"", hs_bounds[i]);
        cv_prom_value(b, "culvert_relay_handshake_seconds_bucket", le, cum);
    }
    cv_prom_value(b, "culvert_relay_handshake_seconds_bucket", "le=\"+Inf\"", st->hs_count);
    char line[96];
    int n = snprintf(line, sizeof line, "culvert_relay_handshake_seconds_sum %.9f\n", st->hs_sum);
    cv_buf_append(b, line, (size_t)n);
    cv_prom_value(b, "culvert_relay_handshake_seconds_count", NULL, st->hs_count);
    cv_prom_metric(b, "culvert_relay_start_time_seconds", "gauge", "Unix time the relay started.",
                   (uint64_t)r->started);
}

static const char *not_ready(void *ud)
{
    return ((const struct cv_relay *)ud)->stopping ? "stopping" : NULL;
}

static json_t *agents_get(void *ud) { return agents_json(ud); }
static json_t *sessions_get(void *ud) { return sessions_json(ud); }
static json_t *streams_get(void *ud) { return streams_json(ud); }
static json_t *stats_get(void *ud) { return stats_json(ud); }
static void metrics_get(void *ud, struct cv_buf *b) { metrics_text(ud, b); }

static void on_request(struct cv_http_server *srv, struct cv_http_req *req)
{
    static const struct cv_admin_api apis[] = {{"/api/agents", agents_get},
                                               {"/api/sessions", sessions_get},
                                               {"/api/streams", streams_get},
                                               {"/api/stats", stats_get}};
    static const struct cv_admin_site site = {not_ready, metrics_get, apis,
                                              sizeof apis / sizeof apis[0]};
    cv_admin_serve(req, &site, cv_http_server_data(srv));
}

int relay_admin_start(struct cv_relay *r)
{
    struct relay_admin *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CV_ENOMEM;
    int rc = cv_http_server_start(r->loop, r->opts.admin_host, r->opts.admin_port, on_request, r,
                                  &a->srv);
    if (rc != 0) {
        cv_log_error("admin listener: cannot listen on %s:%u: %s", r->opts.admin_host,
                     r->opts.admin_port, cv_strerror(rc));
        free(a);
        return rc;
    }
    r->admin = a;
    const char *host = r->opts.admin_host;
    cv_admin_warn_exposed("relay", host);
    cv_log_info("admin API on http://%s:%u/ (/api/agents, /metrics)", host,
                cv_http_server_port(a->srv));
    return 0;
}

void relay_admin_stop(struct cv_relay *r)
{
    if (r->admin == NULL)
        return;
    cv_http_server_close(r->admin->srv);
    free(r->admin);
    r->admin = NULL;
}

uint16_t cv_relay_admin_port(const struct cv_relay *r)
{
    return r->admin ? cv_http_server_port(r->admin->srv) : 0;
}
