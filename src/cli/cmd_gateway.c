/* `culvert gateway`: the Runner tunnel HTTP protocol served by worker
 * pools (specs/runner-http.md). Flags, signals (graceful drain), run. */
#include <errno.h>
#include <getopt.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli/cmds.h"
#include "cli/flags.h"
#include "cli/signals.h"
#include "core/err.h"
#include "core/log.h"
#include "culvert/gateway.h"
#include "net/addr.h"

#define MAX_LIST 256
#define MAX_WORDS 64
#define GRACE_MS 10000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: culvert gateway [--listen HOST:PORT] [options]\n"
            "\n"
            "Serves the BlueLibs Runner tunnel HTTP protocol v1.0: POST {base}/task/{id},\n"
            "POST {base}/event/{id}, GET {base}/discovery. Calls go to worker processes\n"
            "speaking the cwp/1 line protocol (e.g. workers/node).\n"
            "\n"
            "  --listen HOST:PORT        address to listen on (default 127.0.0.1:7070; port 0 = any)\n"
            "  --base-path P             path prefix (default /__runner)\n"
            "  --token T                 accepted token (repeat for rotation; env CULVERT_GATEWAY_TOKEN)\n"
            "  --token-file F            tokens, one per line (# comments)\n"
            "  --auth-header NAME        header carrying the token (default x-runner-token)\n"
            "  --allow-anonymous         serve without tokens (else 500 AUTH_NOT_CONFIGURED)\n"
            "  --auth-worker             delegated auth: when no token matches, ask the --worker\n"
            "                            pool (cwp/1 feature \"auth\", or runner-ipc-v2); a refusal,\n"
            "                            bad reply or 5 s timeout answers 401 (fail-closed)\n"
            "  --cors-origin O           Access-Control-Allow-Origin value (default *); repeat for\n"
            "                            a list: the request's Origin is echoed if listed, else no\n"
            "                            Allow-Origin; Vary: Origin is added\n"
            "  --cors-origin-regex RE    echo the request's Origin if it matches RE (POSIX extended\n"
            "                            regex, unanchored unless written ^...$; with --cors-origin:\n"
            "                            listed or matching); Vary: Origin is added\n"
            "  --cors-credentials        Access-Control-Allow-Credentials: true (without\n"
            "                            --cors-origin: no Allow-Origin, Vary: Origin)\n"
            "  --cors-expose LIST        Access-Control-Expose-Headers (comma list)\n"
            "  --cors-max-age SEC        Access-Control-Max-Age on preflights\n"
            "  --cors-methods LIST       preflight Allow-Methods (default POST, GET, OPTIONS)\n"
            "  --cors-allowed-headers LIST  preflight Allow-Headers (default: echo the request's\n"
            "                            Access-Control-Request-Headers)\n"
            "  --cors-no-vary            never send Vary: Origin\n"
            "  --allow-task ID           expose a task (repeat; config order is kept)\n"
            "  --allow-event ID          expose an event (repeat)\n"
            "  --no-discovery            GET {base}/discovery answers 404\n"
            "  --worker 'CMD ARGS'       worker command (split on spaces; quotes group words;\n"
            "                            no shell)\n"
            "  --workers N               worker processes (default: number of CPUs)\n"
            "  --worker-protocol P       cwp/1 (default), runner-ipc-v1 or runner-ipc-v2\n"
            "  --queue-timeout MS        longest wait for a free worker (default 5000)\n"
            "  --queue-max N             calls waiting for a worker at most; more get 503 at once\n"
            "                            (default 1024)\n"
            "  --max-inflight N          calls per worker at most (default: the worker's\n"
            "                            maxInFlight; the lower applies)\n"
            "  --max-requests N          recycle a worker after N calls (default 0: never)\n"
            "  --deadline MS             per call, admission to response head (default 30000)\n"
            "  --deadline-for ID=MS      the deadline of one task or event id (repeat)\n"
            "  --no-async-context ID     drop x-runner-context for this id (repeat)\n"
            "  --max-body BYTES          JSON body limit (default 2097152)\n"
            "  --max-octet BYTES         octet-stream body limit (default: none)\n"
            "  --max-file-size BYTES     multipart: one file at most (default 20971520)\n"
            "  --max-files N             multipart: file parts at most (default 10)\n"
            "  --max-fields N            multipart: non-file fields at most (default 100)\n"
            "  --max-field-size BYTES    multipart: one field, the manifest too (default 1048576)\n"
            "  --max-parts N             multipart: parts at most (default: no limit)\n"
            "  --spool-dir DIR           multipart: file parts sent before the manifest go to\n"
            "                            unnamed temporary files here past 256 KiB per request\n"
            "                            (default $TMPDIR, else /tmp; checked at start)\n"
            "  --stream-idle MS          cut a streamed response silent this long (default 60000)\n"
            "  --log-level LEVEL         error, warn, info, debug or trace (default info)\n"
            "  -h, --help                show this help\n");
}

