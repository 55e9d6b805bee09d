/* gateway_native: the shared test app served by native C handlers
 * (include/culvert/gateway.h). The Node test app (workers/node) serves the
 * same ids with @bluelibs/runner, so interop tests and the benchmark run
 * against both.
 *
 *   gateway_native [--listen HOST:PORT] [--token T]... [--allow-anonymous]
 *                  [--allow-task ID]... [--allow-event ID]... [--deadline MS]
 *                  [--max-octet BYTES] [--base-path P] [--cors-origin O]
 *                  [--cors-credentials true] [--cors-expose H] [--cors-max-age S]
 *                  [--auth-key K] [--max-file-size BYTES] [--spool-dir DIR]
 *
 * Without --allow-* flags every id below is allow-listed except
 * app.tasks.hidden. Prints "listening on http://HOST:PORT" once bound
 * (port 0: ephemeral); SIGINT/SIGTERM stop it gracefully (exit 0).
 *
 *   app.tasks.add      {a,b} -> a+b
 *   app.tasks.whoami   -> {"user": the "app.ctx.user" entry of x-runner-context, or null}
 *   app.tasks.echo     -> the input unchanged
 *   app.tasks.noop     -> undefined
 *   app.tasks.fail     typed error app.errors.AppError, data {"code":"X1","why":"dup"}, 409
 *   app.tasks.boom     untyped failure (500 Internal Error)
 *   app.tasks.upload   multipart {note?, file} -> {"name","type","bytes","sha256"}
 *   app.tasks.octet    octet body -> {"receivedBytes": N}
 *   app.tasks.stream   streamed "chunk1\n" "chunk2\n" (application/octet-stream)
 *   app.tasks.duplex   octet body streamed back upper-cased while it arrives
 *   app.tasks.slow     waits input.ms milliseconds, then "done" (cancellable)
 *   app.tasks.hidden   registered, not allow-listed by default
 *   app.events.notify  event; returnPayload -> the payload plus "touched": true
 *   app.events.par     a parallel event
 *
 * --auth-key K: delegated auth (cv_gateway_set_auth), see a_key. */
#define OPENSSL_API_COMPAT 0x10101000L
#include <math.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "culvert/gateway.h"
#include "codec/rjson.h"
#include "core/err.h"
#include "core/log.h"
#include "net/addr.h"

static uv_loop_t *g_loop;
static struct cv_gateway *g_gw;
static uv_signal_t g_sig[2];

/* ---- tasks ---- */

static void t_add(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    const json_t *in = cv_gw_input(c);
    double a, b;
    if (!json_is_object(in) || cv_rj_number(cv_rj_get(in, "a"), &a) < 0 ||
        cv_rj_number(cv_rj_get(in, "b"), &b) < 0) {
        cv_gw_reply(c, cv_rj_make_number(NAN)); /* undefined + undefined, as in JS */
        return;
    }
    cv_gw_reply(c, cv_rj_make_number(a + b));
}

static void t_whoami(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    json_t *user = NULL;
    const char *raw = cv_gw_runner_context(c);
    json_t *ctx = raw ? json_loads(raw, 0, NULL) : NULL;
    const char *entry = json_string_value(json_object_get(ctx, "app.ctx.user"));
    if (entry != NULL) {
        char why[64];
        user = cv_rj_decode(entry, strlen(entry), why, sizeof why); /* unparseable: ignored */
    }
    json_decref(ctx);
    cv_gw_reply(c, json_pack("{s:o}", "user", user ? user : json_null()));
}

static void t_echo(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_reply(c, json_incref((json_t *)cv_gw_input(c)));
}

static void t_noop(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_reply(c, NULL);
}

static void t_fail(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_fail_typed(c, 409, "app.errors.AppError", NULL,
                     json_pack("{s:s,s:s}", "code", "X1", "why", "dup"));
}

static void t_boom(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_log_info("app.tasks.boom: boom (rid %s)", cv_gw_request_id(c));
    cv_gw_fail(c, 500, "INTERNAL_ERROR", "boom");
}

static void t_hidden(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_reply(c, json_string("hidden"));
}

/* upload: hashes the one file while it streams in. */
struct upload {
    SHA256_CTX sha;
    uint64_t bytes;
    char *name, *type;
};

