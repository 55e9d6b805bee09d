/* The agent's admin listener (--admin HOST:PORT, off by default).
 *
 *   GET /healthz     200 ok while the process runs
 *   GET /readyz      200 while the tunnel is up, 503 while (re)connecting
 *   GET /api/status  relay URL (token masked), tunnel state, exposures and
 *                    what the relay answered for each, streams, counters
 *   GET /metrics     Prometheus text exposition format 0.0.4 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "agent/internal.h"
#include "core/err.h"
#include "core/log.h"
#include "net/admin.h"
#include "net/http_server.h"
#include "net/ws.h"
#include "tunnel/local.h"

static uint64_t rx_bytes(const struct cv_agent *a)
{
    return a->stats.rx_closed + (a->ws ? cv_ws_rx_bytes(a->ws) : 0);
}

static uint64_t tx_bytes(const struct cv_agent *a)
{
    return a->stats.tx_closed + (a->ws ? cv_ws_tx_bytes(a->ws) : 0);
}

static json_t *exposures_json(const struct cv_agent *a)
{
    static const char *const names[] = {"pending", "exposed", "refused"};
    json_t *arr = json_array();
    for (size_t i = 0; i < a->nxs; i++) {
        const struct cv_agent_expose *x = &a->xs[i].e;
        const struct agent_exposure *st = &a->xs[i];
        static const char *const protos[] = {"tcp", "udp", "http", "tls"};
        json_t *o = json_pack("{s:s,s:i,s:s}", "proto", protos[x->proto & 3], "local_port",
                              (json_int_t)x->local_port, "state",
                              a->established ? names[st->state] : "disconnected");
        if (x->name)
            json_object_set_new(o, "name", json_string(x->name));
        else
            json_object_set_new(o, "requested_port", json_integer(x->public_port));
        if (a->established && st->state == AGENT_X_EXPOSED && x->name)
            json_object_set_new(o, "url", json_string(st->url));
        else if (a->established && st->state == AGENT_X_EXPOSED)
            json_object_set_new(o, "public_port", json_integer(st->public_port));
        if (a->established && st->state == AGENT_X_REFUSED)
            json_object_set_new(o, "reason", json_string(st->reason));
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *status_json(const struct cv_agent *a)
{
    json_t *j = json_pack(
        "{s:s,s:b,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "relay", a->log_url, "connected",
        a->established, "mode", !a->established ? "none" : a->native ? "native" : "kohakuriver",
        "started", (json_int_t)a->started, "streams", (json_int_t)cv_local_count(a->local),
        "streams_total", (json_int_t)a->stats.streams_total, "tunnels_total",
        (json_int_t)a->stats.established_total, "connect_failures_total",
        (json_int_t)a->stats.failures_total, "tunnel_rx_bytes", (json_int_t)rx_bytes(a),
        "tunnel_tx_bytes", (json_int_t)tx_bytes(a), "exposures", exposures_json(a));
    if (a->established)
        json_object_set_new(j, "since", json_integer(a->since));
    return j;
}

static void metrics_text(const struct cv_agent *a, struct cv_buf *b)
{
    cv_prom_metric(b, "culvert_agent_connected", "gauge", "1 while the tunnel to the relay is up.",
                   a->established);
    cv_prom_metric(b, "culvert_agent_streams", "gauge", "Local connections open now.",
                   cv_local_count(a->local));
    cv_prom_metric(b, "culvert_agent_streams_total", "counter",
                   "Local connections opened for the relay.", a->stats.streams_total);
    cv_prom_metric(b, "culvert_agent_stream_refusals_total", "counter",
                   "Connection requests answered with an error.", a->stats.stream_refusals);
    cv_prom_metric(b, "culvert_agent_tunnels_total", "counter",
                   "Tunnels established (the first one and every reconnect).",
                   a->stats.established_total);
    cv_prom_metric(b, "culvert_agent_connect_failures_total", "counter",
                   "Attempts to reach the relay that failed.", a->stats.failures_total);
    cv_prom_head(b, "culvert_agent_tunnel_bytes_total", "counter",
                 "WebSocket bytes on the tunnel, by direction.");
    cv_prom_value(b, "culvert_agent_tunnel_bytes_total", "direction=\"rx\"", rx_bytes(a));
    cv_prom_value(b, "culvert_agent_tunnel_bytes_total", "direction=\"tx\"", tx_bytes(a));
    uint64_t exposed = 0;
    for (size_t i = 0; i < a->nxs; i++)
        exposed += a->established && a->xs[i].state == AGENT_X_EXPOSED;
    cv_prom_metric(b, "culvert_agent_exposures", "gauge", "Public ports the relay holds for us.",
                   exposed);
}

static const char *not_ready(void *ud)
{
    const struct cv_agent *a = ud;
    return a->established ? NULL : "not connected to the relay";
}

static json_t *status_get(void *ud) { return status_json(ud); }
static void metrics_get(void *ud, struct cv_buf *b) { metrics_text(ud, b); }

static void on_request(struct cv_http_server *srv, struct cv_http_req *req)
{
    static const struct cv_admin_api apis[] = {{"/api/status", status_get}};
    static const struct cv_admin_site site = {not_ready, metrics_get, apis, 1};
    cv_admin_serve(req, &site, cv_http_server_data(srv));
}

int agent_admin_start(struct cv_agent *a)
{
    int rc = cv_http_server_start(a->loop, a->o.admin_host, a->o.admin_port, on_request, a,
                                  &a->admin);
    if (rc != 0) {
        cv_log_error("admin listener: cannot listen on %s:%u: %s", a->o.admin_host,
                     a->o.admin_port, cv_strerror(rc));
        a->admin = NULL;
        return rc;
    }
    cv_admin_warn_exposed("agent", a->o.admin_host);
    cv_log_info("admin API on http://%s:%u/ (/api/status, /metrics)", a->o.admin_host,
                cv_http_server_port(a->admin));
    return 0;
}

void agent_admin_stop(struct cv_agent *a)
{
    cv_http_server_close(a->admin);
    a->admin = NULL;
}

uint16_t cv_agent_admin_port(const struct cv_agent *a)
{
    return a->admin ? cv_http_server_port(a->admin) : 0;
}
