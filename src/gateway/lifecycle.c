/* The gateway's life: options and their derived header lines (CORS,
 * discovery), start, registration of handlers and pools, graceful stop. */
#include "culvert/gateway.h"

#include <inttypes.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "codec/digest.h"
#include "codec/gwroute.h"
#include "core/err.h"
#include "core/log.h"
#include "gateway/gw.h"
#include "gateway/spool.h"
#include "net/http1.h"

#define APPEND(b, lit) cv_buf_append(b, lit, sizeof(lit) - 1)

/* ------------------------------------------------------------------ */
/* Setup                                                                */

void cv_gateway_opts_init(struct cv_gateway_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 7070;
    o->base_path = "/__runner";
    o->auth_header = "x-runner-token";
    o->cors.max_age = -1;
    o->deadline_ms = 30000;
    o->max_json_body = 2u * 1024 * 1024;
    o->stream_idle_ms = GW_STREAM_IDLE_MS;
}

void cv_gateway_pool_opts_init(struct cv_gateway_pool_opts *o)
{
    memset(o, 0, sizeof *o);
    o->protocol = CV_GW_CWP1;
    o->queue_timeout_ms = 5000;
    o->queue_max = 1024;
}

static int copy_list(char ***out, const char *const *in, size_t n)
{
    *out = calloc(n + 1, sizeof **out);
    if (*out == NULL)
        return CV_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == NULL || in[i][0] == '\0') {
            cv_log_error("gateway: empty id in the allow-list");
            return CV_EINVAL;
        }
        if (((*out)[i] = strdup(in[i])) == NULL)
            return CV_ENOMEM;
    }
    return 0;
}

static void free_list(char **l, size_t n)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

static bool header_text_ok(const char *s)
{
    return s != NULL && gw_value_ok(s);
}

/* Appends "Name: " + the comma list s normalised as Runner joins its
 * arrays (items trimmed, empty ones dropped, ", " between) + CRLF.
 * Nothing if the list is empty. */
static int append_list_line(struct cv_buf *b, const char *name, const char *s)
{
    bool first = true;
    int rc = 0;
    while (rc == 0 && s != NULL && *s) {
        const char *comma = strchr(s, ',');
        const char *e = comma ? comma : s + strlen(s);
        const char *p = s;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const char *q = e;
        while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
            q--;
        if (q > p) {
            rc = first ? cv_buf_append(b, name, strlen(name)) : APPEND(b, ", ");
            if (rc == 0 && first)
                rc = APPEND(b, ": ");
            first = false;
            if (rc == 0)
                rc = cv_buf_append(b, p, (size_t)(q - p));
        }
        s = comma ? comma + 1 : e;
    }
    if (rc == 0 && !first)
        rc = APPEND(b, "\r\n");
    return rc;
}

static bool list_empty(const char *s)
{
    for (; s != NULL && *s; s++)
        if (*s != ',' && *s != ' ' && *s != '\t')
            return false;
    return true;
}

static int append_line(struct cv_buf *b, const char *name, const char *value)
{
    int rc = cv_buf_append(b, name, strlen(name));
    if (rc == 0)
        rc = APPEND(b, ": ");
    if (rc == 0)
        rc = cv_buf_append(b, value, strlen(value));
    if (rc == 0)
        rc = APPEND(b, "\r\n");
    return rc;
}

static int cors_check(const struct cv_gateway_cors *c)
{
    const char *texts[] = {c->origin, c->exposed_headers, c->methods, c->allowed_headers};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i] && !header_text_ok(texts[i])) {
            cv_log_error("gateway: CORS values must not contain CR or LF");
            return CV_EINVAL;
        }
    for (size_t i = 0; i < c->norigins; i++)
        if (c->origins[i] == NULL || c->origins[i][0] == '\0' || !header_text_ok(c->origins[i])) {
            cv_log_error("gateway: empty CORS origin, or one with CR or LF");
            return CV_EINVAL;
        }
    if (c->origin && (c->norigins || c->origin_regex)) {
        cv_log_error("gateway: a fixed CORS origin excludes an origin list or regex");
        return CV_EINVAL;
    }
    return 0;
}