static void up_free(struct upload *u)
{
    free(u->name);
    free(u->type);
    free(u);
}

static void up_open(struct cv_gw_ctx *c, const char *file_id, const json_t *meta, void *ud)
{
    struct upload *u = ud;
    (void)c, (void)file_id;
    free(u->name);
    free(u->type);
    const char *n = json_string_value(json_object_get(meta, "name"));
    const char *t = json_string_value(json_object_get(meta, "type"));
    u->name = strdup(n ? n : "");
    u->type = strdup(t ? t : "");
}

static void up_data(struct cv_gw_ctx *c, const char *file_id, const uint8_t *p, size_t n, void *ud)
{
    struct upload *u = ud;
    (void)c, (void)file_id;
    SHA256_Update(&u->sha, p, n);
    u->bytes += n;
}

static void up_end(struct cv_gw_ctx *c, const char *file_id, bool error, void *ud)
{
    struct upload *u = ud;
    (void)file_id;
    if (error) {
        cv_gw_fail(c, 500, "STREAM_ERROR", "file stream failed");
        up_free(u);
        return;
    }
    uint8_t d[32];
    char hex[65];
    SHA256_Final(d, &u->sha);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    json_t *r = json_pack("{s:s,s:s,s:o,s:s}", "name", u->name ? u->name : "", "type",
                          u->type ? u->type : "", "bytes", cv_rj_make_number((double)u->bytes),
                          "sha256", hex);
    up_free(u);
    cv_gw_reply(c, r);
}

static void up_cancel(struct cv_gw_ctx *c, void *ud)
{
    (void)c;
    up_free(ud);
}

static void t_upload(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    struct upload *u = calloc(1, sizeof *u);
    if (u == NULL) {
        cv_gw_fail(c, 500, "INTERNAL_ERROR", "oom");
        return;
    }
    SHA256_Init(&u->sha);
    cv_gw_on_files(c, up_open, up_data, up_end, u);
    cv_gw_on_cancel(c, up_cancel, u);
}

/* octet: counts the body. */
static void oc_data(struct cv_gw_ctx *c, const uint8_t *p, size_t n, void *ud)
{
    (void)p, (void)ud;
    uint64_t *count = cv_gw_data(c);
    *count += n;
}

static void oc_end(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    uint64_t *count = cv_gw_data(c);
    json_t *r = json_pack("{s:o}", "receivedBytes", cv_rj_make_number((double)*count));
    free(count);
    cv_gw_reply(c, r);
}

static void free_data(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    free(cv_gw_data(c));
}

static void t_octet(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    uint64_t *count = calloc(1, sizeof *count);
    if (count == NULL) {
        cv_gw_fail(c, 500, "INTERNAL_ERROR", "oom");
        return;
    }
    cv_gw_set_data(c, count);
    cv_gw_on_cancel(c, free_data, NULL);
    cv_gw_on_body(c, oc_data, oc_end, NULL);
}

static void t_stream(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    if (cv_gw_stream_start(c, 200, "application/octet-stream", NULL, 0) < 0) {
        cv_gw_fail(c, 500, "INTERNAL_ERROR", "stream refused");
        return;
    }
    cv_gw_stream_write(c, "chunk1\n", 7);
    cv_gw_stream_write(c, "chunk2\n", 7);
    cv_gw_stream_end(c, false);
}

/* duplex: the response starts at once and follows the body. */
static void dx_data(struct cv_gw_ctx *c, const uint8_t *p, size_t n, void *ud)
{
    (void)ud;
    char buf[4096];
    while (n > 0) {
        size_t k = n < sizeof buf ? n : sizeof buf;
        for (size_t i = 0; i < k; i++)
            buf[i] = (char)(p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i]);
        cv_gw_stream_write(c, buf, k); /* CV_EAGAIN: the core pauses the body for us */
        p += k;
        n -= k;
    }
}

static void dx_end(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_stream_end(c, false);
}

static void t_duplex(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    if (cv_gw_stream_start(c, 200, "application/octet-stream", NULL, 0) < 0) {
        cv_gw_fail(c, 500, "INTERNAL_ERROR", "stream refused");
        return;
    }
    cv_gw_on_body(c, dx_data, dx_end, NULL);
}

