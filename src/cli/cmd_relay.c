/* `culvert relay`: flags, signals, run. */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cmds.h"
#include "cli/config.h"
#include "cli/flags.h"
#include "cli/signals.h"
#include "codec/kohaku.h"
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
            "  --handshake-timeout SEC  close connections whose request head (TLS handshake\n"
            "                         included; on --tls-listen the ClientHello) is not\n"
            "                         complete within SEC (slowloris guard; default 10)\n"
            "  --conn-rate N[/BURST]  new connections per second per client address, with\n"
            "                         BURST at once, on every listener; beyond: 429 (TLS\n"
            "                         listeners: closed) (default 20/200; 0 = off)\n"
            "  --config FILE          read these options from FILE (INI: key = value, keys are\n"
            "                         the long flag names; flags given here win); SIGHUP reads\n"
            "                         it again: auth keys, limits and --tls-cert files change\n"
            "                         without dropping live tunnels, a bad file is refused\n"
            "                         and logged\n"
            "  --admin HOST:PORT      admin listener: JSON API (/api/agents, /api/streams, ...),\n"
            "                         Prometheus /metrics, /healthz, /readyz (default: off)\n"
            "  --domain BASE          serve agents' named exposures as NAME.BASE (with\n"
            "                         --http-listen: HTTP virtual hosts by Host header)\n"
            "  --http-listen HOST:PORT  HTTP virtual-host front door (needs --domain)\n"
            "  --https-listen HOST:PORT  the same over TLS: https://NAME.BASE, terminated here\n"
            "                         with the --tls-cert chosen by SNI (needs --domain and\n"
            "                         --tls-cert/--tls-key)\n"
            "  --tls-cert FILE        PEM certificate chain: the --listen port speaks TLS\n"
            "                         (agents dial wss://); repeat with --tls-key for more\n"
            "                         certificates, chosen by the client's SNI name (the\n"
            "                         first is the default); SIGHUP reads the files again\n"
            "  --tls-key FILE         PEM private key of the matching --tls-cert\n"
            "  --tls-listen HOST:PORT  SNI router: TLS connections for NAME.BASE (see --domain)\n"
            "                         pass untouched to the agent exposing tls:LOCAL:NAME\n"
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

static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},    {"ping-interval", required_argument, NULL, 'i'},
        {"ping-timeout", required_argument, NULL, 't'}, {"allow-any-port", no_argument, NULL, 'a'},
        {"log-level", required_argument, NULL, 'L'}, {"help", no_argument, NULL, 'h'},
        {"token", required_argument, NULL, 'T'}, {"allow-anonymous", no_argument, NULL, 'A'},
        {"public-bind", required_argument, NULL, 'B'}, {"allow-ports", required_argument, NULL, 'P'},
        {"conn-buffer", required_argument, NULL, 'C'}, {"admin", required_argument, NULL, 'D'},
        {"handshake-timeout", required_argument, NULL, 'H'}, {"conn-rate", required_argument, NULL, 'R'},
        {"config", required_argument, NULL, 'F'},
        {"domain", required_argument, NULL, 'M'}, {"http-listen", required_argument, NULL, 'W'},
        {"tls-cert", required_argument, NULL, 'c'}, {"tls-key", required_argument, NULL, 'k'},
        {"tls-listen", required_argument, NULL, 'S'}, {"https-listen", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0}};

#define MAX_CERTS 16

/* TLS flags: --tls-cert/--tls-key pairs in order, the SNI router address. */
struct tls_args {
    struct cv_tls_cert c[MAX_CERTS];
    size_t ncert, nkey;
    char listen[CV_ADDR_STRLEN];
};

/* A domain name: dot-separated labels of letters, digits and '-' (no '-'
 * at either end of a label), at most 200 bytes. */
static bool domain_ok(const char *d)
{
    size_t n = strlen(d);
    if (n == 0 || n > 200)
        return false;
    char low[256];
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)(d[i] >= 'A' && d[i] <= 'Z' ? d[i] - 'A' + 'a' : d[i]);
    for (const char *p = low;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (!cv_kh_name_valid(p, len))
            return false;
        if (dot == NULL)
            return true;
        p = dot + 1;
    }
}