/* Compiles the origin regex (POSIX ERE). */
static int cors_regex(struct cv_gateway *gw, const char *re)
{
    regex_t *x = calloc(1, sizeof *x);
    if (x == NULL)
        return CV_ENOMEM;
    int rc = regcomp(x, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[256];
        regerror(rc, x, why, sizeof why);
        cv_log_error("gateway: bad CORS origin regex '%s': %s", re, why);
        free(x);
        return CV_EINVAL;
    }
    gw->cors_re = x;
    return 0;
}

/* The CORS header lines (§5.5), in the order Runner 5.5.0's server writes
 * them: Vary, Allow-Origin, then Allow-Credentials and Expose-Headers
 * (actual responses) or Allow-Methods, Allow-Headers, Allow-Credentials,
 * Max-Age (preflights). */
static int build_cors(struct cv_gateway *gw, const struct cv_gateway_cors *c)
{
    struct cv_buf a, pa, pb;
    char line[64];
    int rc = cors_check(c);
    if (rc < 0)
        return rc;
    gw->cors_dyn = c->norigins > 0 || c->origin_regex != NULL;
    if (c->origin_regex && (rc = cors_regex(gw, c->origin_regex)) < 0)
        return rc;
    if (c->norigins) {
        gw->cors_origins = calloc(c->norigins, sizeof *gw->cors_origins);
        if (gw->cors_origins == NULL)
            return CV_ENOMEM;
        for (size_t i = 0; i < c->norigins; i++, gw->cors_norigins++)
            if ((gw->cors_origins[i] = strdup(c->origins[i])) == NULL)
                return CV_ENOMEM;
    }
    /* Vary: Origin whenever the origin depends on the request (a list or
     * regex), or for the fail-safe credentials without origin. */
    gw->cors_vary = !c->no_vary && (gw->cors_dyn || (c->origin == NULL && c->credentials));
    gw->cors_echo = list_empty(c->allowed_headers);
    cv_buf_init(&a, 8192);
    cv_buf_init(&pa, 8192);
    cv_buf_init(&pb, 8192);
    if (!gw->cors_dyn) {
        for (int i = 0; i < 2 && rc == 0; i++) {
            struct cv_buf *b = i ? &pa : &a;
            if (gw->cors_vary)
                rc = APPEND(b, "Vary: Origin\r\n");
            if (rc == 0 && (c->origin != NULL || !c->credentials))
                rc = append_line(b, "Access-Control-Allow-Origin", c->origin ? c->origin : "*");
        }
    }
    if (rc == 0 && c->credentials)
        rc = APPEND(&a, "Access-Control-Allow-Credentials: true\r\n");
    if (rc == 0)
        rc = append_list_line(&a, "Access-Control-Expose-Headers", c->exposed_headers);
    /* §14.1: discovery is a GET, so the default preflight lists it. */
    if (rc == 0)
        rc = list_empty(c->methods)
                 ? APPEND(&pa, "Access-Control-Allow-Methods: POST, GET, OPTIONS\r\n")
                 : append_list_line(&pa, "Access-Control-Allow-Methods", c->methods);
    if (rc == 0 && !gw->cors_echo)
        rc = append_list_line(&pa, "Access-Control-Allow-Headers", c->allowed_headers);
    if (rc == 0 && c->credentials)
        rc = APPEND(&pb, "Access-Control-Allow-Credentials: true\r\n");
    if (rc == 0 && c->max_age >= 0) {
        int n = snprintf(line, sizeof line, "Access-Control-Max-Age: %d\r\n", c->max_age);
        rc = cv_buf_append(&pb, line, (size_t)n);
    }
    if (rc == 0)
        rc = APPEND(&pb, "content-length: 0\r\n");
    if (rc == 0)
        rc = cv_buf_append(&a, "", 1);
    if (rc == 0)
        rc = cv_buf_append(&pa, "", 1);
    if (rc == 0)
        rc = cv_buf_append(&pb, "", 1);
    if (rc < 0) {
        cv_buf_fini(&a);
        cv_buf_fini(&pa);
        cv_buf_fini(&pb);
        return rc;
    }
    gw->cors_actual = (char *)cv_buf_head(&a);
    gw->cors_actual_len = a.len - 1;
    gw->pre_a = (char *)cv_buf_head(&pa);
    gw->pre_a_len = pa.len - 1;
    gw->pre_b = (char *)cv_buf_head(&pb);
    gw->pre_b_len = pb.len - 1;
    return 0;
}