/* Splits a command line into words: blanks separate, '...' and "..."
 * group (backslash escapes inside double quotes and outside quotes). No
 * shell: no variables, globs or redirections. Returns the word count or
 * -1 (unbalanced quote, too many words). Words point into buf. */
int cv_cli_split_words(const char *s, char *buf, size_t cap, char **words, int max)
{
    int n = 0;
    size_t o = 0;
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (*s == '\0')
            break;
        if (n >= max)
            return -1;
        words[n++] = buf + o;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n') {
            if (o + 2 > cap)
                return -1;
            if (*s == '\'') {
                for (s++; *s && *s != '\''; s++)
                    buf[o++] = *s;
                if (*s != '\'')
                    return -1;
                s++;
            } else if (*s == '"') {
                for (s++; *s && *s != '"'; s++) {
                    if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
                        s++;
                    buf[o++] = *s;
                }
                if (*s != '"')
                    return -1;
                s++;
            } else {
                if (*s == '\\' && s[1])
                    s++;
                buf[o++] = *s++;
            }
            if (o + 1 > cap)
                return -1;
        }
        buf[o++] = '\0';
    }
    return n;
}

struct cfg {
    struct cv_gateway_opts o;
    const char *tokens[MAX_LIST];
    const char *tasks[MAX_LIST];
    const char *events[MAX_LIST];
    char *file_tokens; /* owned: token file contents */
    char host[CV_ADDR_STRLEN];
    const char *worker;
    unsigned workers;
    enum cv_gw_worker_protocol protocol;
    uint64_t queue_timeout_ms;
    struct cv_gateway_cors cors;
    const char *origins[MAX_LIST];
    size_t norigins;
    struct cv_gateway_id_opts ids[MAX_LIST];
    unsigned queue_max, max_inflight;
    uint64_t max_requests;
    bool auth_worker;
};

/* The per-id settings of id (added if new), or NULL (too many). */
static struct cv_gateway_id_opts *id_opts(struct cfg *c, const char *id)
{
    for (size_t i = 0; i < c->o.nids; i++)
        if (strcmp(c->ids[i].id, id) == 0)
            return &c->ids[i];
    if (c->o.nids >= MAX_LIST)
        return NULL;
    struct cv_gateway_id_opts *x = &c->ids[c->o.nids++];
    x->id = id;
    return x;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return CV_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return CV_EINVAL;
    *out = v;
    return 0;
}

static int add_item(const char **list, size_t *n, const char *v, const char *what)
{
    if (*v == '\0') {
        fprintf(stderr, "culvert gateway: empty %s\n", what);
        return 2;
    }
    if (*n >= MAX_LIST) {
        fprintf(stderr, "culvert gateway: too many %ss (max %d)\n", what, MAX_LIST);
        return 2;
    }
    list[(*n)++] = v;
    return -1;
}

static int read_token_file(struct cfg *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "culvert gateway: cannot read --token-file %s: %s\n", path, strerror(errno));
        return 2;
    }
    size_t cap = 64 * 1024;
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap, f) : 0;
    fclose(f);
    if (buf == NULL)
        return 1;
    buf[n] = '\0';
    free(c->file_tokens);
    c->file_tokens = buf;
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *e = line + strlen(line);
        while (e > line && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (*line && *line != '#') {
            int rc = add_item(c->tokens, &c->o.ntokens, line, "token");
            if (rc >= 0)
                return rc;
        }
        line = nl ? nl + 1 : NULL;
    }
    if (c->o.ntokens == 0) {
        fprintf(stderr, "culvert gateway: --token-file %s holds no token\n", path);
        return 2;
    }
    return -1;
}

