/* ws_echo_server: a WebSocket echo server on culvert's HTTP server and
 * WebSocket layer, for the conformance tests (tests/conformance/).
 *
 *   ws_echo_server --listen HOST:PORT [--max-msg BYTES]
 *
 * Every upgrade request becomes a WebSocket that sends each text or binary
 * message back with the same opcode; any other request gets 404. Once bound
 * it prints "listening on HOST:PORT" on stdout. SIGTERM or SIGINT stop it:
 * the listener closes, open WebSockets get close 1001, and it exits 0. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/err.h"
#include "net/http_server.h"
#include "net/ws.h"

/* One open WebSocket, kept in a list so a signal can close them all. */
struct peer {
    struct cv_ws *ws; /* borrowed: freed by the library after on_close */
    bool paused;
    struct peer *prev;
    struct peer *next;
};

struct server {
    uv_loop_t *loop;
    struct cv_http_server *http; /* NULL once closed */
    struct cv_ws_opts opts;
    struct peer *peers; /* owned list */
    uv_signal_t sigterm;
    uv_signal_t sigint;
    bool stopping;
};

static struct server g;

static void on_msg(struct cv_ws *ws, uint8_t opcode, uint8_t *data, size_t len)
{
    struct peer *p = cv_ws_data(ws);
    int rc = cv_ws_send(ws, opcode, data, len);

    if (rc != 0) {
        fprintf(stderr, "ws_echo_server: %s: echo of %zu bytes failed: %s\n", cv_ws_peer(ws),
                len, cv_strerror(rc));
        cv_ws_close(ws, CV_WS_INTERNAL, "echo failed");
        return;
    }
    /* Backpressure: stop reading while the echo queue is above its high mark. */
    if (!cv_ws_is_writable(ws) && !p->paused) {
        p->paused = true;
        cv_ws_pause(ws);
    }
}

static void on_drain(struct cv_ws *ws)
{
    struct peer *p = cv_ws_data(ws);

    if (p->paused) {
        p->paused = false;
        cv_ws_resume(ws);
    }
}

static void on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    struct peer *p = cv_ws_data(ws);

    fprintf(stderr, "ws_echo_server: %s: closed %u %s\n", cv_ws_peer(ws), code, reason);
    if (p->prev)
        p->prev->next = p->next;
    else
        g.peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p);
}

static bool wants_upgrade(const struct cv_http_head *h)
{
    /* Anything that looks like a WebSocket handshake goes to
     * cv_http_req_upgrade, which answers 400/426 when it is malformed. */
    return h->upgrade || cv_http_find(h, "Upgrade") || cv_http_find(h, "Sec-WebSocket-Key");
}

static void on_request(struct cv_http_server *srv, struct cv_http_req *req)
{
    static const char not_found[] = "not found\n";
    const struct cv_ws_cbs cbs = {
        .on_open = NULL, .on_msg = on_msg, .on_close = on_close, .on_drain = on_drain};
    struct peer *p;
    struct cv_ws *ws;
    int rc;

    (void)srv;
    if (!wants_upgrade(cv_http_req_head(req))) {
        cv_http_req_respond(req, 404, "text/plain", not_found, sizeof(not_found) - 1);
        return;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        cv_http_req_respond(req, 503, "text/plain", "", 0);
        return;
    }
    rc = cv_http_req_upgrade(req, &g.opts, &cbs, p, &ws);
    if (rc != 0) {
        free(p);
        return;
    }
    p->ws = ws;
    p->next = g.peers;
    if (g.peers)
        g.peers->prev = p;
    g.peers = p;
}

static void on_signal(uv_signal_t *sig, int signum)
{
    (void)sig;
    fprintf(stderr, "ws_echo_server: signal %d, stopping\n", signum);
    if (g.stopping)
        return;
    g.stopping = true;
    if (g.http) {
        cv_http_server_close(g.http);
        g.http = NULL;
    }
    /* on_close may run later and unlink; cv_ws_close never calls it
     * synchronously (net/ws.h), so walking the list here is safe. */
    for (struct peer *p = g.peers; p; p = p->next)
        cv_ws_close(p->ws, CV_WS_GOING_AWAY, "server stopping");
    uv_close((uv_handle_t *)&g.sigterm, NULL);
    uv_close((uv_handle_t *)&g.sigint, NULL);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (!s || !*s || *s == '-')
        return CV_EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end)
        return CV_EINVAL;
    *out = v;
    return 0;
}

/* Splits "host:port" (the last colon separates; "[v6]:port" allowed). */
static int parse_listen(const char *s, char *host, size_t hostsz, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    uint64_t v;
    size_t hl;

    if (!colon)
        return CV_EINVAL;
    hl = (size_t)(colon - s);
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostsz || parse_u64(colon + 1, &v) != 0 || v > 65535)
        return CV_EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (uint16_t)v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: ws_echo_server --listen HOST:PORT [--max-msg BYTES]\n");
}

int main(int argc, char **argv)
{
    const char *listen = NULL;
    char host[256];
    uint16_t port = 0;
    int rc;

    signal(SIGPIPE, SIG_IGN);
    cv_ws_opts_default(&g.opts);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strcmp(argv[i], "--max-msg") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &g.opts.max_msg) != 0 || g.opts.max_msg == 0) {
                fprintf(stderr, "ws_echo_server: bad --max-msg '%s': want a byte count > 0\n",
                        argv[i]);
                return 2;
            }
        } else {
            usage();
            return 2;
        }
    }
    if (!listen) {
        usage();
        return 2;
    }
    if (parse_listen(listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ws_echo_server: bad --listen '%s': want HOST:PORT\n", listen);
        return 2;
    }

    g.loop = uv_default_loop();
    rc = cv_http_server_start(g.loop, host, port, on_request, NULL, &g.http);
    if (rc != 0) {
        fprintf(stderr, "ws_echo_server: listen on %s failed: %s\n", listen, cv_strerror(rc));
        return 1;
    }
    uv_signal_init(g.loop, &g.sigterm);
    uv_signal_init(g.loop, &g.sigint);
    uv_signal_start(&g.sigterm, on_signal, SIGTERM);
    uv_signal_start(&g.sigint, on_signal, SIGINT);

    printf("listening on %s:%u\n", host, (unsigned)cv_http_server_port(g.http));
    fflush(stdout);

    uv_run(g.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(g.loop);
    if (rc != 0)
        fprintf(stderr, "ws_echo_server: loop not empty at exit: %s\n", cv_strerror(rc));
    return 0;
}
