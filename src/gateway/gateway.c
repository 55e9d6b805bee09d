/* The gateway core: the HTTP side of the Runner tunnel protocol
 * (specs/runner-http.md). For each request on_request runs the §3 checks
 * in order (routing, preflight, request id, method, auth, allow-list,
 * backend) before any body byte is read, so a refused request never gets
 * a 100 Continue; then the body is collected (JSON, 2 MiB), streamed
 * (octet) or parsed (multipart, upload.c) and the call is handed to a
 * backend (backend.h). Backends answer through the cv_gw_req_* functions
 * below, which write the envelopes and headers of §4 and §5.
 *
 * Deadlines: every call waits in the FIFO list of its deadline class
 * (calls of one class share one deadline length, so admission order is
 * expiry order; see gw.h) and one timer serves them all; a streaming call
 * moves to a second list ordered by last activity. Delegated auth (§5.1)
 * pauses the request and runs as a call of kind CV_GW_AUTH; its verdict
 * is acted on from the loop (on_authq).
 * Options, start and stop are in lifecycle.c; multipart in upload.c;
 * envelopes in envelope.c; the native backend in native.c. */
#include "culvert/gateway.h"

#include <inttypes.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec/digest.h"
#include "codec/gwroute.h"
#include "codec/rjson.h"
#include "codec/text.h"
#include "core/err.h"
#include "core/log.h"
#include "gateway/gw.h"
#include "net/http1.h"

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

#define APPEND(b, lit) cv_buf_append(b, lit, sizeof(lit) - 1)

static bool has_ci(const char *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return n == k && cv_http_ieq(s, lit, k);
}

/* The request header named name (case-insensitive): *count occurrences,
 * the first returned. */
static const struct cv_http_header *find_hdr(const struct cv_http_head *h, const char *name,
                                             int *count)
{
    const struct cv_http_header *first = NULL;
    size_t k = strlen(name);
    *count = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct cv_http_header *x = &h->headers[i];
        if (x->name_len == k && cv_http_ieq(x->name, name, k)) {
            if ((*count)++ == 0)
                first = x;
        }
    }
    return first;
}

/* xoshiro256** seeded once from getrandom(): request ids need to be
 * unique and unguessable enough for log correlation, not secret, and a
 * syscall per request would cost more than the rest of the id. */