/* {"ok":true,"result":{"allowList":{"enabled":..,"tasks":[..],"events":[..]}}} */
static int build_discovery(struct cv_gateway *gw)
{
    struct cv_buf b;
    cv_buf_init(&b, 1u << 24);
    int rc = APPEND(&b, "{\"ok\":true,\"result\":{\"allowList\":{\"enabled\":");
    if (rc == 0)
        rc = gw->ntasks + gw->nevents ? APPEND(&b, "true") : APPEND(&b, "false");
    for (int k = 0; k < 2 && rc == 0; k++) {
        char **l = k ? gw->events : gw->tasks;
        size_t n = k ? gw->nevents : gw->ntasks;
        rc = k ? APPEND(&b, "],\"events\":[") : APPEND(&b, ",\"tasks\":[");
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (i)
                rc = APPEND(&b, ",");
            if (rc == 0)
                rc = cv_gwr_json_str(&b, l[i], strlen(l[i]));
        }
    }
    if (rc == 0)
        rc = APPEND(&b, "]}}}");
    if (rc < 0) {
        cv_buf_fini(&b);
        return rc;
    }
    gw->discovery = (char *)cv_buf_head(&b);
    gw->discovery_len = b.len;
    return 0;
}

static void gw_free(struct cv_gateway *gw)
{
    if (gw == NULL)
        return;
    free(gw->base);
    for (size_t i = 0; gw->tokens != NULL && i < gw->ntokens; i++)
        if (gw->tokens[i] != NULL)
            explicit_bzero(gw->tokens[i], gw->token_lens[i]);
    free_list(gw->tokens, gw->ntokens);
    free(gw->token_lens);
    free(gw->auth_header);
    free(gw->spool_dir);
    free_list(gw->tasks, gw->ntasks);
    free_list(gw->events, gw->nevents);
    free(gw->cors_actual);
    free(gw->pre_a);
    free(gw->pre_b);
    free_list(gw->cors_origins, gw->cors_norigins);
    if (gw->cors_re != NULL) {
        regfree(gw->cors_re);
        free(gw->cors_re);
    }
    free(gw->discovery);
    free(gw->dls);
    for (size_t i = 0; i < gw->nids; i++)
        free(gw->ids[i].id);
    free(gw->ids);
    free(gw->route_buf);
    cv_buf_fini(&gw->out);
    cv_buf_fini(&gw->head);
    free(gw);
}

static int validate(const struct cv_gateway_opts *o)
{
    for (size_t i = 0; i < o->ntokens; i++)
        if (o->tokens[i] == NULL || o->tokens[i][0] == '\0') {
            cv_log_error("gateway: empty token refused");
            return CV_EINVAL;
        }
    if (o->auth_header == NULL || !gw_token_ok(o->auth_header)) {
        cv_log_error("gateway: bad auth header name '%s'", o->auth_header ? o->auth_header : "");
        return CV_EINVAL;
    }
    if (o->deadline_ms == 0) {
        cv_log_error("gateway: the deadline must be > 0 ms");
        return CV_EINVAL;
    }
    return 0;
}

