/* `culvert relay`: flags, signals, run. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cmds.h"
#include "cli/signals.h"
#include "core/err.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/tls.h"
#include "relay/relay.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: culvert relay [--listen HOST:PORT] [options]\n"
            "\n"
            "Accepts agents on /ws/tunnel/{id} and forward sessions on\n"
            "/ws/forward/{id}/{port}?proto=tcp|udp (KohakuRiver-compatible).\n"
            "\n"
            "  --listen HOST:PORT     address to listen on (default 127.0.0.1:8001; port 0 = any)\n"
            "  --ping-interval SEC    WebSocket ping interval (default 20)\n"
            "  --ping-timeout SEC     close with 1011 when no pong arrives this long (default 20)\n"
            "  --allow-any-port       let sessions CONNECT to ports other than the URL's\n"
            "  --token SECRET         shared secret: peers present it, or an HS256 JWT signed\n"
            "                         with it, as a Bearer header or a /t/TOKEN path prefix\n"
            "                         (env CULVERT_TOKEN)\n"
            "  --allow-anonymous      admit peers without a token (reference agents, no auth)\n"
            "  --public-bind ADDR     address for agents' public ports (default 127.0.0.1)\n"
            "  --allow-ports LO-HI    public ports agents may claim (default: any)\n"
            "  --conn-buffer SIZE     bytes queued per connection toward a KohakuRiver peer\n"
            "                         before that one connection is aborted (that protocol\n"
            "                         has no flow control); K/M/G suffixes (default 8M)\n"
            "  --handshake-timeout SEC  close connections whose request head is not complete\n"
            "                         within SEC (slowloris guard; default 10)\n"
            "  --conn-rate N[/BURST]  new connections per second per client address, with\n"
            "                         BURST at once; beyond: 429 (default 20/200; 0 = off)\n"
            "  --admin HOST:PORT      admin listener: JSON API (/api/agents, /api/streams, ...),\n"
            "                         Prometheus /metrics, /healthz, /readyz (default: off)\n"
            "  --tls-cert FILE        PEM certificate chain: the --listen port speaks TLS\n"
            "                         (agents dial wss://); repeat with --tls-key for more\n"
            "                         certificates, chosen by the client's SNI name (the\n"
            "                         first is the default)\n"
            "  --tls-key FILE         PEM private key of the matching --tls-cert\n"
            "  --log-level LEVEL      error, warn, info, debug or trace (default info)\n"
            "  -h, --help             show this help\n");
}

/* Parses a positive number of seconds (fractions allowed) into ms. */
static int parse_seconds(const char *s, uint32_t *ms)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != 0 || !(v > 0) || v > 86400)
        return CV_EINVAL;
    *ms = (uint32_t)(v * 1000 + 0.5);
    return 0;
}

/* Parses "N" or "N/BURST": N >= 0 per second (0: off), BURST >= 1 (default
 * max(10 N, 1)). */
static int parse_rate(const char *s, double *rate, double *burst)
{
    char *end;
    double r = strtod(s, &end);
    if (end == s || !(r >= 0) || r > 1e6)
        return CV_EINVAL;
    double b = r * 10 >= 1 ? r * 10 : 1;
    if (*end == '/') {
        const char *bs = end + 1;
        b = strtod(bs, &end);
        if (end == bs || !(b >= 1) || b > 1e7)
            return CV_EINVAL;
    }
    if (*end != 0)
        return CV_EINVAL;
    *rate = r;
    *burst = b;
    return 0;
}

/* Parses a byte count with an optional K, M or G suffix, 64 KiB to 1 GiB. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *s < '0' || *s > '9')
        return CV_EINVAL;
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1ull << 30, end++;
    if (*end != 0 || v > (1ull << 30) / mul || v * mul < (64u << 10))
        return CV_EINVAL;
    *out = (size_t)(v * mul);
    return 0;
}

/* Parses "LO-HI" (or a single port) into an inclusive range. */
static int parse_range(const char *s, uint16_t *lo, uint16_t *hi)
{
    char buf[16];
    const char *dash = strchr(s, '-');
    size_t n = dash ? (size_t)(dash - s) : strlen(s);
    if (n == 0 || n >= sizeof buf)
        return CV_EINVAL;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (cv_port_parse(buf, lo) != 0 || cv_port_parse(dash ? dash + 1 : buf, hi) != 0)
        return CV_EINVAL;
    return *lo == 0 || *lo > *hi ? CV_EINVAL : 0;
}

#define MAX_CERTS 16

struct run {
    struct cv_relay *relay;
    struct cv_cli_signals sig;
};

/* --tls-cert/--tls-key pairs, in order. */
struct certs {
    struct cv_tls_cert c[MAX_CERTS];
    size_t ncert, nkey;
};

static void stop(void *data)
{
    struct run *run = data;
    cv_relay_stop(run->relay);
    cv_cli_signals_close(&run->sig);
}