static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static void make_uuid(struct cv_gateway *gw, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    uint64_t a = rng_next(gw->rng), c = rng_next(gw->rng);
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* Responses                                                            */

/* Dynamic CORS origins (§5.5): Vary: Origin (unless turned off), then the
 * request's Origin as Access-Control-Allow-Origin if it is in the list or
 * matches the regex. Repeated Origin headers are joined with ", " as Node
 * does (so such a request matches only a pattern that allows the joined
 * text). */
static int cors_origin_lines(struct cv_gateway *gw, struct cv_buf *hb,
                             const struct cv_http_head *hd)
{
    int rc = gw->cors_vary ? APPEND(hb, "Vary: Origin\r\n") : 0;
    char one[1024];
    size_t n = 0;
    bool any = false;
    for (size_t i = 0; i < hd->nheaders; i++) {
        const struct cv_http_header *x = &hd->headers[i];
        if (!has_ci(x->name, x->name_len, "origin"))
            continue;
        size_t need = x->value_len + (any ? 2 : 0);
        if (n + need >= sizeof one)
            return rc; /* longer than any origin: no match */
        if (any) {
            memcpy(one + n, ", ", 2);
            n += 2;
        }
        memcpy(one + n, x->value, x->value_len);
        n += x->value_len;
        any = true;
    }
    if (rc < 0 || n == 0)
        return rc;
    one[n] = '\0';
    bool ok = false;
    for (size_t i = 0; !ok && i < gw->cors_norigins; i++)
        ok = strcmp(gw->cors_origins[i], one) == 0;
    if (!ok && gw->cors_re != NULL && strlen(one) == n)
        ok = regexec(gw->cors_re, one, 0, NULL, 0) == 0;
    if (ok) {
        rc = APPEND(hb, "Access-Control-Allow-Origin: ");
        if (rc == 0)
            rc = cv_buf_append(hb, one, n);
        if (rc == 0)
            rc = APPEND(hb, "\r\n");
    }
    return rc;
}

/* The common header lines: request id, CORS. */
static int head_common(struct cv_gateway *gw, struct cv_buf *hb, struct cv_http1_req *h,
                       const char *rid)
{
    int rc = 0;
    cv_buf_reset(hb);
    if (rid != NULL) {
        rc = APPEND(hb, "x-runner-request-id: ");
        if (rc == 0)
            rc = cv_buf_append(hb, rid, strlen(rid));
        if (rc == 0)
            rc = APPEND(hb, "\r\n");
    }
    if (rc == 0 && gw->cors_dyn)
        rc = cors_origin_lines(gw, hb, cv_http1_req_head(h));
    if (rc == 0)
        rc = cv_buf_append(hb, gw->cors_actual, gw->cors_actual_len);
    return rc;
}

/* Sends a whole JSON response; a body not read yet is dropped (§6). */
static void respond_json(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int status,
                         const void *body, size_t len)
{
    struct cv_buf *hb = &gw->head;
    int rc = head_common(gw, hb, h, rid);
    if (rc == 0)
        rc = APPEND(hb, "content-type: application/json; charset=utf-8\r\ncontent-length: ");
    if (rc == 0)
        rc = cv_buf_append_u64(hb, len);
    if (rc == 0)
        rc = APPEND(hb, "\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n");
    if (rc < 0)
        return;
    if (!cv_http1_req_body_done(h))
        cv_http1_req_discard_body(h);
    if (cv_http1_respond_head(h, status, (const char *)cv_buf_head(hb), hb->len, (int64_t)len) ==
        0) {
        cv_http1_respond_write(h, body, len);
        cv_http1_respond_end(h);
    }
}

static void reply_error(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int status,
                        const char *code, const char *msg)
{
    cv_buf_reset(&gw->out);
    if (cv_gwe_error(&gw->out, code, msg) == 0)
        respond_json(gw, h, rid, status, cv_buf_head(&gw->out), gw->out.len);
}

/* "Task {id} not exposed" and friends. */
static void reply_id_error(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid,
                           int status, const char *code, bool event, const char *id,
                           const char *tail)
{
    size_t n = strlen(id) + strlen(tail) + 8;
    char *msg = malloc(n);
    if (msg == NULL)
        return;
    snprintf(msg, n, "%s %s%s", event ? "Event" : "Task", id, tail);
    reply_error(gw, h, rid, status, code, msg);
    free(msg);
}

static void preflight(struct cv_gateway *gw, struct cv_http1_req *h)
{
    struct cv_buf *hb = &gw->head;
    int count;
    const struct cv_http_head *hd = cv_http1_req_head(h);
    const struct cv_http_header *rq = find_hdr(hd, "access-control-request-headers", &count);

    cv_buf_reset(hb);
    int rc = gw->cors_dyn ? cors_origin_lines(gw, hb, hd) : 0;
    if (rc == 0)
        rc = cv_buf_append(hb, gw->pre_a, gw->pre_a_len);
    if (rc == 0 && gw->cors_echo && rq != NULL && count > 0) {
        rc = APPEND(hb, "Access-Control-Allow-Headers: ");
        /* Node joins repeated values with ", ". */
        for (size_t i = 0; rc == 0 && i < hd->nheaders; i++) {
            const struct cv_http_header *x = &hd->headers[i];
            if (!has_ci(x->name, x->name_len, "access-control-request-headers"))
                continue;
            if (x != rq)
                rc = APPEND(hb, ", ");
            if (rc == 0)
                rc = cv_buf_append(hb, x->value, x->value_len);
        }
        if (rc == 0)
            rc = APPEND(hb, "\r\n");
    }
    if (rc == 0)
        rc = cv_buf_append(hb, gw->pre_b, gw->pre_b_len);
    if (rc < 0)
        return;
    if (!cv_http1_req_body_done(h))
        cv_http1_req_discard_body(h);
    if (cv_http1_respond_head(h, 204, (const char *)cv_buf_head(hb), hb->len, 0) == 0)
        cv_http1_respond_end(h);
}

/* ------------------------------------------------------------------ */
/* Deadline lists                                                       */

static void list_add(struct gw_list *l, struct cv_gw_req *r, int which)
{
    struct gw_link *k = &r->link[which];
    k->prev = l->tail;
    k->next = NULL;
    if (l->tail)
        l->tail->link[which].next = r;
    else
        l->head = r;
    l->tail = r;
}

static void list_del(struct gw_list *l, struct cv_gw_req *r, int which)
{
    struct gw_link *k = &r->link[which];
    if (k->prev)
        k->prev->link[which].next = k->next;
    else
        l->head = k->next;
    if (k->next)
        k->next->link[which].prev = k->prev;
    else
        l->tail = k->prev;
    k->prev = k->next = NULL;
}

static void on_deadline(uv_timer_t *t);
static void on_idle(uv_timer_t *t);

static struct gw_list *list_of(struct cv_gw_req *r, int which)
{
    return which == GW_DL ? &r->gw->dls[r->dl_class].list : &r->gw->lists[which];
}

/* Arms the deadline timer for the earliest head of the classes. */
static void dl_rearm(struct cv_gateway *gw)
{
    uint64_t now = uv_now(gw->loop), due = UINT64_MAX;
    for (size_t i = 0; i < gw->ndls; i++) {
        struct cv_gw_req *h = gw->dls[i].list.head;
        if (h != NULL && h->due[GW_DL] < due)
            due = h->due[GW_DL];
    }
    if (due == UINT64_MAX)
        uv_timer_stop(&gw->timers[GW_DL]);
    else
        uv_timer_start(&gw->timers[GW_DL], on_deadline, due > now ? due - now : 0, 0);
}

static void dl_add(struct cv_gw_req *r)
{
    struct cv_gateway *gw = r->gw;
    struct gw_dlclass *c = &gw->dls[r->dl_class];
    r->due[GW_DL] = uv_now(gw->loop) + c->ms;
    r->in[GW_DL] = true;
    bool was_empty = c->list.head == NULL;
    list_add(&c->list, r, GW_DL);
    if (was_empty)
        dl_rearm(gw);
}

static void dl_del(struct cv_gw_req *r, int which)
{
    if (!r->in[which])
        return;
    r->in[which] = false;
    list_del(list_of(r, which), r, which);
}

static void idle_touch(struct cv_gw_req *r)
{
    struct cv_gateway *gw = r->gw;
    dl_del(r, GW_IDLE);
    r->due[GW_IDLE] = uv_now(gw->loop) + gw->stream_idle_ms;
    r->in[GW_IDLE] = true;
    bool was_empty = gw->lists[GW_IDLE].head == NULL;
    list_add(&gw->lists[GW_IDLE], r, GW_IDLE);
    if (was_empty)
        uv_timer_start(&gw->timers[GW_IDLE], on_idle, gw->stream_idle_ms, 0);
}

/* Pops every expired call of list l, calling expire on each. Returns the
 * first call left (not expired), or NULL. */
static struct cv_gw_req *sweep_list(struct gw_list *l, int which, uint64_t now,
                                    void (*expire)(struct cv_gw_req *r))
{
    struct cv_gw_req *r;
    while ((r = l->head) != NULL && r->due[which] <= now) {
        dl_del(r, which);
        expire(r);
    }
    return r;
}

static void cancel_backend(struct cv_gw_req *r, enum cv_gw_cancel_reason why)
{
    if (r->started && !r->finished) {
        r->finished = true;
        r->be->ops->cancel(r->be, r, why);
    }
}

static void auth_verdict(struct cv_gw_req *r, bool ok);

static void expire_deadline(struct cv_gw_req *r)
{
    if (r->authing) {
        cv_log_info("gateway: delegated auth for %s timed out (rid %s)", r->id, r->rid);
        cancel_backend(r, CV_GW_CANCEL_TIMEOUT);
        auth_verdict(r, false);
        return;
    }
    cv_log_info("gateway: %s %s: deadline passed (rid %s)", r->call.kind ? "event" : "task", r->id,
                r->rid);
    cancel_backend(r, CV_GW_CANCEL_TIMEOUT);
    gw_upload_abort(r);
    if (r->h != NULL && !r->answered) {
        r->answered = true;
        reply_error(r->gw, r->h, r->rid, 504, "TASK_TIMEOUT", "Task timed out");
    }
}

static void expire_idle(struct cv_gw_req *r)
{
    cv_log_info("gateway: %s: stream idle for %" PRIu64 " ms, truncating (rid %s)", r->id,
                r->gw->stream_idle_ms, r->rid);
    cancel_backend(r, CV_GW_CANCEL_TIMEOUT);
    if (r->h != NULL)
        cv_http1_respond_abort(r->h);
}

static void on_deadline(uv_timer_t *t)
{
    struct cv_gateway *gw = t->data;
    uint64_t now = uv_now(gw->loop);
    for (size_t i = 0; i < gw->ndls; i++)
        sweep_list(&gw->dls[i].list, GW_DL, now, expire_deadline);
    dl_rearm(gw);
}

static void on_idle(uv_timer_t *t)
{
    struct cv_gateway *gw = t->data;
    uint64_t now = uv_now(gw->loop);
    struct cv_gw_req *r = sweep_list(&gw->lists[GW_IDLE], GW_IDLE, now, expire_idle);
    if (r != NULL)
        uv_timer_start(&gw->timers[GW_IDLE], on_idle, r->due[GW_IDLE] - now, 0);
}

/* ------------------------------------------------------------------ */
/* Checks                                                               */

/* §5.1. Returns 0, 401 or 500. */
static int check_auth(struct cv_gateway *gw, const struct cv_http_head *hd)
{
    if (gw->ntokens == 0)
        return gw->auth_be != NULL ? 401 : gw->allow_anonymous ? 0 : 500;
    int count;
    const struct cv_http_header *x = find_hdr(hd, gw->auth_header, &count);
    if (count != 1)
        return 401; /* absent, or repeated (Node would join them: never a match) */
    /* Constant time over every token: no early exit on a match. */
    unsigned ok = 0;
    for (size_t i = 0; i < gw->ntokens; i++)
        ok |= cv_secret_eq(x->value, x->value_len, gw->tokens[i], gw->token_lens[i]);
    return ok ? 0 : 401;
}

static void reply_auth(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int st)
{
    if (st == 500)
        reply_error(gw, h, rid, 500, "AUTH_NOT_CONFIGURED", "Authentication not configured.");
    else
        reply_error(gw, h, rid, 401, "UNAUTHORIZED", "Unauthorized");
}

static bool allowed(char *const *list, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], id) == 0)
            return true;
    return false;
}

