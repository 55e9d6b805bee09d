/* `culvert agent` and `tunnel-client`: the KohakuRiver agent CLI
 * (specs/kohaku-tunnel.md §8): flag > environment > default; usage errors
 * exit 2; giving up exits 1 with `Error: Max reconnection attempts
 * exceeded`; logs go to stdout. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "agent/agent.h"
#include "cli/cmds.h"
#include "cli/config.h"
#include "cli/flags.h"
#include "cli/signals.h"
#include "codec/kohaku.h"
#include "codec/url.h"
#include "core/err.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/tls.h"

enum { OPT_DELAY = 1000, OPT_MAX, OPT_LEVEL, OPT_TOKEN, OPT_EXPOSE, OPT_PING, OPT_COMPAT, OPT_ADMIN,
       OPT_CONFIG, OPT_TRUST_CA, OPT_INSECURE };

#define MAX_EXPOSE 64

struct agent_args {
    const char *url;
    const char *cid;
    const char *delay;
    const char *max;
    const char *level;
    const char *token;
    const char *ping;
    const char *admin;
    const char *trust_ca;
    char admin_host[CV_ADDR_STRLEN];
    bool compat, insecure;
    size_t nexpose;
    struct cv_agent_expose expose[MAX_EXPOSE];
};

struct agent_run {
    struct cv_cli_signals sig;
    uv_signal_t *hup; /* SIGHUP: reload the config */
    enum cv_agent_end end;
};

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "Usage: %s [OPTIONS]\n"
            "\n"
            "Dials a relay (KohakuRiver runner) and serves 127.0.0.1 ports through it.\n"
            "Reconnects with exponential backoff and full jitter (base: the reconnect\n"
            "delay, cap 60 s) after failures, and after the base delay when a tunnel ends.\n"
            "\n"
            "Options:\n"
            "  -r, --runner-url <URL>        relay base URL, ws:// or wss:// [env: RUNNER_URL]\n"
            "  -c, --container-id <ID>       container id [env: CONTAINER_ID]\n"
            "      --reconnect-delay <SECS>  base reconnect delay [env: RECONNECT_DELAY]\n"
            "                                [default: 5]\n"
            "      --max-reconnect <N>       give up after N consecutive failed\n"
            "                                handshakes, 0 = never [env: MAX_RECONNECT]\n"
            "                                [default: 0]\n"
            "      --log-level <LEVEL>       trace, debug, info, warn, error\n"
            "                                [env: LOG_LEVEL] [default: info]\n"
            "                                (a plain level in RUST_LOG overrides it)\n"
            "      --token <TOKEN>           relay credential (secret or JWT), sent as a\n"
            "                                Bearer header [env: CULVERT_TOKEN]\n"
            "      --expose <P:LOCAL[:PUBLIC]>  ask the relay to listen publicly on PUBLIC\n"
            "                                (0/absent: any port) for 127.0.0.1:LOCAL;\n"
            "                                P is tcp or udp; repeatable (native mode)\n"
            "      --expose <K:LOCAL:NAME>   claim NAME on the relay's front door for\n"
            "                                127.0.0.1:LOCAL: K is http (virtual host\n"
            "                                NAME.BASE) or tls (routed by SNI); repeatable\n"
            "      --ping-interval <SECS>    native keepalive interval [default: 15]\n"
            "      --config <FILE>           read these options from FILE (INI: key = value,\n"
            "                                keys are the long flag names; flags given here\n"
            "                                win); SIGHUP reads it again: exposures and the\n"
            "                                token change without dropping live streams\n"
            "      --admin <HOST:PORT>       admin listener: /api/status, /metrics, /healthz,\n"
            "                                /readyz [default: off]\n"
            "      --trust-ca <FILE>         wss://: verify the relay against the CA\n"
            "                                certificates in FILE (PEM) instead of the\n"
            "                                system store\n"
            "      --insecure                wss://: do not verify the relay's certificate\n"
            "                                (encrypted but unauthenticated; for tests)\n"
            "      --compat                  KohakuRiver mode only: do not offer culvert.v1\n"
            "                                (the default when started as tunnel-client)\n"
            "  -h, --help                    print help\n"
            "  -V, --version                 print version\n",
            prog);
}

/* Whole decimal number, no sign or spaces, at most max. */
static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -1;
    *out = v;
    return 0;
}