/* Deadline classes (gw.h) and per-id settings. */
static int setup_ids(struct cv_gateway *gw, const struct cv_gateway_opts *o)
{
    gw->dls = calloc(o->nids + 2, sizeof *gw->dls);
    gw->ids = calloc(o->nids + 1, sizeof *gw->ids);
    if (gw->dls == NULL || gw->ids == NULL)
        return CV_ENOMEM;
    gw->dls[0].ms = o->deadline_ms;
    gw->dls[GW_DL_AUTH].ms = GW_AUTH_TIMEOUT_MS;
    gw->ndls = 2;
    for (size_t i = 0; i < o->nids; i++) {
        const struct cv_gateway_id_opts *x = &o->ids[i];
        if (x->id == NULL || x->id[0] == '\0') {
            cv_log_error("gateway: empty id in the per-id settings");
            return CV_EINVAL;
        }
        for (size_t k = 0; k < gw->nids; k++)
            if (strcmp(gw->ids[k].id, x->id) == 0) {
                cv_log_error("gateway: id '%s' has two per-id settings", x->id);
                return CV_EINVAL;
            }
        struct gw_idopt *io = &gw->ids[gw->nids];
        if ((io->id = strdup(x->id)) == NULL)
            return CV_ENOMEM;
        gw->nids++;
        io->no_ctx = x->no_async_context;
        uint64_t ms = x->deadline_ms ? x->deadline_ms : o->deadline_ms;
        size_t c = 0;
        while (c < gw->ndls && (c == GW_DL_AUTH || gw->dls[c].ms != ms))
            c++;
        if (c == gw->ndls)
            gw->dls[gw->ndls++].ms = ms;
        io->dl_class = (unsigned)c;
    }
    return 0;
}

/* Early multipart file parts are spooled there: refuse to start if a
 * file cannot be made in it, rather than failing uploads later. */
static int setup_spool(struct cv_gateway *gw, const struct cv_gateway_opts *o)
{
    const char *dir = o->spool_dir && *o->spool_dir ? o->spool_dir : cv_spool_default_dir();
    int rc = cv_spool_check_dir(dir);
    if (rc < 0) {
        cv_log_error("gateway: spool directory '%s' is not a writable directory: %s", dir,
                     cv_strerror(rc));
        return CV_EINVAL;
    }
    gw->spool_dir = strdup(dir);
    return gw->spool_dir ? 0 : CV_ENOMEM;
}

static int setup(struct cv_gateway *gw, const struct cv_gateway_opts *o)
{
    int rc = validate(o);
    if (rc < 0)
        return rc;
    const char *base = o->base_path ? o->base_path : "/__runner";
    gw->base = malloc(strlen(base) + 2);
    if (gw->base == NULL)
        return CV_ENOMEM;
    if (cv_gwr_base_norm(base, gw->base, strlen(base) + 2) < 0) {
        cv_log_error("gateway: bad base path '%s'", base);
        return CV_EINVAL;
    }
    gw->ntokens = o->ntokens;
    gw->token_lens = calloc(o->ntokens + 1, sizeof *gw->token_lens);
    if (gw->token_lens == NULL || (rc = copy_list(&gw->tokens, o->tokens, o->ntokens)) < 0)
        return gw->token_lens == NULL ? CV_ENOMEM : rc;
    for (size_t i = 0; i < o->ntokens; i++)
        gw->token_lens[i] = strlen(gw->tokens[i]);
    gw->auth_header = strdup(o->auth_header);
    if (gw->auth_header == NULL)
        return CV_ENOMEM;
    gw->allow_anonymous = o->allow_anonymous;
    gw->ntasks = o->nallow_tasks;
    gw->nevents = o->nallow_events;
    if ((rc = copy_list(&gw->tasks, o->allow_tasks, o->nallow_tasks)) < 0 ||
        (rc = copy_list(&gw->events, o->allow_events, o->nallow_events)) < 0)
        return rc;
    if ((rc = build_cors(gw, &o->cors)) < 0 || (rc = build_discovery(gw)) < 0)
        return rc;
    gw->discovery_disabled = o->discovery_disabled;
    gw->deadline_ms = o->deadline_ms;
    if ((rc = setup_ids(gw, o)) < 0)
        return rc;
    cv_mp_limits_init(&gw->mp);
    if (o->mp_file_size)
        gw->mp.max_file = o->mp_file_size;
    if (o->mp_files)
        gw->mp.max_files = o->mp_files;
    if (o->mp_fields)
        gw->mp.max_fields = o->mp_fields;
    if (o->mp_field_size)
        gw->mp.max_field = o->mp_field_size;
    if (o->mp_parts)
        gw->mp.max_parts = o->mp_parts;
    if ((rc = setup_spool(gw, o)) < 0)
        return rc;
    gw->max_json = o->max_json_body ? o->max_json_body : 2u * 1024 * 1024;
    gw->max_octet = o->max_octet_body;
    gw->stream_idle_ms = o->stream_idle_ms ? o->stream_idle_ms : GW_STREAM_IDLE_MS;
    gw->route_cap = 2 * GW_HEAD_MAX + 8;
    gw->route_buf = malloc(gw->route_cap);
    if (gw->route_buf == NULL)
        return CV_ENOMEM;
    cv_buf_init(&gw->out, 64u << 20);
    cv_buf_init(&gw->head, 1u << 20);
    if (getrandom(gw->rng, sizeof gw->rng, 0) != (ssize_t)sizeof gw->rng) {
        cv_log_error("gateway: getrandom failed");
        return CV_EINVAL;
    }
    if (gw->ntokens == 0 && !gw->allow_anonymous)
        cv_log_warn("gateway: no token configured and anonymous access not allowed: every call "
                    "answers 500 AUTH_NOT_CONFIGURED (unless delegated auth is added)");
    return 0;
}