static struct cv_gw_backend *find_backend(struct cv_gateway *gw, enum cv_gw_kind kind,
                                          const char *id)
{
    struct cv_gw_backend *nb = cv_gw_native_backend(gw->native);
    if (nb->ops->has(nb, kind, id))
        return nb;
    for (size_t i = 0; i < gw->npools; i++)
        if (gw->pools[i]->ops->has(gw->pools[i], kind, id))
            return gw->pools[i];
    return NULL;
}

/* The request id (§5.2): the client's if valid and not repeated. */
static void assign_rid(struct cv_gateway *gw, const struct cv_http_head *hd, char out[GW_RID_MAX])
{
    int count;
    const struct cv_http_header *x = find_hdr(hd, "x-runner-request-id", &count);
    size_t off, n;
    if (count == 1 && cv_gwr_rid_ok(x->value, x->value_len, &off, &n)) {
        memcpy(out, x->value + off, n);
        out[n] = '\0';
        return;
    }
    make_uuid(gw, out);
}

/* ------------------------------------------------------------------ */
/* Calls                                                                */

static void call_free(struct cv_gw_req *r)
{
    gw_upload_free(r);
    cv_buf_fini(&r->body);
    cv_buf_fini(&r->held);
    free(r->context);
    free(r->runner_ctx);
    struct gw_hcopy *c = r->hcopies;
    while (c) {
        struct gw_hcopy *next = c->next;
        free(c);
        c = next;
    }
    free(r);
}

/* application/x-www-form-urlencoded decoding as URLSearchParams does it:
 * '+' is a space, a bad escape stays as written. Returns the length. */