/* --http-listen's and --https-listen's hosts (the relay reads them once, at
 * start). */
static char http_host[CV_ADDR_STRLEN], https_host[CV_ADDR_STRLEN];

static int parse(int argc, char **argv, struct cv_relay_opts *o, char *host, size_t hostlen,
                 char *admin, size_t adminlen, struct tls_args *tls)
{
    int c, rc;
    optind = 1;
    tls->ncert = tls->nkey = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        struct sockaddr_storage ss;
        switch (c) {
        case 'l':
            if ((rc = cv_cli_hostport("culvert relay: ", "listen", optarg, host, hostlen,
                                      &o->port)) >= 0)
                return rc;
            break;
        case 'D':
            if ((rc = cv_cli_hostport("culvert relay: ", "admin", optarg, admin, adminlen,
                                      &o->admin_port)) >= 0)
                return rc;
            o->admin_host = admin;
            break;
        case 'i':
        case 't':
            if (parse_seconds(optarg, c == 'i' ? &o->ping_interval_ms : &o->pong_timeout_ms) != 0) {
                cv_cli_error("culvert relay: ", "--ping-%s wants a positive number of seconds, got '%s'\n",
                        c == 'i' ? "interval" : "timeout", optarg);
                return 2;
            }
            break;
        case 'H':
            if (parse_seconds(optarg, &o->handshake_ms) != 0) {
                cv_cli_error("culvert relay: ", "--handshake-timeout wants a positive number of "
                                "seconds, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'R':
            if (parse_rate(optarg, &o->conn_rate, &o->conn_burst) != 0) {
                cv_cli_error("culvert relay: ", "--conn-rate wants N or N/BURST (N >= 0, BURST >= 1), "
                                "got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c':
        case 'k':
            if ((c == 'c' ? tls->ncert : tls->nkey) >= MAX_CERTS) {
                cv_cli_error("culvert relay: ", "at most %d --tls-cert/--tls-key pairs\n", MAX_CERTS);
                return 2;
            }
            if (c == 'c')
                tls->c[tls->ncert++].cert_file = optarg;
            else
                tls->c[tls->nkey++].key_file = optarg;
            break;
        case 'S':
            if ((rc = cv_cli_hostport("culvert relay: ", "tls-listen", optarg, tls->listen,
                                      sizeof tls->listen, &o->tls_listen_port)) >= 0)
                return rc;
            o->tls_listen_host = tls->listen;
            break;
        case 'M':
            if (!domain_ok(optarg)) {
                cv_cli_error("culvert relay: ", "--domain wants a domain name such as "
                                "tunnels.example.com (letters, digits, '-' and dots), got '%s'\n",
                        optarg);
                return 2;
            }
            o->domain = optarg;
            break;
        case 'W':
            if ((rc = cv_cli_hostport("culvert relay: ", "http-listen", optarg, http_host,
                                      sizeof http_host, &o->http_port)) >= 0)
                return rc;
            o->http_host = http_host;
            break;
        case 's':
            if ((rc = cv_cli_hostport("culvert relay: ", "https-listen", optarg, https_host,
                                      sizeof https_host, &o->https_port)) >= 0)
                return rc;
            o->https_host = https_host;
            break;
        case 'a': o->any_port = true; break;
        case 'T': o->token = optarg; break;
        case 'A': o->allow_anonymous = true; break;
        case 'B':
            if (cv_addr_from(optarg, 0, &ss) != 0) {
                cv_cli_error("culvert relay: ", "--public-bind wants a numeric address, got '%s'\n", optarg);
                return 2;
            }
            o->public_bind = optarg;
            break;
        case 'C':
            if (parse_size(optarg, &o->conn_pending) != 0) {
                cv_cli_error("culvert relay: ", "--conn-buffer wants a size from 64K to 1G "
                                "(e.g. 8M), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'P':
            if (parse_range(optarg, &o->allow_lo, &o->allow_hi) != 0) {
                cv_cli_error("culvert relay: ", "--allow-ports wants LO-HI (1-65535), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'L':
            if (cv_cli_log_level(optarg) != 0) {
                cv_cli_error("culvert relay: ", "unknown log level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'F': break; /* read before parsing (see load) */
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        cv_cli_error("culvert relay: ", "unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1;
}

/* Flags that only make sense together: checked on the whole configuration
 * (file and command line), not on each config-file entry alone. Returns -1
 * if they fit, else the exit status 2 (reported). */
static int check_combos(const struct cv_relay_opts *o, const struct tls_args *tls)
{
    if (tls->ncert != tls->nkey) {
        cv_cli_error("culvert relay: ", "--tls-cert and --tls-key come in pairs (got %zu "
                     "certificates and %zu keys)\n", tls->ncert, tls->nkey);
        return 2;
    }
    if (o->http_host != NULL && o->domain == NULL) {
        cv_cli_error("culvert relay: ", "HTTP virtual hosts need both --domain BASE and "
                        "--http-listen HOST:PORT (--http-listen was given alone)\n");
        return 2;
    }
    if (o->https_host != NULL && o->domain == NULL) {
        cv_cli_error("culvert relay: ", "HTTPS virtual hosts need --domain BASE "
                     "(--https-listen was given without it)\n");
        return 2;
    }
    if (o->https_host != NULL && tls->ncert == 0) {
        cv_cli_error("culvert relay: ", "--https-listen terminates TLS: it needs at least one "
                     "--tls-cert FILE --tls-key FILE pair\n");
        return 2;
    }
    if (o->tls_listen_host != NULL && o->domain == NULL) {
        cv_cli_error("culvert relay: ", "the SNI router routes NAME.BASE: --tls-listen needs "
                        "--domain BASE\n");
        return 2;
    }
    if (o->domain != NULL && o->http_host == NULL && o->https_host == NULL &&
        o->tls_listen_host == NULL) {
        cv_cli_error("culvert relay: ", "--domain BASE needs a front door (--domain was given "
                        "alone): --http-listen HOST:PORT (HTTP virtual hosts), --https-listen "
                        "HOST:PORT (the same over TLS) and/or --tls-listen HOST:PORT (SNI "
                        "router)\n");
        return 2;
    }
    return -1;
}

/* Everything a relay runs with: defaults, then the config file, then the
 * command line. Reloaded whole on SIGHUP. */
struct relay_conf {
    struct cv_relay_opts o;
    char host[CV_ADDR_STRLEN];
    char admin[CV_ADDR_STRLEN];
    struct tls_args tls;
    struct cv_cli_conf file;
    char **argv; /* merged: file flags, then the command line */
};

static void conf_free(struct relay_conf *c)
{
    cv_cli_conf_free(&c->file);
    free(c->argv);
    free(c);
}

static int check_entry(int argc, char **argv, void *ud)
{
    (void)ud;
    struct relay_conf scratch;
    cv_relay_opts_default(&scratch.o);
    return parse(argc, argv, &scratch.o, scratch.host, sizeof scratch.host, scratch.admin,
                 sizeof scratch.admin, &scratch.tls) >= 0;
}

/* Builds the configuration. Returns NULL with *code set (the exit status;
 * a message was reported, or is in err for the file). */
static struct relay_conf *load(int argc, char **argv, int *code, char *err, size_t errlen)
{
    struct relay_conf *c = calloc(1, sizeof *c);
    if (c == NULL) {
        *code = 1;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cv_relay_opts_default(&c->o);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    err[0] = 0;
    const char *path = cv_cli_conf_path(argc, argv);
    if (path && cv_cli_conf_load(path, "relay", longopts, check_entry, NULL, &c->file, err,
                                 errlen) != 0) {
        free(c);
        *code = 2;
        return NULL;
    }
    int n;
    c->argv = cv_cli_conf_merge(&c->file, argc, argv, &n);
    int rc = c->argv ? parse(n, c->argv, &c->o, c->host, sizeof c->host, c->admin, sizeof c->admin,
                             &c->tls)
                     : 1;
    if (rc < 0)
        rc = check_combos(&c->o, &c->tls);
    if (rc >= 0) {
        conf_free(c);
        *code = rc;
        return NULL;
    }
    c->o.host = c->host;
    c->o.token = cv_cli_env_or(c->o.token, "CULVERT_TOKEN");
    if (c->o.token == NULL && !c->o.allow_anonymous) {
        snprintf(err, errlen, "authentication is required: give --token SECRET (or "
                              "CULVERT_TOKEN), or --allow-anonymous to admit anyone");
        conf_free(c);
        *code = 2;
        return NULL;
    }
    return c;
}

struct run {
    struct cv_relay *relay;
    struct cv_tls_ctx *tls; /* owned: the certificates new connections get; NULL: plain */
    struct cv_cli_signals sig;
    uv_signal_t hup;
    struct relay_conf *conf; /* what the relay runs with (it borrows its strings) */
    int argc;
    char **argv;
};

static void stop(void *data)
{
    struct run *run = data;
    cv_relay_stop(run->relay);
    cv_cli_signals_close(&run->sig);
    uv_close((uv_handle_t *)&run->hup, NULL);
}

static bool same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Reads the certificate files of a new configuration. Returns 0 with *out
 * set (NULL: nothing to change), or -1 after logging why the reload is
 * refused. */
static int reload_certs(struct run *run, const struct relay_conf *nc, struct cv_tls_ctx **out)
{
    *out = NULL;
    if (run->tls == NULL) {
        if (nc->tls.ncert > 0)
            cv_log_warn("configuration reload: the relay started without TLS; --tls-cert "
                        "takes effect on restart only");
        return 0;
    }
    if (nc->tls.ncert == 0) {
        cv_log_warn("configuration reload: TLS cannot be turned off live; the running "
                    "certificates are kept");
        return 0;
    }
    char err[600];
    *out = cv_tls_ctx_new_server(nc->tls.c, nc->tls.ncert, err, sizeof err);
    if (*out == NULL) {
        cv_log_error("configuration reload refused, keeping the running certificates and "
                     "configuration: TLS: %s", err);
        return -1;
    }
    return 0;
}

/* SIGHUP: reads the configuration again. A bad file is refused with its
 * line and reason, and the relay keeps running as it was; a good one
 * replaces the auth keys and the limits for new connections, without
 * touching live tunnels and streams. */
static void on_hup(uv_signal_t *h, int signum)
{
    (void)signum;
    struct run *run = h->data;
    char err[600];
    int code;
    struct relay_conf *nc = load(run->argc, run->argv, &code, err, sizeof err);
    if (nc == NULL) {
        cv_log_error("configuration reload refused, keeping the running one: %s",
                     err[0] ? err : "invalid flags");
        return;
    }
    const struct cv_relay_opts *o = &run->conf->o, *n = &nc->o;
    if (strcmp(run->conf->host, nc->host) != 0 || o->port != n->port ||
        !same(o->admin_host ? run->conf->admin : NULL, n->admin_host ? nc->admin : NULL) ||
        o->admin_port != n->admin_port || !same(o->public_bind, n->public_bind) ||
        o->ping_interval_ms != n->ping_interval_ms || o->pong_timeout_ms != n->pong_timeout_ms ||
        !same(o->domain, n->domain) || o->http_port != n->http_port ||
        !same(o->https_host, n->https_host) || o->https_port != n->https_port)
        cv_log_warn("configuration reload: listen, admin, public-bind, ping, domain, "
                    "http-listen and https-listen settings take effect on restart only; the "
                    "running values are kept");
    struct cv_tls_ctx *tls;
    if (reload_certs(run, nc, &tls) != 0) {
        conf_free(nc);
        return;
    }
    int rc = cv_relay_reload(run->relay, n);
    if (rc != 0) {
        cv_log_error("configuration reload refused, keeping the running one: %s", cv_strerror(rc));
        cv_tls_ctx_free(tls);
        conf_free(nc);
        return;
    }
    if (tls != NULL) {
        /* Live TLS connections hold their own reference to the old context. */
        cv_relay_set_tls(run->relay, tls);
        cv_tls_ctx_free(run->tls);
        run->tls = tls;
        cv_log_info("TLS certificates reloaded: %zu (first %s)", nc->tls.ncert,
                    nc->tls.c[0].cert_file);
    }
    cv_log_info("configuration reloaded%s%s: %s, allow-ports %u-%u, conn-rate %g/%g",
                cv_cli_conf_path(run->argc, run->argv) ? " from " : "",
                cv_cli_conf_path(run->argc, run->argv) ? cv_cli_conf_path(run->argc, run->argv) : "",
                n->token ? "token set" : "no token (anonymous)", n->allow_lo, n->allow_hi,
                n->conn_rate, n->conn_burst);
    conf_free(run->conf);
    run->conf = nc;
}

int cv_cmd_relay(int argc, char **argv)
{
    char err[600];
    int rc;
    struct relay_conf *c = load(argc, argv, &rc, err, sizeof err);
    if (c == NULL) {
        if (err[0])
            fprintf(stderr, "culvert relay: %s\n", err);
        return rc;
    }
    struct cv_relay_opts *o = &c->o;
    /* Certificates are read at start and again on SIGHUP (on_hup). */
    struct cv_tls_ctx *tls = NULL;
    if (c->tls.ncert > 0) {
        tls = cv_tls_ctx_new_server(c->tls.c, c->tls.ncert, err, sizeof err);
        if (tls == NULL) {
            fprintf(stderr, "culvert relay: TLS: %s\n", err);
            conf_free(c);
            return 2;
        }
        o->tls = tls;
    }
    if (o->allow_anonymous)
        cv_log_warn("--allow-anonymous: peers without a token are admitted; anyone who reaches "
                    "%s:%u can register as any agent", c->host, o->port);
    uv_loop_t *loop = uv_default_loop();
    struct run run = {.conf = c, .tls = tls, .argc = argc, .argv = argv};
    rc = cv_relay_start(loop, o, &run.relay);
    if (rc != 0) {
        fprintf(stderr, "culvert relay: cannot start on %s:%u%s%s%s: %s\n", c->host, o->port,
                o->admin_host ? " (admin " : "", o->admin_host ? "listener included)" : "",
                o->http_host || o->https_host ? " (or a --http-listen/--https-listen address)" : "",
                cv_strerror(rc));
        conf_free(c);
        cv_tls_ctx_free(tls);
        return 1;
    }
    /* Signals first: whoever reads the line below may signal at once. */
    cv_cli_signals_start(loop, &run.sig, stop, &run);
    uv_signal_init(loop, &run.hup);
    run.hup.data = &run;
    uv_signal_start(&run.hup, on_hup, SIGHUP);
    printf("culvert relay listening on %s:%u%s\n", c->host, cv_relay_port(run.relay),
           tls ? " (TLS: agents dial wss://)" : "");
    if (o->tls_listen_host)
        printf("culvert relay SNI router on %s:%u (tls names *.%s passed through)\n",
               c->tls.listen, cv_relay_tls_port(run.relay), o->domain ? o->domain : "-");
    if (o->admin_host)
        printf("culvert relay admin API on http://%s:%u/\n", c->admin,
               cv_relay_admin_port(run.relay));
    if (o->http_host)
        printf("culvert relay HTTP virtual hosts http://NAME.%s on %s:%u\n", o->domain,
               o->http_host, cv_relay_http_port(run.relay));
    if (o->https_host)
        printf("culvert relay HTTPS virtual hosts https://NAME.%s on %s:%u\n", o->domain,
               o->https_host, cv_relay_https_port(run.relay));
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    conf_free(run.conf);
    cv_tls_ctx_free(run.tls);
    return 0;
}