int cv_gateway_start(uv_loop_t *loop, const struct cv_gateway_opts *opts, struct cv_gateway **out)
{
    struct cv_gateway *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return CV_ENOMEM;
    gw->loop = loop;
    int rc = setup(gw, opts);
    if (rc == 0 && (gw->native = cv_gw_native_new(loop)) == NULL)
        rc = CV_ENOMEM;
    if (rc < 0) {
        cv_gw_native_free(gw->native);
        gw_free(gw);
        return rc;
    }
    rc = cv_http1_server_start(loop, opts->host ? opts->host : "127.0.0.1", opts->port,
                               &gw_http_cbs, gw, &gw->srv);
    if (rc < 0) {
        cv_log_error("gateway: cannot listen on %s:%u: %s", opts->host ? opts->host : "127.0.0.1",
                     opts->port, cv_strerror(rc));
        cv_gw_native_free(gw->native);
        gw_free(gw);
        return rc;
    }
    struct cv_http1_opts ho;
    cv_http1_opts_init(&ho);
    ho.max_body = UINT64_MAX / 4; /* the gateway applies its own per-mode limits */
    ho.max_head = GW_HEAD_MAX;
    ho.head_timeout_ms = 10000;
    ho.idle_timeout_ms = 5000;
    ho.body_timeout_ms = 30000;
    ho.silent_timeouts = true;
    ho.bare_errors = true;
    ho.eof_aborts = true;
    ho.keep_alive_s = 5;
    ho.tx_max = 64u << 20;
    cv_http1_server_set_opts(gw->srv, &ho);
    for (int i = 0; i < GW_NTIMERS; i++) {
        uv_timer_init(loop, &gw->timers[i]);
        gw->timers[i].data = gw;
    }
    uv_idle_init(loop, &gw->replay_idle);
    gw->replay_idle.data = gw;
    *out = gw;
    return 0;
}

uint16_t cv_gateway_port(const struct cv_gateway *gw)
{
    return cv_http1_server_port(gw->srv);
}

int cv_gateway_add_task(struct cv_gateway *gw, const char *id, cv_gw_handler fn, void *ud)
{
    return cv_gw_native_add(gw->native, CV_GW_TASK, id, fn, ud, false);
}

int cv_gateway_add_event(struct cv_gateway *gw, const char *id, cv_gw_handler fn, void *ud,
                         bool parallel)
{
    return cv_gw_native_add(gw->native, CV_GW_EVENT, id, fn, ud, parallel);
}