static size_t form_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int h = s[i] == '%' && i + 2 < n ? cv_hexval((unsigned char)s[i + 1]) : -1;
        int l = h >= 0 ? cv_hexval((unsigned char)s[i + 2]) : -1;
        if (l >= 0) {
            out[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            out[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    return o;
}

/* The query as a JSON object of strings (a repeated name: the last one
 * wins when the worker parses it); pairs that are not UTF-8 are left out. */
static int query_json(struct cv_buf *b, const char *q)
{
    int rc = APPEND(b, "{");
    bool first = true;
    size_t n = strlen(q);
    char *tmp = malloc(n + 1);
    if (tmp == NULL)
        return CV_ENOMEM;
    for (const char *p = q; rc == 0 && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t kl = eq ? (size_t)(eq - p) : len;
        if (len > 0) {
            size_t k = form_decode(p, kl, tmp);
            size_t v = eq ? form_decode(eq + 1, len - kl - 1, tmp + k) : 0;
            if (cv_gwr_utf8_ok((const uint8_t *)tmp, k + v)) {
                rc = first ? 0 : APPEND(b, ",");
                first = false;
                if (rc == 0)
                    rc = cv_gwr_json_str(b, tmp, k);
                if (rc == 0)
                    rc = APPEND(b, ":");
                if (rc == 0)
                    rc = cv_gwr_json_str(b, tmp + k, v);
            }
        }
        p += len + (amp ? 1 : 0);
    }
    free(tmp);
    if (rc == 0)
        rc = APPEND(b, "}");
    return rc;
}

/* The cwp/1 context object (§13.4), for worker backends only. */
static int build_context(struct cv_gw_req *r, bool with_auth)
{
    struct cv_gateway *gw = r->gw;
    const struct cv_http_head *hd = cv_http1_req_head(r->h);
    struct cv_buf b;
    cv_buf_init(&b, 1u << 20);
    int rc = cv_http1_req_is_method(r->h, "GET") ? APPEND(&b, "{\"method\":\"GET\",\"path\":")
                                                 : APPEND(&b, "{\"method\":\"POST\",\"path\":");
    const char *path = cv_http1_req_path(r->h);
    if (rc == 0)
        rc = cv_gwr_utf8_ok((const uint8_t *)path, strlen(path))
                 ? cv_gwr_json_str(&b, path, strlen(path))
                 : APPEND(&b, "\"\"");
    if (rc == 0)
        rc = APPEND(&b, ",\"query\":");
    if (rc == 0)
        rc = query_json(&b, cv_http1_req_query(r->h));
    if (rc == 0)
        rc = APPEND(&b, ",\"headers\":{");
    bool first = true;
    for (size_t i = 0; rc == 0 && i < hd->nheaders; i++) {
        const struct cv_http_header *x = &hd->headers[i];
        static const char *const skip[] = {
            "connection", "keep-alive", "proxy-connection", "transfer-encoding",
            "te",         "trailer",    "upgrade",          "content-length"};
        bool drop = (!with_auth && has_ci(x->name, x->name_len, gw->auth_header)) ||
                    (r->no_ctx && has_ci(x->name, x->name_len, "x-runner-context"));
        for (size_t k = 0; !drop && k < sizeof skip / sizeof skip[0]; k++)
            drop = has_ci(x->name, x->name_len, skip[k]);
        /* Repeats are joined at their first occurrence. */
        for (size_t j = 0; !drop && j < i; j++)
            drop = hd->headers[j].name_len == x->name_len &&
                   cv_http_ieq(hd->headers[j].name, x->name, x->name_len);
        if (drop || !cv_gwr_utf8_ok((const uint8_t *)x->value, x->value_len))
            continue;
        char name[256];
        size_t nl = x->name_len < sizeof name ? x->name_len : sizeof name - 1;
        for (size_t k = 0; k < nl; k++)
            name[k] =
                (char)((x->name[k] >= 'A' && x->name[k] <= 'Z') ? x->name[k] + 32 : x->name[k]);
        rc = first ? 0 : APPEND(&b, ",");
        first = false;
        if (rc == 0)
            rc = cv_gwr_json_str(&b, name, nl);
        if (rc == 0)
            rc = APPEND(&b, ":\"");
        for (size_t j = i; rc == 0 && j < hd->nheaders; j++) {
            const struct cv_http_header *y = &hd->headers[j];
            if (y->name_len != x->name_len || !cv_http_ieq(y->name, x->name, x->name_len) ||
                !cv_gwr_utf8_ok((const uint8_t *)y->value, y->value_len))
                continue;
            if (j != i)
                rc = APPEND(&b, ", ");
            if (rc == 0) {
                /* the value without its quotes */
                size_t mark = b.len;
                rc = cv_gwr_json_str(&b, y->value, y->value_len);
                if (rc == 0) {
                    uint8_t *s = cv_buf_head(&b) + mark;
                    memmove(s, s + 1, b.len - mark - 2);
                    b.len -= 2;
                }
            }
        }
        if (rc == 0)
            rc = APPEND(&b, "\"");
    }
    if (rc == 0)
        rc = APPEND(&b, "},\"requestId\":");
    if (rc == 0)
        rc = cv_gwr_json_str(&b, r->rid, strlen(r->rid));
    if (rc == 0)
        rc = APPEND(&b, ",\"remote\":");
    /* The peer's address without its port, as Node's remoteAddress. */
    const char *peer = cv_http1_req_peer(r->h);
    const char *colon = strrchr(peer, ':');
    size_t plen = colon ? (size_t)(colon - peer) : strlen(peer);
    if (plen >= 2 && peer[0] == '[' && peer[plen - 1] == ']') {
        peer++;
        plen -= 2;
    }
    if (rc == 0)
        rc = cv_gwr_json_str(&b, peer, plen);
    if (rc == 0 && r->runner_ctx != NULL) {
        rc = APPEND(&b, ",\"runnerContext\":");
        if (rc == 0)
            rc = cv_gwr_json_str(&b, r->runner_ctx, strlen(r->runner_ctx));
    }
    if (rc == 0)
        rc = APPEND(&b, "}");
    if (rc == 0)
        rc = cv_buf_append(&b, "", 1); /* NUL */
    if (rc < 0) {
        cv_buf_fini(&b);
        return rc;
    }
    r->context = (char *)cv_buf_head(&b); /* the buffer's storage (off is 0) */
    r->call.context = r->context;
    r->call.context_len = b.len - 1;
    return 0;
}

/* Hands the call to its backend (admission: the deadline starts). */
void gw_start(struct cv_gw_req *r)
{
    struct cv_gateway *gw = r->gw;
    r->call.id = r->id;
    r->call.rid = r->rid;
    r->call.runner_context = r->runner_ctx;
    r->call.deadline_ms = gw->dls[r->dl_class].ms;
    if (r->be != cv_gw_native_backend(gw->native)) {
        if (build_context(r, false) < 0) {
            r->answered = true;
            reply_error(gw, r->h, r->rid, 500, "INTERNAL_ERROR", "Internal Error");
            return;
        }
    } else {
        r->call.context = "{}";
        r->call.context_len = 2;
    }
    dl_add(r);
    r->started = true;
    int rc = r->be->ops->start(r->be, r, &r->call);
    if (rc < 0) {
        r->started = false;
        dl_del(r, GW_DL);
        if (!r->answered && r->h != NULL) {
            r->answered = true;
            reply_error(gw, r->h, r->rid, 503, "WORKER_UNAVAILABLE", "No worker available");
        }
    }
}

/* Sends (or, while a multipart body is still arriving, holds) the final
 * envelope of a call. */
void gw_answer(struct cv_gw_req *r, int status, const void *body, size_t len)
{
    if (r->streaming && r->h != NULL) {
        /* A value after a stream head (a backend bug): cut the stream. */
        dl_del(r, GW_IDLE);
        cv_http1_respond_abort(r->h);
        return;
    }
    if (r->answered || r->h == NULL)
        return;
    if (gw_upload_hold(r, status, body, len))
        return;
    r->answered = true;
    respond_json(r->gw, r->h, r->rid, status, body, len);
}

/* The core's own error for an admitted call: cancels the backend first. */
void gw_fail_call(struct cv_gw_req *r, int status, const char *code, const char *msg)
{
    cancel_backend(r, CV_GW_CANCEL_CLIENT);
    dl_del(r, GW_DL);
    if (r->h == NULL)
        return;
    if (r->streaming) {
        /* The head is out: the client sees a truncated body. */
        dl_del(r, GW_IDLE);
        cv_http1_respond_abort(r->h);
        return;
    }
    if (r->answered)
        return;
    r->answered = true;
    reply_error(r->gw, r->h, r->rid, status, code, msg);
}

/* Replaces a graph body (§7.1) by the tree it stands for. Returns 0, 400
 * (undecodable: a bad record, a cycle, a dangling ref) or 413 (the tree
 * written out exceeds the worker line limit: shared refs are duplicated). */
static int resolve_graph(struct cv_gw_req *r)
{
    char why[128];
    json_t *t = cv_rj_decode((const char *)cv_buf_head(&r->body), r->body.len, why, sizeof why);
    if (t == NULL) {
        cv_log_debug("gateway: %s: graph body refused: %s (rid %s)", r->id, why, r->rid);
        return 400;
    }
    struct cv_buf b;
    cv_buf_init(&b, GW_GRAPH_MAX);
    int rc = cv_rj_encode(t, &b);
    json_decref(t);
    if (rc < 0) {
        cv_buf_fini(&b);
        return rc == CV_ETOOBIG ? 413 : 400;
    }
    cv_buf_fini(&r->body);
    r->body = b;
    return 0;
}

static void json_ready(struct cv_gw_req *r)
{
    struct cv_gateway *gw = r->gw;
    char *p = (char *)cv_buf_head(&r->body);
    size_t n = r->body.len;
    const char *why = NULL;

    if (n > 0 && cv_rj_compact(p, n, p, &n, &why) != 0) {
        cv_log_debug("gateway: %s: invalid JSON body (%s) (rid %s)", r->id, why ? why : "?",
                     r->rid);
        r->answered = true;
        reply_error(gw, r->h, r->rid, 400, "INVALID_JSON", "Invalid JSON body");
        return;
    }
    r->body.len = n;
    if (r->call.kind == CV_GW_EVENT) {
        struct cv_rj_top top;
        memset(&top, 0, sizeof top);
        int bad = n > 0 && cv_rj_top_scan(p, n, &top) != 0 ? 400 : 0;
        if (bad == 0 && top.is_graph) {
            /* Events have no "body" form (§10): resolve the graph here, then
             * take payload and returnPayload from the resolved object. */
            bad = resolve_graph(r);
            p = (char *)cv_buf_head(&r->body);
            n = r->body.len;
            memset(&top, 0, sizeof top);
            if (bad == 0 && cv_rj_top_scan(p, n, &top) != 0)
                bad = 400;
        }
        if (bad == 413) {
            r->answered = true;
            reply_error(gw, r->h, r->rid, 413, "PAYLOAD_TOO_LARGE", "Payload too large");
            return;
        }
        if (bad != 0) {
            r->answered = true;
            reply_error(gw, r->h, r->rid, 400, "INVALID_JSON", "Invalid JSON body");
            return;
        }
        if (top.is_object && top.payload.present) {
            r->call.input = p + top.payload.off;
            r->call.input_len = top.payload.len;
        } else {
            r->call.input = CV_RJ_UNDEFINED;
            r->call.input_len = sizeof(CV_RJ_UNDEFINED) - 1;
        }
        r->call.return_payload = top.is_object && top.return_payload;
        if (r->call.return_payload && r->be->ops->is_parallel(r->be, r->id)) {
            r->answered = true;
            reply_id_error(gw, r->h, r->rid, 400, "PARALLEL_EVENT_RETURN_UNSUPPORTED", true, r->id,
                           " is marked parallel; returning a payload is not supported.");
            return;
        }
    } else {
        const char *text;
        size_t off, len;
        bool whole;
        if (cv_rj_select_input(p, n, &text, &off, &len, &whole) != 0) {
            r->answered = true;
            reply_error(gw, r->h, r->rid, 400, "INVALID_JSON", "Invalid JSON body");
            return;
        }
        r->call.input = text + off;
        r->call.input_len = len;
        r->call.input_is_body = whole;
    }
    gw_start(r);
}

/* ------------------------------------------------------------------ */
/* HTTP callbacks                                                       */

static void on_end(struct cv_http1_req *h);
static void admit(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int route,
                  const char *id, size_t idlen);

/* Acts on the queued auth verdicts (from the loop, never inside a
 * backend's call): a rejection answers 401, an admission resumes the §3
 * checks at step 6 with a new call. */
static void on_authq(uv_timer_t *t)
{
    struct cv_gateway *gw = t->data;
    struct cv_gw_req *r;
    while ((r = gw->authq.head) != NULL) {
        list_del(&gw->authq, r, GW_DL);
        r->auth_queued = false;
        struct cv_http1_req *h = r->h;
        cv_http1_req_set_data(h, NULL);
        if (!r->auth_ok) {
            cv_log_debug("gateway: delegated auth refused %s (rid %s)", r->id, r->rid);
            reply_auth(gw, h, r->rid, 401);
        } else {
            admit(gw, h, r->rid, r->route, r->id, strlen(r->id));
            if (cv_http1_req_data(h) != NULL) {
                cv_http1_req_resume(h);
                if (r->auth_end_seen)
                    on_end(h); /* an empty body ended while auth ran */
            }
        }
        call_free(r);
        gw->ncalls--;
    }
    gw_maybe_stopped(gw);
}

static void auth_verdict(struct cv_gw_req *r, bool ok)
{
    struct cv_gateway *gw = r->gw;
    if (r->h == NULL || r->auth_queued)
        return;
    r->auth_ok = ok;
    r->auth_queued = true;
    list_add(&gw->authq, r, GW_DL);
    uv_timer_start(&gw->timers[GW_AUTHQ], on_authq, 0, 0);
}

static const struct gw_idopt *find_idopt(const struct cv_gateway *gw, const char *id)
{
    for (size_t i = 0; i < gw->nids; i++)
        if (strcmp(gw->ids[i].id, id) == 0)
            return &gw->ids[i];
    return NULL;
}

/* A new call for backend be (answers 500 itself if out of memory). */
static struct cv_gw_req *req_new(struct cv_gateway *gw, struct cv_http1_req *h,
                                 struct cv_gw_backend *be, const char *rid, const char *id,
                                 size_t idlen)
{
    struct cv_gw_req *r = calloc(1, sizeof *r + idlen + 1);
    if (r == NULL) {
        reply_error(gw, h, rid, 500, "INTERNAL_ERROR", "Internal Error");
        return NULL;
    }
    r->gw = gw;
    r->h = h;
    r->be = be;
    memcpy(r->rid, rid, GW_RID_MAX);
    memcpy(r->id, id, idlen);
    r->id[idlen] = '\0';
    return r;
}

/* After auth: discovery, or steps 6-8 and the start of a call. */
static void admit(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int route,
                  const char *id, size_t idlen)
{
    const struct cv_http_head *hd = cv_http1_req_head(h);
    if (route == CV_GWR_DISCOVERY) {
        respond_json(gw, h, rid, 200, gw->discovery, gw->discovery_len);
        return;
    }
    bool event = route == CV_GWR_EVENT;
    if (gw->ntasks + gw->nevents == 0) {
        reply_error(gw, h, rid, 403, "FORBIDDEN", "Exposure not enabled");
        return;
    }
    if (!(event ? allowed(gw->events, gw->nevents, id) : allowed(gw->tasks, gw->ntasks, id))) {
        reply_id_error(gw, h, rid, 403, "FORBIDDEN", event, id, " not exposed");
        return;
    }
    enum cv_gw_kind kind = event ? CV_GW_EVENT : CV_GW_TASK;
    struct cv_gw_backend *be = find_backend(gw, kind, id);
    if (be == NULL) {
        reply_id_error(gw, h, rid, 404, "NOT_FOUND", event, id, " not found");
        return;
    }
    int count;
    const struct cv_http_header *ct = find_hdr(hd, "content-type", &count);
    enum cv_gw_mode mode =
        event ? CV_GW_MODE_JSON
              : (enum cv_gw_mode)cv_gwr_mode(ct ? ct->value : NULL, ct ? ct->value_len : 0);
    if (mode != CV_GW_MODE_JSON && !be->ops->streams(be)) {
        reply_error(gw, h, rid, 415, "UNSUPPORTED_MODE",
                    "Streaming mode not supported by this backend");
        return;
    }
    uint64_t limit = mode == CV_GW_MODE_JSON    ? gw->max_json
                     : mode == CV_GW_MODE_OCTET ? gw->max_octet
                                                : 0;
    if (limit && hd->content_length >= 0 && (uint64_t)hd->content_length > limit) {
        reply_error(gw, h, rid, 413, "PAYLOAD_TOO_LARGE", "Payload too large"); /* unread */
        return;
    }
    struct cv_gw_req *r = req_new(gw, h, be, rid, id, idlen);
    if (r == NULL)
        return;
    r->call.kind = kind;
    r->call.mode = mode;
    const struct gw_idopt *io = gw->nids ? find_idopt(gw, id) : NULL;
    r->dl_class = io ? io->dl_class : 0;
    cv_buf_init(&r->body, mode == CV_GW_MODE_JSON ? gw->max_json : 0);
    cv_buf_init(&r->held, 1u << 24);
    const struct cv_http_header *rc = find_hdr(hd, "x-runner-context", &count);
    r->no_ctx = io && io->no_ctx;
    if (count == 1 && !r->no_ctx)
        r->runner_ctx = strndup(rc->value, rc->value_len);
    cv_http1_req_set_data(h, r);
    gw->ncalls++;
    if (mode == CV_GW_MODE_OCTET) {
        r->call.input = CV_RJ_UNDEFINED;
        r->call.input_len = sizeof(CV_RJ_UNDEFINED) - 1;
        gw_start(r);
    } else if (mode == CV_GW_MODE_MULTIPART) {
        gw_upload_begin(r, ct ? ct->value : "", ct ? ct->value_len : 0);
    }
}

static int build_context(struct cv_gw_req *r, bool with_auth);

/* No token matched and auth is delegated (§5.1): the request waits, its
 * body unread (paused: no 100 Continue), for the auth backend's verdict. */
static void ask_auth(struct cv_gateway *gw, struct cv_http1_req *h, const char *rid, int route,
                     const char *id, size_t idlen)
{
    struct cv_gw_req *r = req_new(gw, h, gw->auth_be, rid, id ? id : "", idlen);
    if (r == NULL)
        return;
    r->authing = true;
    r->route = route;
    r->dl_class = GW_DL_AUTH;
    r->call.kind = CV_GW_AUTH;
    r->call.id = r->id;
    r->call.rid = r->rid;
    r->call.input = CV_RJ_UNDEFINED;
    r->call.input_len = sizeof(CV_RJ_UNDEFINED) - 1;
    r->call.deadline_ms = GW_AUTH_TIMEOUT_MS;
    cv_buf_init(&r->body, 0);
    cv_buf_init(&r->held, 0);
    if (r->be != cv_gw_native_backend(gw->native)) {
        if (build_context(r, true) < 0) {
            call_free(r);
            reply_error(gw, h, rid, 500, "INTERNAL_ERROR", "Internal Error");
            return;
        }
    } else {
        r->call.context = "{}";
        r->call.context_len = 2;
    }
    cv_http1_req_set_data(h, r);
    cv_http1_req_pause(h);
    gw->ncalls++;
    dl_add(r);
    r->started = true;
    if (r->be->ops->start(r->be, r, &r->call) < 0) {
        r->started = false;
        r->finished = true;
        dl_del(r, GW_DL);
        auth_verdict(r, false);
    }
}

static void on_request(struct cv_http1_req *h)
{
    struct cv_gateway *gw = cv_http1_server_data(cv_http1_req_server(h));
    const struct cv_http_head *hd = cv_http1_req_head(h);
    const char *id = NULL;
    size_t idlen = 0;
    int route = cv_gwr_route(hd->target, hd->target_len, gw->base, gw->route_buf, gw->route_cap,
                             &id, &idlen);

    if (route <= CV_GWR_OUTSIDE) {
        reply_error(gw, h, NULL, 404, "NOT_FOUND", "Not Found"); /* step 0: no request id */
        return;
    }
    if (cv_http1_req_is_method(h, "OPTIONS")) {
        preflight(gw, h);
        return;
    }
    char rid[GW_RID_MAX];
    assign_rid(gw, hd, rid);
    if (route == CV_GWR_UNKNOWN || (route == CV_GWR_DISCOVERY && gw->discovery_disabled)) {
        reply_error(gw, h, rid, 404, "NOT_FOUND", "Not Found");
        return;
    }
    bool is_get = cv_http1_req_is_method(h, "GET");
    if (route == CV_GWR_DISCOVERY ? !is_get : !cv_http1_req_is_method(h, "POST")) {
        reply_error(gw, h, rid, 405, "METHOD_NOT_ALLOWED", "Method Not Allowed");
        return;
    }
    int st = check_auth(gw, hd);
    if (st != 0 && gw->auth_be != NULL) {
        ask_auth(gw, h, rid, route, id, id ? idlen : 0);
        return;
    }
    if (st != 0) {
        reply_auth(gw, h, rid, st);
        return;
    }
    admit(gw, h, rid, route, id, idlen);
}

static void on_body(struct cv_http1_req *h, const uint8_t *p, size_t n)
{
    struct cv_gw_req *r = cv_http1_req_data(h);
    if (r == NULL || r->authing || (r->answered && !r->streaming))
        return;
    /* Multipart is parsed to its end even after the backend answered (a
     * late failure replaces the answer); otherwise "finished" ends a
     * backend's interest in the body (a streamed duplex answer still
     * wants it). */
    if (r->finished && r->call.mode != CV_GW_MODE_MULTIPART)
        return;
    switch (r->call.mode) {
    case CV_GW_MODE_JSON:
        if (cv_buf_append(&r->body, p, n) < 0) {
            r->answered = true;
            reply_error(r->gw, h, r->rid, 413, "PAYLOAD_TOO_LARGE", "Payload too large");
        }
        break;
    case CV_GW_MODE_OCTET:
        r->octet_seen += n;
        if (r->gw->max_octet && r->octet_seen > r->gw->max_octet) {
            if (r->started && !r->finished)
                r->be->ops->stream_end(r->be, r, "body",
                                       "{\"message\":\"Payload too large\","
                                       "\"code\":\"PAYLOAD_TOO_LARGE\"}");
            gw_fail_call(r, 413, "PAYLOAD_TOO_LARGE", "Payload too large");
            return;
        }
        if (r->started && !r->finished)
            gw_stream_in(r, "body", p, n);
        break;
    case CV_GW_MODE_MULTIPART: gw_upload_data(r, p, n); break;
    }
}

static void on_end(struct cv_http1_req *h)
{
    struct cv_gw_req *r = cv_http1_req_data(h);
    if (r != NULL && r->authing) {
        r->auth_end_seen = true;
        return;
    }
    if (r == NULL || (r->answered && !r->streaming))
        return;
    if (r->finished && r->call.mode != CV_GW_MODE_MULTIPART)
        return;
    switch (r->call.mode) {
    case CV_GW_MODE_JSON: json_ready(r); break;
    case CV_GW_MODE_OCTET:
        if (r->started && !r->finished)
            r->be->ops->stream_end(r->be, r, "body", NULL);
        break;
    case CV_GW_MODE_MULTIPART: gw_upload_end(r); break;
    }
}

static void on_drain(struct cv_http1_req *h)
{
    struct cv_gw_req *r = cv_http1_req_data(h);
    if (r == NULL || r->finished || r->ack_owed == 0)
        return;
    size_t n = r->ack_owed;
    r->ack_owed = 0;
    r->be->ops->out_ack(r->be, r, n);
}

static void on_done(struct cv_http1_req *h, int status)
{
    struct cv_gw_req *r = cv_http1_req_data(h);
    if (r == NULL)
        return;
    struct cv_gateway *gw = r->gw;
    r->h = NULL;
    if (status != 0 && r->started && !r->finished)
        cv_log_debug("gateway: %s: client gone (%s), cancelling (rid %s)", r->id,
                     cv_strerror(status), r->rid);
    cancel_backend(r, gw->stopping ? CV_GW_CANCEL_SHUTDOWN : CV_GW_CANCEL_CLIENT);
    if (r->auth_queued)
        list_del(&gw->authq, r, GW_DL);
    dl_del(r, GW_DL);
    dl_del(r, GW_IDLE);
    call_free(r);
    gw->ncalls--;
    gw_maybe_stopped(gw);
}

/* ------------------------------------------------------------------ */
/* Request streams (octet body, multipart files) with flow control      */

void gw_stream_in(struct cv_gw_req *r, const char *stream, const uint8_t *p, size_t n)
{
    r->inflight += n;
    r->be->ops->stream_data(r->be, r, stream, p, n);
    if (r->h != NULL && !r->finished && r->inflight > GW_INFLIGHT_MAX && !r->paused) {
        r->paused = true;
        cv_http1_req_pause(r->h);
    }
}

void cv_gw_req_consumed(struct cv_gw_req *req, size_t n)
{
    req->inflight = n > req->inflight ? 0 : req->inflight - n;
    if (req->paused && req->inflight <= GW_INFLIGHT_MAX / 2 && req->h != NULL) {
        req->paused = false;
        cv_http1_req_resume(req->h);
    }
    if (req->up != NULL)
        gw_upload_consumed(req);
}

/* ------------------------------------------------------------------ */
/* Backend -> core                                                      */

const char *cv_gw_cancel_name(enum cv_gw_cancel_reason r)
{
    switch (r) {
    case CV_GW_CANCEL_CLIENT: return "client-closed";
    case CV_GW_CANCEL_TIMEOUT: return "timeout";
    case CV_GW_CANCEL_SHUTDOWN: return "shutdown";
    }
    return "?";
}

/* Marks the backend's part over. Returns false if it already was. */
static bool finish(struct cv_gw_req *r)
{
    if (r->finished)
        return false;
    r->finished = true;
    dl_del(r, GW_DL);
    return true;
}

void cv_gw_req_result(struct cv_gw_req *req, const char *json, size_t len)
{
    if (!finish(req))
        return;
    if (req->authing) {
        auth_verdict(req, true);
        return;
    }
    struct cv_buf *out = &req->gw->out;
    cv_buf_reset(out);
    int rc;
    if (req->call.kind == CV_GW_EVENT && !req->call.return_payload)
        rc = APPEND(out, "{\"ok\":true}");
    else
        rc = cv_gwe_result(out, json, len);
    if (rc == 0)
        gw_answer(req, 200, cv_buf_head(out), out->len);
    else
        gw_answer(req, 500,
                  "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":"
                  "\"INTERNAL_ERROR\"}}",
                  71);
}

void cv_gw_req_error(struct cv_gw_req *req, int status, const char *error_json, size_t len)
{
    if (!finish(req))
        return;
    if (req->authing) {
        auth_verdict(req, false);
        return;
    }
    struct cv_buf *out = &req->gw->out;
    cv_buf_reset(out);
    if (status == 500 || status < 400 || status > 599)
        cv_log_info("gateway: %s failed: %.*s (rid %s)", req->id, (int)(len > 512 ? 512 : len),
                    error_json ? error_json : "", req->rid);
    if (cv_gwe_sanitized(out, &status, error_json, len) == 0)
        gw_answer(req, status, cv_buf_head(out), out->len);
}

void cv_gw_req_fail(struct cv_gw_req *req, int status, const char *code, const char *message)
{
    if (!finish(req))
        return;
    if (req->authing) {
        auth_verdict(req, false);
        return;
    }
    struct cv_buf *out = &req->gw->out;
    cv_buf_reset(out);
    if (status < 400 || status > 599)
        status = 500;
    if (status == 500 && strcmp(code, "AUTH_NOT_CONFIGURED") != 0)
        message = "Internal Error";
    if (cv_gwe_error(out, code, message) == 0)
        gw_answer(req, status, cv_buf_head(out), out->len);
}

/* Response headers a stream may not set (§8.5). */
static bool blocked(const char *name)
{
    static const char *const names[] = {"set-cookie",
                                        "access-control-allow-origin",
                                        "access-control-allow-credentials",
                                        "x-content-type-options",
                                        "x-frame-options",
                                        "content-length",
                                        "transfer-encoding",
                                        "connection",
                                        "x-runner-request-id",
                                        "keep-alive",
                                        "content-type",
                                        "date"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i]) == 0)
            return true;
    return false;
}