static int parse(int argc, char **argv, struct cfg *c)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},       {"base-path", required_argument, NULL, 'b'},
        {"token", required_argument, NULL, 'T'},        {"token-file", required_argument, NULL, 'F'},
        {"auth-header", required_argument, NULL, 'H'},  {"allow-anonymous", no_argument, NULL, 'A'},
        {"cors-origin", required_argument, NULL, 'o'},  {"cors-credentials", no_argument, NULL, 'C'},
        {"allow-task", required_argument, NULL, 't'},   {"allow-event", required_argument, NULL, 'e'},
        {"no-discovery", no_argument, NULL, 'N'},       {"worker", required_argument, NULL, 'w'},
        {"workers", required_argument, NULL, 'n'},      {"worker-protocol", required_argument, NULL, 'p'},
        {"queue-timeout", required_argument, NULL, 'q'}, {"deadline", required_argument, NULL, 'd'},
        {"max-body", required_argument, NULL, 'm'},     {"max-octet", required_argument, NULL, 'M'},
        {"log-level", required_argument, NULL, 'L'},    {"help", no_argument, NULL, 'h'},
        {"cors-expose", required_argument, NULL, 'x'},  {"cors-max-age", required_argument, NULL, 'a'},
        {"stream-idle", required_argument, NULL, 'i'},
        {"cors-origin-regex", required_argument, NULL, 'R'},
        {"cors-methods", required_argument, NULL, 'O'},
        {"cors-allowed-headers", required_argument, NULL, 'E'},
        {"cors-no-vary", no_argument, NULL, 'V'},
        {"queue-max", required_argument, NULL, 'Q'},
        {"max-inflight", required_argument, NULL, 'I'},
        {"max-requests", required_argument, NULL, 'r'},
        {"auth-worker", no_argument, NULL, 'W'},
        {"deadline-for", required_argument, NULL, 'D'},
        {"no-async-context", required_argument, NULL, 'X'},
        {"max-file-size", required_argument, NULL, 1001},
        {"max-files", required_argument, NULL, 1002},
        {"max-fields", required_argument, NULL, 1003},
        {"max-field-size", required_argument, NULL, 1004},
        {"max-parts", required_argument, NULL, 1005},
        {"spool-dir", required_argument, NULL, 1006},
        {NULL, 0, NULL, 0}};
    struct cv_gateway_id_opts *io;
    regex_t re;
    char why[256];
    int ch, rc;
    uint64_t v;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            if ((rc = cv_cli_hostport("culvert gateway: ", "listen", optarg, c->host,
                                      sizeof c->host, &c->o.port)) >= 0)
                return rc;
            break;
        case 'b': c->o.base_path = optarg; break;
        case 'T':
            if ((rc = add_item(c->tokens, &c->o.ntokens, optarg, "token")) >= 0)
                return rc;
            break;
        case 'F':
            if ((rc = read_token_file(c, optarg)) >= 0)
                return rc;
            break;
        case 'H': c->o.auth_header = optarg; break;
        case 'A': c->o.allow_anonymous = true; break;
        case 'o':
            if ((rc = add_item(c->origins, &c->norigins, optarg, "CORS origin")) >= 0)
                return rc;
            break;
        case 'R':
            if ((rc = regcomp(&re, optarg, REG_EXTENDED | REG_NOSUB)) != 0) {
                regerror(rc, &re, why, sizeof why);
                fprintf(stderr, "culvert gateway: --cors-origin-regex '%s': %s\n", optarg, why);
                return 2;
            }
            regfree(&re);
            c->cors.origin_regex = optarg;
            break;
        case 'O': c->cors.methods = optarg; break;
        case 'E': c->cors.allowed_headers = optarg; break;
        case 'V': c->cors.no_vary = true; break;
        case 'W': c->auth_worker = true; break;
        case 'Q':
        case 'I':
            if (parse_u64(optarg, 1, 1u << 20, &v) != 0) {
                fprintf(stderr, "culvert gateway: --%s wants 1..1048576, got '%s'\n",
                        ch == 'Q' ? "queue-max" : "max-inflight", optarg);
                return 2;
            }
            *(ch == 'Q' ? &c->queue_max : &c->max_inflight) = (unsigned)v;
            break;
        case 'r':
            if (parse_u64(optarg, 0, UINT64_MAX / 4, &v) != 0) {
                fprintf(stderr, "culvert gateway: --max-requests wants a count, got '%s'\n", optarg);
                return 2;
            }
            c->max_requests = v;
            break;
        case 'D': {
            char *eq = strrchr(optarg, '=');
            if (eq == NULL || eq == optarg || parse_u64(eq + 1, 1, 86400000, &v) != 0) {
                fprintf(stderr, "culvert gateway: --deadline-for wants ID=MS (1..86400000), got "
                                "'%s'\n", optarg);
                return 2;
            }
            *eq = '\0';
            if ((io = id_opts(c, optarg)) == NULL) {
                fprintf(stderr, "culvert gateway: too many per-id settings (max %d)\n", MAX_LIST);
                return 2;
            }
            io->deadline_ms = v;
            break;
        }
        case 'X':
            if (*optarg == '\0') {
                fprintf(stderr, "culvert gateway: --no-async-context wants an id\n");
                return 2;
            }
            if ((io = id_opts(c, optarg)) == NULL) {
                fprintf(stderr, "culvert gateway: too many per-id settings (max %d)\n", MAX_LIST);
                return 2;
            }
            io->no_async_context = true;
            break;
        case 1001:
        case 1004:
            if (parse_u64(optarg, 1, UINT64_MAX / 4, &v) != 0) {
                fprintf(stderr, "culvert gateway: --%s wants a byte count, got '%s'\n",
                        ch == 1001 ? "max-file-size" : "max-field-size", optarg);
                return 2;
            }
            *(ch == 1001 ? &c->o.mp_file_size : &c->o.mp_field_size) = v;
            break;
        case 1002:
        case 1003:
        case 1005:
            if (parse_u64(optarg, 1, UINT32_MAX, &v) != 0) {
                fprintf(stderr, "culvert gateway: --%s wants a count (1..%u), got '%s'\n",
                        ch == 1002 ? "max-files" : ch == 1003 ? "max-fields" : "max-parts",
                        UINT32_MAX, optarg);
                return 2;
            }
            *(ch == 1002 ? &c->o.mp_files : ch == 1003 ? &c->o.mp_fields : &c->o.mp_parts) =
                (uint32_t)v;
            break;
        case 1006:
            if (*optarg == '\0') {
                fprintf(stderr, "culvert gateway: --spool-dir wants a directory\n");
                return 2;
            }
            c->o.spool_dir = optarg;
            break;
        case 'C': c->cors.credentials = true; break;
        case 'x': c->cors.exposed_headers = optarg; break;
        case 'a':
            if (parse_u64(optarg, 0, 86400 * 365, &v) != 0) {
                fprintf(stderr, "culvert gateway: --cors-max-age wants seconds, got '%s'\n", optarg);
                return 2;
            }
            c->cors.max_age = (int)v;
            break;
        case 't':
            if ((rc = add_item(c->tasks, &c->o.nallow_tasks, optarg, "task id")) >= 0)
                return rc;
            break;
        case 'e':
            if ((rc = add_item(c->events, &c->o.nallow_events, optarg, "event id")) >= 0)
                return rc;
            break;
        case 'N': c->o.discovery_disabled = true; break;
        case 'w': c->worker = optarg; break;
        case 'n':
            if (parse_u64(optarg, 1, 1024, &v) != 0) {
                fprintf(stderr, "culvert gateway: --workers wants 1..1024, got '%s'\n", optarg);
                return 2;
            }
            c->workers = (unsigned)v;
            break;
        case 'p':
            if (strcmp(optarg, "cwp/1") == 0)
                c->protocol = CV_GW_CWP1;
            else if (strcmp(optarg, "runner-ipc-v1") == 0)
                c->protocol = CV_GW_RUNNER_IPC_V1;
            else if (strcmp(optarg, "runner-ipc-v2") == 0)
                c->protocol = CV_GW_RUNNER_IPC_V2;
            else {
                fprintf(stderr, "culvert gateway: --worker-protocol wants cwp/1, runner-ipc-v1 or "
                                "runner-ipc-v2, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'q':
        case 'd':
        case 'i':
            if (parse_u64(optarg, 1, 86400000, &v) != 0) {
                fprintf(stderr, "culvert gateway: --%s wants milliseconds (1..86400000), got '%s'\n",
                        ch == 'q' ? "queue-timeout" : ch == 'd' ? "deadline" : "stream-idle", optarg);
                return 2;
            }
            if (ch == 'q')
                c->queue_timeout_ms = v;
            else if (ch == 'd')
                c->o.deadline_ms = v;
            else
                c->o.stream_idle_ms = v;
            break;
        case 'm':
        case 'M':
            if (parse_u64(optarg, 1, UINT64_MAX / 4, &v) != 0) {
                fprintf(stderr, "culvert gateway: --%s wants a byte count, got '%s'\n",
                        ch == 'm' ? "max-body" : "max-octet", optarg);
                return 2;
            }
            if (ch == 'm')
                c->o.max_json_body = v;
            else
                c->o.max_octet_body = v;
            break;
        case 'L':
            if (cv_cli_log_level(optarg) != 0) {
                fprintf(stderr, "culvert gateway: unknown log level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        case ':':
            fprintf(stderr, "culvert gateway: %s needs a value\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "culvert gateway: unknown option '%s' (try --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "culvert gateway: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1;
}

struct run {
    struct cv_gateway *gw;
    struct cv_cli_signals sig;
};

static void on_stopped(struct cv_gateway *gw, void *ud)
{
    struct run *run = ud;
    (void)gw;
    cv_cli_signals_close(&run->sig);
}

static void stop(void *data)
{
    struct run *run = data;
    uv_signal_stop(&run->sig.sig[0]);
    uv_signal_stop(&run->sig.sig[1]);
    cv_log_info("gateway: draining (up to %d s)", GRACE_MS / 1000);
    cv_gateway_stop(run->gw, GRACE_MS, on_stopped, run);
}

static int run_gateway(struct cfg *c)
{
    char wbuf[8192];
    char *words[MAX_WORDS + 1];
    int nw = 0;
    if (c->worker != NULL) {
        nw = cv_cli_split_words(c->worker, wbuf, sizeof wbuf, words, MAX_WORDS);
        if (nw <= 0) {
            fprintf(stderr, "culvert gateway: --worker '%s': %s\n", c->worker,
                    nw == 0 ? "empty command" : "unbalanced quote or too long");
            return 2;
        }
        words[nw] = NULL;
    } else {
        cv_log_warn("gateway: no --worker: every call answers 404 (no backend serves it)");
    }
    if (c->o.nallow_tasks + c->o.nallow_events == 0)
        cv_log_warn("gateway: nothing allow-listed (--allow-task/--allow-event): every call "
                    "answers 403");
    if (c->o.allow_anonymous && c->o.ntokens == 0)
        cv_log_warn("gateway: --allow-anonymous: anyone who reaches %s:%u may call", c->host,
                    c->o.port);
    c->o.host = c->host;
    c->o.tokens = c->tokens;
    c->o.allow_tasks = c->tasks;
    c->o.allow_events = c->events;
    /* One --cors-origin is a fixed value; several, or any with a regex, a list. */
    if (c->norigins == 1 && c->cors.origin_regex == NULL) {
        c->cors.origin = c->origins[0];
    } else {
        c->cors.origins = c->origins;
        c->cors.norigins = c->norigins;
    }
    c->o.cors = c->cors;
    c->o.ids = c->ids;
    if (c->auth_worker && nw == 0) {
        fprintf(stderr, "culvert gateway: --auth-worker needs --worker\n");
        return 2;
    }
    if (c->auth_worker && c->protocol == CV_GW_RUNNER_IPC_V1) {
        fprintf(stderr, "culvert gateway: --auth-worker: runner-ipc-v1 workers have no auth "
                        "message (use cwp/1 or runner-ipc-v2)\n");
        return 2;
    }

    uv_loop_t *loop = uv_default_loop();
    struct run run = {0};
    int rc = cv_gateway_start(loop, &c->o, &run.gw);
    if (rc != 0) {
        fprintf(stderr, "culvert gateway: cannot start on %s:%u: %s\n", c->host, c->o.port,
                cv_strerror(rc));
        return rc == CV_EINVAL ? 2 : 1;
    }
    if (nw > 0) {
        struct cv_gateway_pool_opts po;
        cv_gateway_pool_opts_init(&po);
        po.argv = (const char *const *)words;
        po.workers = c->workers;
        po.protocol = c->protocol;
        if (c->queue_timeout_ms)
            po.queue_timeout_ms = c->queue_timeout_ms;
        if (c->queue_max)
            po.queue_max = c->queue_max;
        po.max_inflight = c->max_inflight;
        po.max_requests = c->max_requests;
        po.auth = c->auth_worker;
        rc = cv_gateway_add_pool(run.gw, &po);
        if (rc != 0) {
            fprintf(stderr, "culvert gateway: cannot start the worker pool '%s': %s\n", c->worker,
                    cv_strerror(rc));
            cv_gateway_stop(run.gw, 0, NULL, NULL);
            uv_run(loop, UV_RUN_DEFAULT);
            return 1;
        }
    }
    printf("culvert gateway listening on http://%s:%u\n", c->host, cv_gateway_port(run.gw));
    fflush(stdout);
    cv_cli_signals_start(loop, &run.sig, stop, &run);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}

int cv_cmd_gateway(int argc, char **argv)
{
    struct cfg c;
    memset(&c, 0, sizeof c);
    cv_gateway_opts_init(&c.o);
    c.cors.max_age = -1;
    snprintf(c.host, sizeof c.host, "127.0.0.1");
    int rc = parse(argc, argv, &c);
    if (rc < 0) {
        const char *env = cv_cli_env_or(NULL, "CULVERT_GATEWAY_TOKEN");
        if (c.o.ntokens == 0 && env != NULL)
            c.tokens[c.o.ntokens++] = env;
        rc = run_gateway(&c);
    }
    free(c.file_tokens);
    return rc;
}