/* slow: a timer per call, closed on cancel. */
struct slow {
    uv_timer_t t;
    struct cv_gw_ctx *c;
};

static void slow_fire(uv_timer_t *t)
{
    struct slow *s = t->data;
    struct cv_gw_ctx *c = s->c;
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    cv_gw_reply(c, json_string("done"));
}

static void slow_cancel(struct cv_gw_ctx *c, void *ud)
{
    struct slow *s = ud;
    (void)c;
    uv_timer_stop(&s->t);
    uv_close((uv_handle_t *)&s->t, (uv_close_cb)free);
}

/* Answers c with "done" after ms (for an auth call: admits). */
static void slow_start(struct cv_gw_ctx *c, uint64_t ms)
{
    struct slow *s = calloc(1, sizeof *s);
    if (s == NULL) {
        cv_gw_fail(c, 500, "INTERNAL_ERROR", "oom");
        return;
    }
    s->c = c;
    uv_timer_init(g_loop, &s->t);
    s->t.data = s;
    uv_timer_start(&s->t, slow_fire, ms, 0);
    cv_gw_on_cancel(c, slow_cancel, s);
}

static void t_slow(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    double ms = 0;
    const json_t *in = cv_gw_input(c);
    if (json_is_object(in))
        cv_rj_number(cv_rj_get(in, "ms"), &ms);
    slow_start(c, ms > 0 && ms < 1e9 ? (uint64_t)ms : 0);
}

/* ---- delegated auth (--auth-key K) ---- */

/* Asked when the token header matched no token: x-api-key K admits at
 * once, "K-later" after 50 ms, "never" gets no answer (the gateway's 5 s
 * auth timeout refuses it); anything else is refused. */
static const char *g_auth_key;

static void a_key(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    const char *k = cv_gw_header(c, "x-api-key");
    size_t n = strlen(g_auth_key);
    if (k != NULL && strcmp(k, g_auth_key) == 0) {
        cv_gw_reply(c, NULL);
    } else if (k != NULL && strncmp(k, g_auth_key, n) == 0 && strcmp(k + n, "-later") == 0) {
        slow_start(c, 50);
    } else if (k == NULL || strcmp(k, "never") != 0) {
        cv_gw_fail(c, 403, "FORBIDDEN", "bad key");
    }
}

/* ---- events ---- */

static void e_notify(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    if (!cv_gw_return_payload(c)) {
        cv_gw_reply(c, NULL);
        return;
    }
    json_t *p = json_deep_copy(cv_gw_input(c));
    if (json_is_object(p) && cv_rj_record_type(p) == NULL)
        cv_rj_set(p, "touched", json_true());
    cv_gw_reply(c, p);
}

static void e_par(struct cv_gw_ctx *c, void *ud)
{
    (void)ud;
    cv_gw_reply(c, NULL);
}

/* ---- main ---- */

static void on_stopped(struct cv_gateway *gw, void *ud)
{
    (void)gw, (void)ud;
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&g_sig[i], NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    cv_log_info("gateway_native: signal %d, stopping", signum);
    uv_signal_stop(&g_sig[0]);
    uv_signal_stop(&g_sig[1]);
    cv_gateway_stop(g_gw, 10000, on_stopped, NULL);
}

static const char *const k_tasks[] = {"app.tasks.add",    "app.tasks.whoami", "app.tasks.echo",
                                      "app.tasks.noop",   "app.tasks.fail",   "app.tasks.boom",
                                      "app.tasks.upload", "app.tasks.octet",  "app.tasks.stream",
                                      "app.tasks.duplex", "app.tasks.slow"};
static const char *const k_events[] = {"app.events.notify", "app.events.par"};