bool gw_token_ok(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("!#$%&'*+-.^_`|~", c))))
            return false;
    }
    return true;
}

bool gw_value_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return false;
    return true;
}

int cv_gw_req_stream_start(struct cv_gw_req *req, int status, const char *content_type,
                           const char *const *headers, size_t nheaders)
{
    if (req->call.kind != CV_GW_TASK || req->finished || req->streaming || req->answered)
        return CV_EINVAL;
    if (req->h == NULL)
        return CV_ECLOSED;
    struct cv_gateway *gw = req->gw;
    struct cv_buf *hb = &gw->head;
    if (status == 0)
        status = 200;
    if (status < 200 || status > 599)
        return CV_EINVAL;
    if (content_type == NULL || !gw_value_ok(content_type) || *content_type == '\0')
        content_type = "application/octet-stream";
    int rc = head_common(gw, hb, req->h, req->rid);
    if (rc == 0)
        rc = APPEND(hb, "content-type: ");
    if (rc == 0)
        rc = cv_buf_append(hb, content_type, strlen(content_type));
    if (rc == 0)
        rc = APPEND(hb, "\r\n");
    for (size_t i = 0; rc == 0 && i < nheaders; i++) {
        const char *k = headers[2 * i], *v = headers[2 * i + 1];
        if (k == NULL || v == NULL || !gw_token_ok(k) || !gw_value_ok(v) || blocked(k))
            continue;
        rc = cv_buf_append(hb, k, strlen(k));
        if (rc == 0)
            rc = APPEND(hb, ": ");
        if (rc == 0)
            rc = cv_buf_append(hb, v, strlen(v));
        if (rc == 0)
            rc = APPEND(hb, "\r\n");
    }
    if (rc == 0)
        rc = APPEND(hb, "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n");
    if (rc < 0)
        return rc;
    rc = cv_http1_respond_head(req->h, status, (const char *)cv_buf_head(hb), hb->len, -1);
    if (rc < 0)
        return rc;
    req->streaming = true;
    req->answered = true;
    dl_del(req, GW_DL);
    idle_touch(req);
    return 0;
}