/* "http:LOCAL:NAME" or "tls:LOCAL:NAME" (NAME: one lowercase DNS label). */
static int parse_named(const char *s, struct cv_agent_expose *x)
{
    unsigned long long v;
    char buf[32];
    const char *colon = strchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : 0;
    if (colon == NULL || n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (parse_uint(buf, 65535, &v) < 0 || v == 0 ||
        !cv_kh_name_valid(colon + 1, strlen(colon + 1)))
        return -1;
    x->local_port = (uint16_t)v;
    x->public_port = 0;
    x->name = colon + 1;
    return 0;
}

/* "tcp:LOCAL[:PUBLIC]", "udp:LOCAL[:PUBLIC]", "http:LOCAL:NAME" or
 * "tls:LOCAL:NAME". */
static int parse_expose(const char *s, struct cv_agent_expose *x)
{
    unsigned long long v;
    char buf[32];
    x->name = NULL;
    if (strncmp(s, "http:", 5) == 0) {
        x->proto = CV_KH_HTTP;
        return parse_named(s + 5, x);
    }
    if (strncmp(s, "tls:", 4) == 0) {
        x->proto = CV_KH_TLS;
        return parse_named(s + 4, x);
    }
    if (strncmp(s, "tcp:", 4) == 0)
        x->proto = 0;
    else if (strncmp(s, "udp:", 4) == 0)
        x->proto = 1;
    else
        return -1;
    s += 4;
    const char *colon = strchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : strlen(s);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (parse_uint(buf, 65535, &v) < 0 || v == 0)
        return -1;
    x->local_port = (uint16_t)v;
    x->public_port = 0;
    if (colon) {
        if (parse_uint(colon + 1, 65535, &v) < 0)
            return -1;
        x->public_port = (uint16_t)v;
    }
    return 0;
}

static const struct option longopts[] = {
    {"runner-url", required_argument, NULL, 'r'},
    {"container-id", required_argument, NULL, 'c'},
    {"reconnect-delay", required_argument, NULL, OPT_DELAY},
    {"max-reconnect", required_argument, NULL, OPT_MAX},
    {"log-level", required_argument, NULL, OPT_LEVEL},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"expose", required_argument, NULL, OPT_EXPOSE},
    {"ping-interval", required_argument, NULL, OPT_PING},
    {"compat", no_argument, NULL, OPT_COMPAT},
    {"admin", required_argument, NULL, OPT_ADMIN},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"trust-ca", required_argument, NULL, OPT_TRUST_CA},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0}};