static int usage(void)
{
    fprintf(stderr,
            "usage: gateway_native [--listen HOST:PORT] [--token T]... [--allow-anonymous] "
            "[--allow-task ID]... [--allow-event ID]... [--deadline MS] "
            "[--max-octet BYTES] [--base-path P] [--cors-origin O] "
            "[--cors-credentials true] [--cors-expose H] [--cors-max-age S] [--auth-key K] "
            "[--max-file-size BYTES] [--spool-dir DIR]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct cv_gateway_opts o;
    const char *tokens[16], *tasks[64], *events[64];
    size_t nt = 0, nta = 0, nev = 0;
    bool custom = false;
    char host[64] = "127.0.0.1";
    uint16_t port = 0;

    cv_gateway_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(k, "--allow-anonymous") == 0) {
            o.allow_anonymous = true;
            continue;
        }
        if (v == NULL)
            return usage();
        i++;
        if (strcmp(k, "--listen") == 0) {
            const char *colon = strrchr(v, ':');
            if (colon == NULL || (size_t)(colon - v) >= sizeof host ||
                cv_port_parse(colon + 1, &port))
                return usage();
            memcpy(host, v, (size_t)(colon - v));
            host[colon - v] = '\0';
        } else if (strcmp(k, "--token") == 0 && nt < 16) {
            tokens[nt++] = v;
        } else if (strcmp(k, "--allow-task") == 0 && nta < 64) {
            tasks[nta++] = v;
            custom = true;
        } else if (strcmp(k, "--allow-event") == 0 && nev < 64) {
            events[nev++] = v;
            custom = true;
        } else if (strcmp(k, "--deadline") == 0) {
            o.deadline_ms = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--max-octet") == 0) {
            o.max_octet_body = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--base-path") == 0) {
            o.base_path = v;
        } else if (strcmp(k, "--cors-origin") == 0) {
            o.cors.origin = v;
        } else if (strcmp(k, "--cors-credentials") == 0) {
            o.cors.credentials = strcmp(v, "true") == 0;
        } else if (strcmp(k, "--cors-expose") == 0) {
            o.cors.exposed_headers = v;
        } else if (strcmp(k, "--cors-max-age") == 0) {
            o.cors.max_age = (int)strtol(v, NULL, 10);
        } else if (strcmp(k, "--auth-key") == 0) {
            g_auth_key = v;
        } else if (strcmp(k, "--max-file-size") == 0) {
            o.mp_file_size = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--spool-dir") == 0) {
            o.spool_dir = v;
        } else {
            return usage();
        }
    }
    o.host = host;
    o.port = port;
    o.tokens = tokens;
    o.ntokens = nt;
    o.allow_tasks = custom ? tasks : k_tasks;
    o.nallow_tasks = custom ? nta : sizeof k_tasks / sizeof k_tasks[0];
    o.allow_events = custom ? events : k_events;
    o.nallow_events = custom ? nev : sizeof k_events / sizeof k_events[0];

    signal(SIGPIPE, SIG_IGN);
    g_loop = uv_default_loop();
    int rc = cv_gateway_start(g_loop, &o, &g_gw);
    if (rc < 0) {
        fprintf(stderr, "gateway_native: %s\n", cv_strerror(rc));
        return 1;
    }
    static const struct {
        const char *id;
        cv_gw_handler fn;
    } tasks_tab[] = {{"app.tasks.add", t_add},       {"app.tasks.whoami", t_whoami},
                     {"app.tasks.echo", t_echo},     {"app.tasks.noop", t_noop},
                     {"app.tasks.fail", t_fail},     {"app.tasks.boom", t_boom},
                     {"app.tasks.upload", t_upload}, {"app.tasks.octet", t_octet},
                     {"app.tasks.stream", t_stream}, {"app.tasks.duplex", t_duplex},
                     {"app.tasks.slow", t_slow},     {"app.tasks.hidden", t_hidden}};
    for (size_t i = 0; i < sizeof tasks_tab / sizeof tasks_tab[0]; i++)
        cv_gateway_add_task(g_gw, tasks_tab[i].id, tasks_tab[i].fn, NULL);
    cv_gateway_add_event(g_gw, "app.events.notify", e_notify, NULL, false);
    cv_gateway_add_event(g_gw, "app.events.par", e_par, NULL, true);
    if (g_auth_key != NULL)
        cv_gateway_set_auth(g_gw, a_key, NULL);

    printf("listening on http://%s:%u\n", host, cv_gateway_port(g_gw));
    fflush(stdout);
    for (int i = 0; i < 2; i++) {
        uv_signal_init(g_loop, &g_sig[i]);
        uv_signal_start(&g_sig[i], on_signal, i ? SIGTERM : SIGINT);
    }
    uv_run(g_loop, UV_RUN_DEFAULT);
    uv_loop_close(g_loop);
    return 0;
}