int cv_gw_req_stream_write(struct cv_gw_req *req, const uint8_t *p, size_t n)
{
    if (!req->streaming || req->finished || req->h == NULL)
        return CV_ECLOSED;
    int rc = cv_http1_respond_write(req->h, p, n);
    if (rc < 0)
        return CV_ECLOSED;
    idle_touch(req);
    /* Acked once below the high mark; otherwise when on_drain comes. */
    req->ack_owed += n;
    if (cv_http1_req_is_writable(req->h)) {
        size_t a = req->ack_owed;
        req->ack_owed = 0;
        req->be->ops->out_ack(req->be, req, a);
    }
    return 0;
}

void cv_gw_req_stream_end(struct cv_gw_req *req, bool truncate)
{
    if (!finish(req))
        return;
    if (req->authing) {
        auth_verdict(req, false);
        return;
    }
    dl_del(req, GW_IDLE);
    if (req->h == NULL)
        return;
    if (!req->streaming) {
        req->answered = true;
        reply_error(req->gw, req->h, req->rid, 500, "INTERNAL_ERROR", "Internal Error");
        return;
    }
    if (truncate)
        cv_http1_respond_abort(req->h);
    else
        cv_http1_respond_end(req->h);
}

const char *cv_gw_req_rid(const struct cv_gw_req *req)
{
    return req->rid;
}