int cv_gateway_set_auth(struct cv_gateway *gw, cv_gw_handler fn, void *ud)
{
    if (gw->auth_be != NULL) {
        cv_log_error("gateway: delegated auth is already configured");
        return CV_EINVAL;
    }
    int rc = cv_gw_native_add(gw->native, CV_GW_AUTH, CV_GW_NATIVE_AUTH_ID, fn, ud, false);
    if (rc == 0)
        gw->auth_be = cv_gw_native_backend(gw->native);
    return rc;
}

int cv_gateway_add_pool(struct cv_gateway *gw, const struct cv_gateway_pool_opts *o)
{
    if (gw->npools >= GW_MAX_POOLS || gw->stopping)
        return CV_EINVAL;
    if (o->auth && gw->auth_be != NULL) {
        cv_log_error("gateway: delegated auth is already configured");
        return CV_EINVAL;
    }
    if (o->auth && o->protocol == CV_GW_RUNNER_IPC_V1) {
        cv_log_error("gateway: runner-ipc-v1 workers cannot do delegated auth");
        return CV_EINVAL;
    }
    struct cv_gw_backend *b;
    int rc = cv_gw_pool_new(gw->loop, o, &b);
    if (rc < 0)
        return rc;
    gw->pools[gw->npools++] = b;
    if (o->auth)
        gw->auth_be = b;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Stop                                                                 */

static void on_timer_closed(uv_handle_t *h)
{
    struct cv_gateway *gw = h->data;
    if (--gw->closing_timers > 0)
        return;
    void (*done)(struct cv_gateway *, void *) = gw->done;
    void *ud = gw->done_ud;
    cv_gw_native_free(gw->native);
    for (size_t i = 0; i < gw->npools; i++)
        gw->pools[i]->ops->free(gw->pools[i]);
    gw_free(gw);
    if (done)
        done(gw, ud);
}

static void finish_stop(struct cv_gateway *gw)
{
    if (gw->shutdowns_pending > 0 || !gw->server_closed || gw->closing_timers > 0)
        return;
    gw->closing_timers = GW_NTIMERS + 1;
    for (int i = 0; i < GW_NTIMERS; i++)
        uv_close((uv_handle_t *)&gw->timers[i], on_timer_closed);
    uv_close((uv_handle_t *)&gw->replay_idle, on_timer_closed);
}

static void on_backend_down(struct cv_gw_backend *b, void *ud)
{
    struct cv_gateway *gw = ud;
    (void)b;
    gw->shutdowns_pending--;
    finish_stop(gw);
}

static void close_server(struct cv_gateway *gw)
{
    if (gw->server_closed)
        return;
    gw->server_closed = true; /* before: on_done runs synchronously below */
    uv_timer_stop(&gw->timers[GW_GRACE]);
    cv_http1_server_close(gw->srv);
    gw->srv = NULL;
    finish_stop(gw);
}

static void on_grace(uv_timer_t *t)
{
    struct cv_gateway *gw = t->data;
    if (gw->ncalls > 0)
        cv_log_info("gateway: grace period over, cancelling %zu call(s)", gw->ncalls);
    close_server(gw);
}

/* Stopping and the last call ended: close now (from the loop, not from
 * inside the call's on_done). */
void gw_maybe_stopped(struct cv_gateway *gw)
{
    if (gw->stopping && gw->ncalls == 0 && !gw->server_closed)
        uv_timer_start(&gw->timers[GW_GRACE], on_grace, 0, 0);
}

void cv_gateway_stop(struct cv_gateway *gw, uint64_t grace_ms,
                     void (*done)(struct cv_gateway *gw, void *ud), void *ud)
{
    if (gw->stopping)
        return;
    gw->stopping = true;
    gw->done = done;
    gw->done_ud = ud;
    cv_http1_server_unlisten(gw->srv);
    gw->shutdowns_pending = gw->npools;
    for (size_t i = 0; i < gw->npools; i++)
        gw->pools[i]->ops->shutdown(gw->pools[i], grace_ms, on_backend_down, gw);
    uv_timer_start(&gw->timers[GW_GRACE], on_grace, gw->ncalls ? grace_ms : 0, 0);
}