/* Returns -1 to go on, or an exit code. */
static int parse_flags(int argc, char **argv, const char *prog, struct agent_args *a)
{
    opterr = 0;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, ":r:c:hV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': a->url = optarg; break;
        case 'c': a->cid = optarg; break;
        case OPT_DELAY: a->delay = optarg; break;
        case OPT_MAX: a->max = optarg; break;
        case OPT_LEVEL: a->level = optarg; break;
        case OPT_TOKEN: a->token = optarg; break;
        case OPT_PING: a->ping = optarg; break;
        case OPT_COMPAT: a->compat = true; break;
        case OPT_ADMIN: a->admin = optarg; break;
        case OPT_CONFIG: break; /* read before parsing (see load) */
        case OPT_TRUST_CA: a->trust_ca = optarg; break;
        case OPT_INSECURE: a->insecure = true; break;
        case OPT_EXPOSE:
            if (a->nexpose == MAX_EXPOSE || parse_expose(optarg, &a->expose[a->nexpose]) < 0)
                return cv_cli_usage_error(
                    prog,
                    "invalid value '%s' for '--expose <tcp|udp:LOCAL[:PUBLIC]>' or "
                    "'--expose <http|tls:LOCAL:NAME>' (NAME: a-z, 0-9, '-', 1-63 "
                    "characters, no '-' at either end)",
                    optarg);
            a->nexpose++;
            break;
        case 'h': usage(stdout, prog); return 0;
        case 'V': printf("%s %s\n", prog, CV_VERSION); return 0;
        case ':': return cv_cli_usage_error(prog, "a value is required for '%s'", argv[optind - 1]);
        default: return cv_cli_usage_error(prog, "unexpected argument '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cv_cli_usage_error(prog, "unexpected argument '%s'", argv[optind]);
    return -1;
}

static int set_log_level(const char *prog, const char *level)
{
    const char *rust = getenv("RUST_LOG");
    if (rust != NULL && cv_cli_log_level(rust) == 0)
        return -1;
    if (cv_cli_log_level(level) != 0)
        return cv_cli_usage_error(prog, "invalid value '%s' for '--log-level <LEVEL>'", level);
    return -1;
}

/* Fills opts from the flags and the environment. Returns -1 or an exit code. */
static int resolve(const char *prog, struct agent_args *a, struct cv_agent_opts *o)
{
    a->url = cv_cli_env_or(a->url, "RUNNER_URL");
    a->cid = cv_cli_env_or(a->cid, "CONTAINER_ID");
    a->delay = cv_cli_env_or(a->delay, "RECONNECT_DELAY");
    a->max = cv_cli_env_or(a->max, "MAX_RECONNECT");
    a->level = cv_cli_env_or(a->level, "LOG_LEVEL");
    if (a->url == NULL)
        return cv_cli_usage_error(prog, "the following required argument was not provided: %s",
                                  "--runner-url <RUNNER_URL>");
    if (a->cid == NULL)
        return cv_cli_usage_error(prog, "the following required argument was not provided: %s",
                                  "--container-id <CONTAINER_ID>");
    unsigned long long v;
    cv_agent_opts_default(o);
    if (a->delay != NULL) {
        if (parse_uint(a->delay, 1000000000ull, &v) < 0)
            return cv_cli_usage_error(prog, "invalid value '%s' for '--reconnect-delay <SECS>'",
                                      a->delay);
        o->reconnect_delay_ms = v * 1000;
    }
    if (a->max != NULL) {
        if (parse_uint(a->max, UINT32_MAX, &v) < 0)
            return cv_cli_usage_error(prog, "invalid value '%s' for '--max-reconnect <N>'", a->max);
        o->max_reconnect = (uint32_t)v;
    }
    o->runner_url = a->url;
    o->container_id = a->cid;
    o->token = cv_cli_env_or(a->token, "CULVERT_TOKEN");
    o->native = !a->compat && strcmp(prog, "tunnel-client") != 0;
    o->expose = a->expose;
    o->nexpose = a->nexpose;
    if (a->ping != NULL) {
        if (parse_uint(a->ping, 86400, &v) < 0 || v == 0)
            return cv_cli_usage_error(prog, "invalid value '%s' for '--ping-interval <SECS>'",
                                      a->ping);
        o->ping_interval_ms = (uint32_t)v * 1000;
    }
    if (a->nexpose > 0 && !o->native)
        return cv_cli_usage_error(
            prog, "--expose needs native mode (not with --compat or tunnel-client)");
    if (a->admin != NULL) {
        if (cv_addr_split(a->admin, a->admin_host, sizeof a->admin_host, &o->admin_port) != 0)
            return cv_cli_usage_error(
                prog, "invalid value '%s' for '--admin <HOST:PORT>' (numeric host)", a->admin);
        o->admin_host = a->admin_host;
    }
    return set_log_level(prog, a->level);
}

static void on_done(struct cv_agent *ag, enum cv_agent_end end, void *data)
{
    (void)ag;
    struct agent_run *r = data;
    r->end = end;
    cv_cli_signals_close(&r->sig);
    if (r->hup && !uv_is_closing((uv_handle_t *)r->hup))
        uv_close((uv_handle_t *)r->hup, NULL);
}

/* With a wss:// URL the TLS client context is made here, so that a bad
 * --trust-ca fails at start; other bad URLs count as failed handshakes, as
 * in the reference (§7). */
static int check_url(const char *prog, const struct agent_args *a, const struct cv_agent_opts *o)
{
    char url[4096];
    struct cv_url u;
    bool tls = cv_agent_url(o->runner_url, o->container_id, url, sizeof url) == 0 &&
               cv_url_parse(url, &u) == 0 && u.tls;
    if (!tls) {
        if (a->trust_ca || a->insecure)
            cv_log_warn("--trust-ca/--insecure apply to wss:// only; ignored for %s",
                        o->runner_url);
        return -1;
    }
    return cv_cli_client_tls(prog, a->trust_ca, a->insecure, "tunnel");
}

/* Everything an agent runs with: flags from the config file, then the
 * command line, then the environment. Reloaded whole on SIGHUP. */
struct agent_conf {
    struct agent_args a;
    struct cv_agent_opts o;
    struct cv_cli_conf file;
    char **argv; /* merged */
};

static void conf_free(struct agent_conf *c)
{
    cv_cli_conf_free(&c->file);
    free(c->argv);
    free(c);
}

static int check_entry(int argc, char **argv, void *ud)
{
    const char *prog = ud;
    struct agent_args a = {0};
    struct cv_agent_opts o;
    if (parse_flags(argc, argv, prog, &a) >= 0)
        return 1;
    if (a.url == NULL) /* checked later, with the command line and environment */
        a.url = "ws://127.0.0.1:1";
    if (a.cid == NULL)
        a.cid = "x";
    return resolve(prog, &a, &o) >= 0;
}

static struct agent_conf *load(const char *prog, int argc, char **argv, int *code, char *err,
                               size_t errlen)
{
    struct agent_conf *c = calloc(1, sizeof *c);
    err[0] = 0;
    if (c == NULL) {
        *code = 1;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *path = cv_cli_conf_path(argc, argv);
    if (path && cv_cli_conf_load(path, "agent", longopts, check_entry, (void *)prog, &c->file,
                                 err, errlen) != 0) {
        free(c);
        *code = 2;
        return NULL;
    }
    int n, rc;
    c->argv = cv_cli_conf_merge(&c->file, argc, argv, &n);
    if (c->argv == NULL)
        rc = 1;
    else if ((rc = parse_flags(n, c->argv, prog, &c->a)) < 0)
        rc = resolve(prog, &c->a, &c->o);
    if (rc >= 0) {
        conf_free(c);
        *code = rc;
        return NULL;
    }
    return c;
}

struct agent_main {
    struct agent_run r;
    struct cv_agent *ag;
    uv_signal_t hup;
    struct agent_conf *conf; /* the running one: the agent borrows its token */
    const char *prog;
    int argc;
    char **argv;
};

/* SIGHUP: reads the configuration again. A bad file is refused (logged
 * with its line) and nothing changes; a good one replaces the exposures
 * (released, kept or added one by one: live streams stay) and the token
 * for the next handshakes. */
static void on_hup(uv_signal_t *h, int signum)
{
    (void)signum;
    struct agent_main *m = h->data;
    char err[600];
    int code;
    struct agent_conf *nc = load(m->prog, m->argc, m->argv, &code, err, sizeof err);
    if (nc == NULL) {
        cv_log_error("configuration reload refused, keeping the running one: %s",
                     err[0] ? err : "invalid flags");
        return;
    }
    const struct cv_agent_opts *o = &m->conf->o, *n = &nc->o;
    if (strcmp(o->runner_url, n->runner_url) != 0 || strcmp(o->container_id, n->container_id) != 0 ||
        o->native != n->native || o->admin_port != n->admin_port ||
        (o->admin_host == NULL) != (n->admin_host == NULL))
        cv_log_warn("configuration reload: the relay URL, container id, --compat and --admin take "
                    "effect on restart only; the running values are kept");
    int rc = cv_agent_set_exposures(m->ag, n->expose, n->nexpose);
    if (rc != 0) {
        cv_log_error("configuration reload refused, keeping the running one: %s", cv_strerror(rc));
        conf_free(nc);
        return;
    }
    cv_agent_set_token(m->ag, n->token);
    cv_log_info("configuration reloaded: %zu exposure%s, %s", n->nexpose,
                n->nexpose == 1 ? "" : "s", n->token ? "token set" : "no token");
    conf_free(m->conf);
    m->conf = nc;
}

static void stop_all(void *data)
{
    struct agent_main *m = data;
    cv_agent_stop(m->ag); /* on_done closes the signal handles */
}

static int run(struct agent_main *m)
{
    const struct cv_agent_opts *o = &m->conf->o;
    uv_loop_t loop;
    m->r.end = CV_AGENT_STOPPED;
    if (uv_loop_init(&loop) != 0)
        return 1;
    int rc = cv_agent_start(&loop, o, on_done, &m->r, &m->ag);
    if (rc != 0) {
        fprintf(stderr, "Error: cannot start the agent: %s\n", cv_strerror(rc));
        uv_loop_close(&loop);
        return 1;
    }
    cv_cli_signals_start(&loop, &m->r.sig, stop_all, m);
    uv_signal_init(&loop, &m->hup);
    m->hup.data = m;
    m->r.hup = &m->hup;
    uv_signal_start(&m->hup, on_hup, SIGHUP);
    cv_log_info("culvert agent %s: container %s, tunnel %s", CV_VERSION, o->container_id,
                cv_agent_log_url(m->ag));
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (m->r.end == CV_AGENT_GAVE_UP) {
        fprintf(stderr, "Error: Max reconnection attempts exceeded\n");
        return 1;
    }
    return 0;
}

int cv_cmd_agent(int argc, char **argv)
{
    const char *prog = strrchr(argv[0], '/');
    prog = prog ? prog + 1 : argv[0];
    if (strcmp(prog, "tunnel-client") != 0)
        prog = "culvert agent";
    cv_log_set_stream(stdout);
    char err[600];
    int rc;
    struct agent_main m = {.prog = prog, .argc = argc, .argv = argv};
    m.conf = load(prog, argc, argv, &rc, err, sizeof err);
    if (m.conf == NULL) {
        if (err[0])
            fprintf(stderr, "error: %s\n", err);
        return rc;
    }
    if ((rc = check_url(prog, &m.conf->a, &m.conf->o)) < 0)
        rc = run(&m);
    conf_free(m.conf);
    cv_tls_client_cleanup();
    return rc;
}
