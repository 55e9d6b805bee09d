/* `culvert demo`: a relay, an agent, a sample HTTP service and a forward in
 * one process on loopback, wired the way they would be on separate hosts:
 * browser/curl -> forward listener -> relay /ws/forward -> agent tunnel ->
 * agent -> 127.0.0.1:service. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "agent/agent.h"
#include "cli/cmds.h"
#include "cli/signals.h"
#include "codec/kohaku.h"
#include "core/err.h"
#include "core/log.h"
#include "forward/forward.h"
#include "net/addr.h"
#include "net/http_server.h"
#include "relay/relay.h"

#define DEMO_ID "demo"
#define FORWARD_TRIES 50

struct demo {
    uv_loop_t *loop;
    struct cv_relay *relay;
    struct cv_http_server *service;
    struct cv_agent *agent;
    struct cv_forward *fwd;
    struct cv_cli_signals sig;
    uv_timer_t retry;
    char relay_url[64];
    uint16_t local_port;
    int tries;
    unsigned hits;
    bool stopping;
    int status;
};

static void demo_stop(struct demo *d, int status);

static void on_service(struct cv_http_server *srv, struct cv_http_req *req)
{
    struct demo *d = cv_http_server_data(srv);
    char body[512];
    int n = snprintf(body, sizeof body,
                     "Hello from the culvert demo service!\n"
                     "You asked for %.200s; this is request %u.\n"
                     "Path: forward -> relay (/ws/forward) -> agent tunnel -> 127.0.0.1:%u\n",
                     cv_http_req_path(req), ++d->hits, cv_http_server_port(srv));
    cv_http_req_respond(req, 200, "text/plain; charset=utf-8", body, (size_t)n);
}

static void on_forward_ready(struct cv_forward *f, const struct sockaddr *bound, void *data)
{
    (void)f;
    struct demo *d = data;
    char addr[CV_ADDR_STRLEN];
    cv_addr_str(bound, addr, sizeof addr);
    printf("\nculvert demo is running (relay %s, agent \"%s\", service on 127.0.0.1:%u)\n"
           "  URL:  http://%s/\n"
           "  try:  curl http://%s/hello\n"
           "Press Ctrl-C to stop.\n",
           d->relay_url, DEMO_ID, cv_http_server_port(d->service), addr, addr);
    fflush(stdout);
}

static void start_forward(uv_timer_t *t);

static void on_forward_done(struct cv_forward *f, int status, const char *msg, void *data)
{
    (void)f;
    struct demo *d = data;
    d->fwd = NULL;
    if (d->stopping)
        return;
    /* The agent may not have registered yet: try again shortly. */
    if (++d->tries < FORWARD_TRIES) {
        uv_timer_start(&d->retry, start_forward, 100, 0);
        return;
    }
    fprintf(stderr, "culvert demo: forward failed: %s (status %d)\n", msg ? msg : "", status);
    demo_stop(d, 1);
}

static void start_forward(uv_timer_t *t)
{
    struct demo *d = t->data;
    struct cv_forward_opts o = {
        .relay_url = d->relay_url,
        .container_id = DEMO_ID,
        .remote_port = cv_http_server_port(d->service),
        .local_host = "127.0.0.1",
        .local_port = d->local_port,
        .proto = CV_KH_TCP,
        .native = true,
    };
    int rc = cv_forward_start(d->loop, &o, on_forward_ready, on_forward_done, d, &d->fwd);
    if (rc != 0) {
        fprintf(stderr, "culvert demo: cannot start forward: %s\n", cv_strerror(rc));
        demo_stop(d, 1);
    }
}

static void on_agent_done(struct cv_agent *a, enum cv_agent_end end, void *data)
{
    (void)a;
    (void)end;
    struct demo *d = data;
    d->agent = NULL;
}

static void demo_stop(struct demo *d, int status)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->status = status;
    if (d->fwd)
        cv_forward_stop(d->fwd);
    if (d->agent)
        cv_agent_stop(d->agent);
    cv_relay_stop(d->relay);
    cv_http_server_close(d->service);
    uv_close((uv_handle_t *)&d->retry, NULL);
    cv_cli_signals_close(&d->sig);
}

static void on_stop_signal(void *data)
{
    printf("stopping\n");
    fflush(stdout);
    demo_stop(data, 0);
}

static int parse(int argc, char **argv, struct demo *d)
{
    static const struct option longopts[] = {{"local-port", required_argument, NULL, 'l'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:h", longopts, NULL)) != -1) {
        if (c == 'l' && cv_port_parse(optarg, &d->local_port) == 0)
            continue;
        if (c == 'h') {
            printf("usage: culvert demo [-l LOCAL_PORT]\n\n"
                   "Runs a relay, an agent and a sample HTTP service on 127.0.0.1 in one\n"
                   "process, forwards a local port (default: any free one) to the service\n"
                   "through the tunnel, and prints the URL. Ctrl-C stops everything.\n");
            return 0;
        }
        fprintf(stderr, "usage: culvert demo [-l LOCAL_PORT]\n");
        return 2;
    }
    return -1;
}

static int start_all(struct demo *d)
{
    struct cv_relay_opts ro;
    cv_relay_opts_default(&ro);
    ro.port = 0;
    ro.allow_anonymous = true; /* loopback only, one process */
    int rc = cv_relay_start(d->loop, &ro, &d->relay);
    if (rc != 0) {
        fprintf(stderr, "culvert demo: relay: %s\n", cv_strerror(rc));
        return 1;
    }
    snprintf(d->relay_url, sizeof d->relay_url, "ws://127.0.0.1:%u", cv_relay_port(d->relay));
    rc = cv_http_server_start(d->loop, "127.0.0.1", 0, on_service, d, &d->service);
    if (rc == 0) {
        struct cv_agent_opts ao;
        cv_agent_opts_default(&ao);
        ao.runner_url = d->relay_url;
        ao.container_id = DEMO_ID;
        ao.reconnect_delay_ms = 1000;
        rc = cv_agent_start(d->loop, &ao, on_agent_done, d, &d->agent);
    }
    if (rc != 0) {
        fprintf(stderr, "culvert demo: %s\n", cv_strerror(rc));
        return 1;
    }
    return 0;
}

int cv_cmd_demo(int argc, char **argv)
{
    struct demo d = {0};
    int rc = parse(argc, argv, &d);
    if (rc >= 0)
        return rc;
    d.loop = uv_default_loop();
    uv_timer_init(d.loop, &d.retry);
    d.retry.data = &d;
    cv_cli_signals_start(d.loop, &d.sig, on_stop_signal, &d);
    if (start_all(&d) != 0) {
        if (d.relay)
            cv_relay_stop(d.relay);
        if (d.service)
            cv_http_server_close(d.service);
        d.stopping = true;
        uv_close((uv_handle_t *)&d.retry, NULL);
        cv_cli_signals_close(&d.sig);
        uv_run(d.loop, UV_RUN_DEFAULT);
        return 1;
    }
    uv_timer_start(&d.retry, start_forward, 200, 0);
    uv_run(d.loop, UV_RUN_DEFAULT);
    uv_loop_close(d.loop);
    return d.status;
}