void cv_gw_req_set_data(struct cv_gw_req *req, void *data)
{
    req->data = data;
}

void *cv_gw_req_data(const struct cv_gw_req *req)
{
    return req->data;
}

const char *cv_gw_req_header(struct cv_gw_req *req, const char *name)
{
    if (req->h == NULL)
        return NULL;
    for (struct gw_hcopy *c = req->hcopies; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c->value;
    int count;
    const struct cv_http_header *x = find_hdr(cv_http1_req_head(req->h), name, &count);
    if (count != 1)
        return NULL;
    size_t nl = strlen(name);
    struct gw_hcopy *c = malloc(sizeof *c + nl + 1 + x->value_len + 1);
    if (c == NULL)
        return NULL;
    c->name = c->buf;
    memcpy(c->buf, name, nl + 1);
    c->value = c->buf + nl + 1;
    memcpy(c->value, x->value, x->value_len);
    c->value[x->value_len] = '\0';
    c->next = req->hcopies;
    req->hcopies = c;
    return c->value;
}

bool cv_gw_req_writable(const struct cv_gw_req *req)
{
    return req->h != NULL && cv_http1_req_is_writable(req->h);
}

struct cv_gateway *cv_gw_req_gateway(const struct cv_gw_req *req)
{
    return req->gw;
}

const struct cv_http1_cbs gw_http_cbs = {.on_request = on_request,
                                         .on_body = on_body,
                                         .on_end = on_end,
                                         .on_drain = on_drain,
                                         .on_done = on_done};
