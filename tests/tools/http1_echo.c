/* http1_echo: a small server on net/http1.h for the end-to-end tests
 * (tests/e2e/test_http1.py).
 *
 *   http1_echo --listen HOST:PORT [--head-timeout-ms MS] [--idle-timeout-ms MS]
 *              [--max-body BYTES]
 *
 *   POST /echo     the request body streamed back (chunked response)
 *   POST /crc      "LENGTH CRC32\n" of the request body (zlib's CRC-32, hex),
 *                  answered once the body is complete
 *   GET /hello     "hello\n" with Content-Length (HEAD too)
 *   GET /big?n=N   N bytes ('a' + offset % 26) with Content-Length, written as
 *                  the client reads them
 *   anything else  404
 *
 * Once bound it prints "listening on HOST:PORT" on stdout. SIGINT or SIGTERM
 * close the server and it exits 0. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/err.h"
#include "net/addr.h"
#include "net/http1.h"

enum kind { K_ECHO, K_CRC, K_BIG, K_OTHER };

/* Per-request state, freed in on_done. */
struct job {
    enum kind kind;
    uint64_t left; /* K_BIG: bytes still to write */
    uint64_t off;
    uint32_t crc; /* K_CRC: running CRC-32 (pre-inverted) */
};

static struct cv_http1_server *g_srv;
static uv_signal_t g_sig[2];
static char g_pattern[64 * 1024 + 26];

static uint32_t g_crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        g_crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        crc = g_crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return crc;
}

static void big_produce(struct cv_http1_req *req, struct job *j)
{
    while (j->left > 0 && cv_http1_req_is_writable(req)) {
        size_t n = j->left < 64 * 1024 ? (size_t)j->left : 64 * 1024;
        if (cv_http1_respond_write(req, g_pattern + j->off % 26, n) < 0)
            return;
        j->left -= n;
        j->off += n;
    }
    if (j->left == 0)
        cv_http1_respond_end(req);
}

static void start_big(struct cv_http1_req *req, struct job *j)
{
    const char *q = cv_http1_req_query(req);
    char *end;
    if (strncmp(q, "n=", 2) != 0) {
        cv_http1_respond(req, 400, "text/plain", "need ?n=BYTES\n", 13);
        return;
    }
    j->left = strtoull(q + 2, &end, 10);
    if (*end != '\0') {
        cv_http1_respond(req, 400, "text/plain", "need ?n=BYTES\n", 13);
        return;
    }
    char len[24];
    snprintf(len, sizeof len, "%" PRIu64, j->left);
    struct cv_http1_header hs[] = {{"Content-Type", "application/octet-stream"},
                                   {"Content-Length", len}};
    if (cv_http1_respond_start(req, 200, hs, 2) == 0)
        big_produce(req, j);
}

static void on_request(struct cv_http1_req *req)
{
    struct job *j = calloc(1, sizeof *j);
    const char *path = cv_http1_req_path(req);

    if (j == NULL) {
        cv_http1_respond(req, 500, "text/plain", "oom\n", 4);
        return;
    }
    cv_http1_req_set_data(req, j);
    j->kind = K_OTHER;
    if (cv_http1_req_is_method(req, "POST") && strcmp(path, "/echo") == 0) {
        j->kind = K_ECHO;
    } else if (cv_http1_req_is_method(req, "POST") && strcmp(path, "/crc") == 0) {
        j->kind = K_CRC;
        j->crc = 0xffffffffu;
    } else if ((cv_http1_req_is_method(req, "GET") || cv_http1_req_is_method(req, "HEAD")) &&
               strcmp(path, "/hello") == 0) {
        cv_http1_respond(req, 200, "text/plain", "hello\n", 6);
    } else if (cv_http1_req_is_method(req, "GET") && strcmp(path, "/big") == 0) {
        j->kind = K_BIG;
        start_big(req, j);
    } else {
        cv_http1_respond(req, 404, "text/plain", "not found\n", 10);
    }
}

static void echo_start(struct cv_http1_req *req)
{
    static const struct cv_http1_header hs[] = {{"Content-Type", "application/octet-stream"}};
    cv_http1_respond_start(req, 200, hs, 1);
}

