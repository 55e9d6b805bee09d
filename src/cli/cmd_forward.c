/* `culvert forward`: a local listener whose connections reach an agent's
 * port through a relay's /ws/forward endpoint (specs/kohaku-tunnel.md §6.6).
 * Usage errors exit 2, a bad protocol 1 (as the reference CLI), any
 * failure of the session 1 with an `Error: ...` line on stderr. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "cli/cmds.h"
#include "cli/flags.h"
#include "cli/signals.h"
#include "codec/kohaku.h"
#include "core/log.h"
#include "forward/forward.h"
#include "net/addr.h"
#include "net/tls.h"

#define DEFAULT_RELAY "ws://127.0.0.1:8001"
#define PROG "culvert forward"

enum { OPT_RELAY = 1000, OPT_LEVEL, OPT_TOKEN, OPT_COMPAT, OPT_TRUST_CA, OPT_INSECURE };

struct fwd_args {
    const char *relay;
    const char *cid;
    const char *remote;
    const char *local;
    const char *host;
    const char *proto;
    const char *level;
    const char *token;
    const char *trust_ca;
    bool compat, insecure;
};

struct fwd_run {
    struct cv_cli_signals sig;
    const char *cid;
    const char *relay;
    uint16_t remote_port;
    uint8_t proto;
    int status;
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: culvert forward [OPTIONS] CONTAINER_ID REMOTE_PORT\n"
            "\n"
            "Listens on LOCAL_HOST:LOCAL_PORT and carries each TCP connection (or each UDP\n"
            "source address) to 127.0.0.1:REMOTE_PORT inside the container, through the\n"
            "relay's /ws/forward endpoint. If the relay session ends, every local\n"
            "connection is closed and culvert forward exits with status 1 (nothing is\n"
            "re-established: run it again). The protocol has no half-close: when a local\n"
            "client shuts down its sending side, the connection stays open until no data\n"
            "has come back for 1 s, then it is closed.\n"
            "\n"
            "Options:\n"
            "      --relay <URL>          relay (or host) base URL, ws:// or wss://\n"
            "                             [default: " DEFAULT_RELAY "]\n"
            "  -l, --local-port <PORT>    local port, 0 = any [default: REMOTE_PORT]\n"
            "  -H, --local-host <HOST>    local address [default: 127.0.0.1]\n"
            "  -p, --proto <tcp|udp>      protocol, any case [default: tcp]\n"
            "      --log-level <LEVEL>    trace, debug, info, warn, error [default: info]\n"
            "      --token <TOKEN>        relay credential (secret or JWT) [env: CULVERT_TOKEN]\n"
            "      --trust-ca <FILE>      wss://: verify the relay against the CAs in FILE (PEM)\n"
            "      --insecure             wss://: do not verify the relay's certificate\n"
            "      --compat               KohakuRiver mode only: do not offer culvert.v1\n"
            "                             (native mode adds flow control and half-close)\n"
            "  -h, --help                 print help\n"
            "  -V, --version              print version\n");
}

/* Returns -1 to go on, or an exit code. */
static int parse_flags(int argc, char **argv, struct fwd_args *a)
{
    static const struct option longopts[] = {
        {"relay", required_argument, NULL, OPT_RELAY},
        {"local-port", required_argument, NULL, 'l'},
        {"local-host", required_argument, NULL, 'H'},
        {"proto", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, OPT_LEVEL},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"compat", no_argument, NULL, OPT_COMPAT},
        {"trust-ca", required_argument, NULL, OPT_TRUST_CA},
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    opterr = 0;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, ":l:H:p:hV", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_RELAY: a->relay = optarg; break;
        case 'l': a->local = optarg; break;
        case 'H': a->host = optarg; break;
        case 'p': a->proto = optarg; break;
        case OPT_TOKEN: a->token = optarg; break;
        case OPT_COMPAT: a->compat = true; break;
        case OPT_TRUST_CA: a->trust_ca = optarg; break;
        case OPT_INSECURE: a->insecure = true; break;
        case OPT_LEVEL: a->level = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("culvert forward %s\n", CV_VERSION); return 0;
        case ':': return cv_cli_usage_error(PROG, "a value is required for '%s'", argv[optind - 1]);
        default: return cv_cli_usage_error(PROG, "unexpected argument '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind < 2)
        return cv_cli_usage_error(PROG, "%s", "CONTAINER_ID and REMOTE_PORT are required");
    if (argc - optind > 2)
        return cv_cli_usage_error(PROG, "unexpected argument '%s'", argv[optind + 2]);
    a->cid = argv[optind];
    a->remote = argv[optind + 1];
    return -1;
}

/* Fills opts. Returns -1 or an exit code. */
static int resolve(struct fwd_args *a, struct cv_forward_opts *o)
{
    memset(o, 0, sizeof *o);
    o->relay_url = a->relay ? a->relay : DEFAULT_RELAY;
    o->container_id = a->cid;
    if (*a->cid == '\0' || strchr(a->cid, '/') != NULL)
        return cv_cli_usage_error(PROG, "invalid CONTAINER_ID '%s'", a->cid);
    if (cv_port_parse(a->remote, &o->remote_port) != 0 || o->remote_port == 0)
        return cv_cli_usage_error(PROG, "invalid REMOTE_PORT '%s' (1-65535)", a->remote);
    o->local_port = o->remote_port;
    if (a->local != NULL && cv_port_parse(a->local, &o->local_port) != 0)
        return cv_cli_usage_error(PROG, "invalid value '%s' for '--local-port' (0-65535)",
                                  a->local);
    o->local_host = a->host ? a->host : "127.0.0.1";
    o->native = !a->compat;
    o->token = cv_cli_env_or(a->token, "CULVERT_TOKEN");
    o->proto = CV_KH_TCP;
    if (a->proto != NULL) {
        if (strcasecmp(a->proto, "udp") == 0) {
            o->proto = CV_KH_UDP;
        } else if (strcasecmp(a->proto, "tcp") != 0) {
            fprintf(stderr, "Error: invalid protocol '%s': use tcp or udp\n", a->proto);
            return 1;
        }
    }
    if (cv_cli_log_level(a->level) != 0)
        return cv_cli_usage_error(PROG, "invalid value '%s' for '--log-level'", a->level);
    if (strncmp(o->relay_url, "wss://", 6) == 0 || strncmp(o->relay_url, "https://", 8) == 0)
        return cv_cli_client_tls(PROG, a->trust_ca, a->insecure, "traffic");
    return -1;
}


static void on_ready(struct cv_forward *f, const struct sockaddr *bound, void *data)
{
    (void)f;
    struct fwd_run *r = data;
    char a[CV_ADDR_STRLEN];
    printf("forwarding %s %s -> %s:%u via %s\n", r->proto == CV_KH_UDP ? "udp" : "tcp",
           cv_addr_str(bound, a, sizeof a), r->cid, r->remote_port, r->relay);
    fflush(stdout);
}

static void on_done(struct cv_forward *f, int status, const char *msg, void *data)
{
    (void)f;
    struct fwd_run *r = data;
    r->status = status;
    if (status != 0)
        fprintf(stderr, "%s\n", msg);
    cv_cli_signals_close(&r->sig);
}

static void stop(void *f)
{
    cv_forward_stop(f);
}

static int run(const struct cv_forward_opts *o)
{
    uv_loop_t loop;
    struct fwd_run r = {.cid = o->container_id, .relay = o->relay_url,
                        .remote_port = o->remote_port, .proto = o->proto};
    struct cv_forward *f;
    if (uv_loop_init(&loop) != 0)
        return 1;
    if (cv_forward_start(&loop, o, on_ready, on_done, &r, &f) != 0) {
        fprintf(stderr, "Error: cannot start forwarding\n");
        uv_loop_close(&loop);
        return 1;
    }
    cv_cli_signals_start(&loop, &r.sig, stop, f);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return r.status;
}

int cv_cmd_forward(int argc, char **argv)
{
    cv_log_set_stream(stderr);
    struct fwd_args a = {0};
    int rc = parse_flags(argc, argv, &a);
    if (rc >= 0)
        return rc;
    struct cv_forward_opts o;
    if ((rc = resolve(&a, &o)) >= 0) {
        cv_tls_client_cleanup();
        return rc;
    }
    rc = run(&o);
    cv_tls_client_cleanup();
    return rc;
}