static int parse(int argc, char **argv, struct cv_relay_opts *o, char *host, size_t hostlen,
                 char *admin, size_t adminlen, struct certs *certs)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},    {"ping-interval", required_argument, NULL, 'i'},
        {"ping-timeout", required_argument, NULL, 't'}, {"allow-any-port", no_argument, NULL, 'a'},
        {"log-level", required_argument, NULL, 'L'}, {"help", no_argument, NULL, 'h'},
        {"token", required_argument, NULL, 'T'}, {"allow-anonymous", no_argument, NULL, 'A'},
        {"public-bind", required_argument, NULL, 'B'}, {"allow-ports", required_argument, NULL, 'P'},
        {"conn-buffer", required_argument, NULL, 'C'}, {"admin", required_argument, NULL, 'D'},
        {"handshake-timeout", required_argument, NULL, 'H'}, {"conn-rate", required_argument, NULL, 'R'},
        {"tls-cert", required_argument, NULL, 'c'}, {"tls-key", required_argument, NULL, 'k'},
        {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        struct sockaddr_storage ss;
        enum cv_log_level lvl;
        switch (c) {
        case 'l':
        case 'D':
            if (c == 'l' ? cv_addr_split(optarg, host, hostlen, &o->port) != 0
                         : cv_addr_split(optarg, admin, adminlen, &o->admin_port) != 0) {
                fprintf(stderr, "culvert relay: --%s wants HOST:PORT with a numeric host, got '%s'\n",
                        c == 'l' ? "listen" : "admin", optarg);
                return 2;
            }
            if (c == 'D')
                o->admin_host = admin;
            break;
        case 'i':
        case 't':
            if (parse_seconds(optarg, c == 'i' ? &o->ping_interval_ms : &o->pong_timeout_ms) != 0) {
                fprintf(stderr, "culvert relay: --ping-%s wants a positive number of seconds, got '%s'\n",
                        c == 'i' ? "interval" : "timeout", optarg);
                return 2;
            }
            break;
        case 'H':
            if (parse_seconds(optarg, &o->handshake_ms) != 0) {
                fprintf(stderr, "culvert relay: --handshake-timeout wants a positive number of "
                                "seconds, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'R':
            if (parse_rate(optarg, &o->conn_rate, &o->conn_burst) != 0) {
                fprintf(stderr, "culvert relay: --conn-rate wants N or N/BURST (N >= 0, BURST >= 1), "
                                "got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c':
        case 'k':
            if ((c == 'c' ? certs->ncert : certs->nkey) >= MAX_CERTS) {
                fprintf(stderr, "culvert relay: at most %d --tls-cert/--tls-key pairs\n", MAX_CERTS);
                return 2;
            }
            if (c == 'c')
                certs->c[certs->ncert++].cert_file = optarg;
            else
                certs->c[certs->nkey++].key_file = optarg;
            break;
        case 'a': o->any_port = true; break;
        case 'T': o->token = optarg; break;
        case 'A': o->allow_anonymous = true; break;
        case 'B':
            if (cv_addr_from(optarg, 0, &ss) != 0) {
                fprintf(stderr, "culvert relay: --public-bind wants a numeric address, got '%s'\n", optarg);
                return 2;
            }
            o->public_bind = optarg;
            break;
        case 'C':
            if (parse_size(optarg, &o->conn_pending) != 0) {
                fprintf(stderr, "culvert relay: --conn-buffer wants a size from 64K to 1G "
                                "(e.g. 8M), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'P':
            if (parse_range(optarg, &o->allow_lo, &o->allow_hi) != 0) {
                fprintf(stderr, "culvert relay: --allow-ports wants LO-HI (1-65535), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'L':
            if (cv_log_parse_level(optarg, &lvl) != 0) {
                fprintf(stderr, "culvert relay: unknown log level '%s'\n", optarg);
                return 2;
            }
            cv_log_set_level(lvl);
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "culvert relay: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1;
}

int cv_cmd_relay(int argc, char **argv)
{
    struct cv_relay_opts o;
    cv_relay_opts_default(&o);
    char host[CV_ADDR_STRLEN] = "127.0.0.1";
    char admin[CV_ADDR_STRLEN] = "";
    struct certs certs = {0};
    int rc = parse(argc, argv, &o, host, sizeof host, admin, sizeof admin, &certs);
    if (rc >= 0)
        return rc;
    if (certs.ncert != certs.nkey) {
        fprintf(stderr, "culvert relay: --tls-cert and --tls-key come in pairs (got %zu "
                        "certificates and %zu keys)\n", certs.ncert, certs.nkey);
        return 2;
    }
    o.host = host;
    if (o.token == NULL) {
        const char *env = getenv("CULVERT_TOKEN");
        if (env && *env)
            o.token = env;
    }
    if (o.token == NULL && !o.allow_anonymous) {
        fprintf(stderr, "culvert relay: authentication is required: give --token SECRET (or "
                        "CULVERT_TOKEN), or --allow-anonymous to admit anyone\n");
        return 2;
    }
    struct cv_tls_ctx *tls = NULL;
    if (certs.ncert > 0) {
        char err[400];
        tls = cv_tls_ctx_new_server(certs.c, certs.ncert, err, sizeof err);
        if (tls == NULL) {
            fprintf(stderr, "culvert relay: TLS: %s\n", err);
            return 2;
        }
        o.tls = tls;
    }
    if (o.allow_anonymous)
        cv_log_warn("--allow-anonymous: peers without a token are admitted; anyone who reaches "
                    "%s:%u can register as any agent", host, o.port);
    uv_loop_t *loop = uv_default_loop();
    struct run run = {0};
    rc = cv_relay_start(loop, &o, &run.relay);
    if (rc != 0) {
        fprintf(stderr, "culvert relay: cannot listen on %s:%u: %s\n", host, o.port, cv_strerror(rc));
        cv_tls_ctx_free(tls);
        return 1;
    }
    printf("culvert relay listening on %s:%u%s\n", host, cv_relay_port(run.relay),
           tls ? " (TLS: agents dial wss://)" : "");
    if (o.admin_host)
        printf("culvert relay admin API on http://%s:%u/\n", admin, cv_relay_admin_port(run.relay));
    fflush(stdout);
    cv_cli_signals_start(loop, &run.sig, stop, &run);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    cv_tls_ctx_free(tls);
    return 0;
}