static void on_body(struct cv_http1_req *req, const uint8_t *data, size_t len)
{
    struct job *j = cv_http1_req_data(req);
    if (j->kind == K_CRC) {
        j->crc = crc_update(j->crc, data, len);
        j->off += len;
        return;
    }
    if (j->kind != K_ECHO)
        return; /* bodies of other requests are read and dropped */
    echo_start(req);
    if (cv_http1_respond_write(req, data, len) < 0)
        return;
    if (!cv_http1_req_is_writable(req))
        cv_http1_req_pause(req); /* backpressure: resumed in on_drain */
}

static void on_end(struct cv_http1_req *req)
{
    struct job *j = cv_http1_req_data(req);
    if (j->kind == K_CRC) {
        char out[64];
        int n = snprintf(out, sizeof out, "%" PRIu64 " %08" PRIx32 "\n", j->off, ~j->crc);
        cv_http1_respond(req, 200, "text/plain", out, (size_t)n);
        return;
    }
    if (j->kind != K_ECHO)
        return;
    echo_start(req); /* no-op (CV_EINVAL) if the body already started it */
    cv_http1_respond_end(req);
}

static void on_drain(struct cv_http1_req *req)
{
    struct job *j = cv_http1_req_data(req);
    if (j->kind == K_ECHO)
        cv_http1_req_resume(req);
    else if (j->kind == K_BIG)
        big_produce(req, j);
}

static void on_done(struct cv_http1_req *req, int status)
{
    if (status != 0)
        fprintf(stderr, "http1_echo: %s %s: %s\n", cv_http1_req_peer(req), cv_http1_req_path(req),
                cv_strerror(status));
    free(cv_http1_req_data(req));
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    fprintf(stderr, "http1_echo: signal %d, stopping\n", signum);
    cv_http1_server_close(g_srv);
    g_srv = NULL;
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&g_sig[i], NULL);
}

static int parse_args(int argc, char **argv, char *host, size_t hlen, uint16_t *port,
                      struct cv_http1_opts *o)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--listen") == 0) {
            const char *colon = strrchr(v, ':');
            if (colon == NULL || (size_t)(colon - v) >= hlen || cv_port_parse(colon + 1, port))
                return -1;
            memcpy(host, v, (size_t)(colon - v));
            host[colon - v] = '\0';
        } else if (strcmp(k, "--head-timeout-ms") == 0) {
            o->head_timeout_ms = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--idle-timeout-ms") == 0) {
            o->idle_timeout_ms = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--max-body") == 0) {
            o->max_body = strtoull(v, NULL, 10);
        } else {
            return -1;
        }
    }
    return argc % 2 == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    char host[64] = "127.0.0.1";
    uint16_t port = 0;
    struct cv_http1_opts o;
    struct cv_http1_cbs cbs = {.on_request = on_request,
                               .on_body = on_body,
                               .on_end = on_end,
                               .on_drain = on_drain,
                               .on_done = on_done};

    cv_http1_opts_init(&o);
    if (parse_args(argc, argv, host, sizeof host, &port, &o) < 0) {
        fprintf(stderr, "usage: http1_echo --listen HOST:PORT [--head-timeout-ms MS] "
                        "[--idle-timeout-ms MS] [--max-body BYTES]\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof g_pattern; i++)
        g_pattern[i] = (char)('a' + i % 26);
    crc_init();
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    int rc = cv_http1_server_start(loop, host, port, &cbs, NULL, &g_srv);
    if (rc == 0 && (rc = cv_http1_server_set_opts(g_srv, &o)) < 0)
        cv_http1_server_close(g_srv);
    if (rc < 0) {
        fprintf(stderr, "http1_echo: cannot listen on %s:%u: %s\n", host, port, cv_strerror(rc));
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    printf("listening on %s:%u\n", host, cv_http1_server_port(g_srv));
    fflush(stdout);
    uv_signal_init(loop, &g_sig[0]);
    uv_signal_init(loop, &g_sig[1]);
    uv_signal_start(&g_sig[0], on_signal, SIGINT);
    uv_signal_start(&g_sig[1], on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
