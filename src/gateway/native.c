/* The native backend: C handlers registered with cv_gateway_add_task and
 * cv_gateway_add_event (include/culvert/gateway.h), called on the loop.
 *
 * A struct cv_gw_ctx lives from ops->start until the handler answers
 * (reply, fail, or the end of a stream) or the core cancels the call;
 * then it is freed, so handlers must not touch it afterwards. Inputs are
 * decoded into wire-form trees with cv_rj_decode (an unknown __type or a
 * bad record: 400 INVALID_JSON, as §7.3 asks of native handlers) and
 * results encoded with cv_rj_encode. */
#include <stdlib.h>
#include <string.h>

#include "codec/gwroute.h"
#include "codec/rjson.h"
#include "core/err.h"
#include "core/log.h"
#include "gateway/internal.h"

struct handler {
    enum cv_gw_kind kind;
    bool parallel;
    cv_gw_handler fn;
    void *ud;
    char *id; /* owned */
};

struct cv_gw_native {
    struct cv_gw_backend base; /* first: the core sees this */
    uv_loop_t *loop;           /* borrowed */
    struct handler *hs;        /* owned */
    size_t n, cap;
};

struct cv_gw_ctx {
    struct cv_gw_req *req;         /* borrowed */
    const struct cv_gw_call *call; /* borrowed, valid while the ctx lives */
    json_t *input;                 /* owned */
    void *data;
    void (*cancel_fn)(struct cv_gw_ctx *c, void *ud);
    void *cancel_ud;
    void (*body_data)(struct cv_gw_ctx *c, const uint8_t *p, size_t n, void *ud);
    void (*body_end)(struct cv_gw_ctx *c, void *ud);
    void *body_ud;
    void (*file_open)(struct cv_gw_ctx *c, const char *file_id, const json_t *meta, void *ud);
    void (*file_data)(struct cv_gw_ctx *c, const char *file_id, const uint8_t *p, size_t n,
                      void *ud);
    void (*file_end)(struct cv_gw_ctx *c, const char *file_id, bool error, void *ud);
    void *file_ud;
    void (*drain_fn)(struct cv_gw_ctx *c, void *ud);
    void *drain_ud;
    bool blocked; /* a stream write asked the handler to wait */
    bool streaming;
};

static const struct handler *lookup(const struct cv_gw_native *nat, enum cv_gw_kind kind,
                                    const char *id)
{
    for (size_t i = 0; i < nat->n; i++)
        if (nat->hs[i].kind == kind && strcmp(nat->hs[i].id, id) == 0)
            return &nat->hs[i];
    return NULL;
}

static void ctx_free(struct cv_gw_ctx *c)
{
    if (c == NULL)
        return;
    json_decref(c->input);
    free(c);
}

/* ---- backend ops ---- */

static bool nat_has(struct cv_gw_backend *b, enum cv_gw_kind kind, const char *id)
{
    return lookup((struct cv_gw_native *)b, kind, id) != NULL;
}

static bool nat_is_parallel(struct cv_gw_backend *b, const char *id)
{
    const struct handler *h = lookup((struct cv_gw_native *)b, CV_GW_EVENT, id);
    return h != NULL && h->parallel;
}

static bool nat_streams(struct cv_gw_backend *b)
{
    (void)b;
    return true;
}

/* §8.2 on a decoded graph body: the "input" member if present. */
static json_t *select_tree(json_t *whole)
{
    json_t *in = json_is_object(whole) ? json_object_get(whole, "input") : NULL;
    if (in == NULL)
        return whole;
    json_incref(in);
    json_decref(whole);
    return in;
}

static int nat_start(struct cv_gw_backend *b, struct cv_gw_req *req, const struct cv_gw_call *call)
{
    struct cv_gw_native *nat = (struct cv_gw_native *)b;
    const struct handler *h =
        lookup(nat, call->kind, call->kind == CV_GW_AUTH ? CV_GW_NATIVE_AUTH_ID : call->id);
    if (h == NULL)
        return CV_EINVAL;
    struct cv_gw_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return CV_ENOMEM;
    c->req = req;
    c->call = call;
    cv_gw_req_set_data(req, c);
    if (call->mode != CV_GW_MODE_OCTET) {
        char why[128];
        c->input = cv_rj_decode_compact(call->input, call->input_len, why, sizeof why);
        if (c->input == NULL) {
            cv_log_debug("gateway: %s: input refused: %s (rid %s)", call->id, why, call->rid);
            cv_gw_req_fail(req, 400, "INVALID_JSON", "Invalid JSON body");
            ctx_free(c);
            return 0;
        }
        if (call->input_is_body)
            c->input = select_tree(c->input);
    }
    h->fn(c, h->ud); /* may answer, and free c, before returning */
    return 0;
}

static void nat_file_open(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                          const char *meta, size_t len)
{
    struct cv_gw_ctx *c = cv_gw_req_data(req);
    (void)b;
    if (c->file_open == NULL)
        return;
    json_t *m = json_loadb(meta, len, 0, NULL);
    c->file_open(c, stream, m, c->file_ud);
    json_decref(m);
}

static void nat_stream_data(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                            const uint8_t *p, size_t n)
{
    struct cv_gw_ctx *c = cv_gw_req_data(req);
    (void)b;
    /* Consumed at once: handlers take the bytes synchronously (and may
     * answer, freeing c, inside the callback). */
    cv_gw_req_consumed(req, n);
    if (strcmp(stream, "body") == 0) {
        if (c->body_data)
            c->body_data(c, p, n, c->body_ud);
    } else if (c->file_data) {
        c->file_data(c, stream, p, n, c->file_ud);
    }
}

static void nat_stream_end(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                           const char *error_json)
{
    struct cv_gw_ctx *c = cv_gw_req_data(req);
    (void)b;
    if (strcmp(stream, "body") == 0) {
        if (c->body_end && error_json == NULL)
            c->body_end(c, c->body_ud);
    } else if (c->file_end) {
        c->file_end(c, stream, error_json != NULL, c->file_ud);
    }
}

static void nat_out_ack(struct cv_gw_backend *b, struct cv_gw_req *req, size_t n)
{
    struct cv_gw_ctx *c = cv_gw_req_data(req);
    (void)b, (void)n;
    if (c->blocked && cv_gw_req_writable(req)) {
        c->blocked = false;
        if (c->drain_fn)
            c->drain_fn(c, c->drain_ud);
    }
}

static void nat_cancel(struct cv_gw_backend *b, struct cv_gw_req *req, enum cv_gw_cancel_reason why)
{
    struct cv_gw_ctx *c = cv_gw_req_data(req);
    (void)b, (void)why;
    if (c == NULL)
        return;
    if (c->cancel_fn)
        c->cancel_fn(c, c->cancel_ud);
    ctx_free(c);
}

static void nat_shutdown(struct cv_gw_backend *b, uint64_t grace_ms,
                         void (*done)(struct cv_gw_backend *b, void *ud), void *ud)
{
    /* Not used: the core owns the native backend and frees it last. */
    (void)grace_ms;
    done(b, ud);
}

static void nat_free(struct cv_gw_backend *b)
{
    cv_gw_native_free((struct cv_gw_native *)b);
}

static const struct cv_gw_backend_ops g_ops = {
    .has = nat_has,
    .is_parallel = nat_is_parallel,
    .streams = nat_streams,
    .start = nat_start,
    .file_open = nat_file_open,
    .stream_data = nat_stream_data,
    .stream_end = nat_stream_end,
    .out_ack = nat_out_ack,
    .cancel = nat_cancel,
    .shutdown = nat_shutdown,
    .free = nat_free,
};

struct cv_gw_native *cv_gw_native_new(uv_loop_t *loop)
{
    struct cv_gw_native *n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->base.ops = &g_ops;
    n->loop = loop;
    return n;
}

struct cv_gw_backend *cv_gw_native_backend(struct cv_gw_native *n)
{
    return &n->base;
}

void cv_gw_native_free(struct cv_gw_native *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n; i++)
        free(n->hs[i].id);
    free(n->hs);
    free(n);
}

int cv_gw_native_add(struct cv_gw_native *n, enum cv_gw_kind kind, const char *id, cv_gw_handler fn,
                     void *ud, bool parallel)
{
    if (id == NULL || *id == '\0' || fn == NULL || lookup(n, kind, id) != NULL)
        return CV_EINVAL;
    if (n->n == n->cap) {
        size_t cap = n->cap ? 2 * n->cap : 16;
        struct handler *hs = realloc(n->hs, cap * sizeof *hs);
        if (hs == NULL)
            return CV_ENOMEM;
        n->hs = hs;
        n->cap = cap;
    }
    char *copy = strdup(id);
    if (copy == NULL)
        return CV_ENOMEM;
    n->hs[n->n++] = (struct handler){kind, parallel, fn, ud, copy};
    return 0;
}

/* ---- public handler API ---- */

const json_t *cv_gw_input(const struct cv_gw_ctx *c)
{
    return c->input;
}

bool cv_gw_is_event(const struct cv_gw_ctx *c)
{
    return c->call->kind == CV_GW_EVENT;
}

bool cv_gw_return_payload(const struct cv_gw_ctx *c)
{
    return c->call->return_payload;
}

const char *cv_gw_id(const struct cv_gw_ctx *c)
{
    return c->call->id;
}

const char *cv_gw_request_id(const struct cv_gw_ctx *c)
{
    return c->call->rid;
}

const char *cv_gw_header(const struct cv_gw_ctx *c, const char *name)
{
    return cv_gw_req_header(c->req, name);
}

const char *cv_gw_runner_context(const struct cv_gw_ctx *c)
{
    return c->call->runner_context;
}

void cv_gw_set_data(struct cv_gw_ctx *c, void *data)
{
    c->data = data;
}

void *cv_gw_data(const struct cv_gw_ctx *c)
{
    return c->data;
}

void cv_gw_on_cancel(struct cv_gw_ctx *c, void (*fn)(struct cv_gw_ctx *c, void *ud), void *ud)
{
    c->cancel_fn = fn;
    c->cancel_ud = ud;
}

int cv_gw_reply(struct cv_gw_ctx *c, json_t *result)
{
    if (c->streaming) {
        json_decref(result);
        return CV_EINVAL;
    }
    struct cv_gw_req *req = c->req;
    bool want = c->call->kind == CV_GW_TASK || c->call->return_payload;
    if (!want || result == NULL) {
        cv_gw_req_result(req, NULL, 0);
    } else {
        struct cv_buf b;
        cv_buf_init(&b, 64u << 20);
        if (cv_rj_encode(result, &b) == 0) {
            cv_gw_req_result(req, (const char *)cv_buf_head(&b), b.len);
        } else {
            cv_log_info("gateway: %s: result could not be encoded (rid %s)", c->call->id,
                        c->call->rid);
            cv_gw_req_fail(req, 500, "INTERNAL_ERROR", "Internal Error");
        }
        cv_buf_fini(&b);
    }
    json_decref(result);
    ctx_free(c);
    return 0;
}

int cv_gw_fail(struct cv_gw_ctx *c, int status, const char *code, const char *message)
{
    if (c->streaming)
        return CV_EINVAL;
    cv_gw_req_fail(c->req, status, code ? code : "INTERNAL_ERROR",
                   message ? message : "Internal Error");
    ctx_free(c);
    return 0;
}

int cv_gw_fail_typed(struct cv_gw_ctx *c, int http_code, const char *error_id, const char *message,
                     json_t *data)
{
    if (c->streaming || error_id == NULL) {
        json_decref(data);
        return CV_EINVAL;
    }
    struct cv_buf d, e;
    cv_buf_init(&d, 16u << 20);
    cv_buf_init(&e, 32u << 20);
    int rc = data ? cv_rj_encode(data, &d) : cv_buf_append(&d, "null", 4);
    bool valid = http_code >= 100 && http_code <= 599;
    if (rc == 0)
        rc = cv_buf_append(&e, "{\"message\":", 11);
    if (rc == 0)
        rc = message ? cv_gwr_json_str(&e, message, strlen(message))
                     : cv_gwr_json_str(&e, (const char *)cv_buf_head(&d), d.len);
    if (rc == 0)
        rc = cv_buf_append(&e, ",\"code\":\"INTERNAL_ERROR\",\"id\":", 30);
    if (rc == 0)
        rc = cv_gwr_json_str(&e, error_id, strlen(error_id));
    if (rc == 0 && data)
        rc = cv_buf_append(&e, ",\"data\":", 8);
    if (rc == 0 && data)
        rc = cv_buf_append(&e, cv_buf_head(&d), d.len);
    if (rc == 0 && valid) {
        char h[32];
        int n = snprintf(h, sizeof h, ",\"httpCode\":%d", http_code);
        rc = cv_buf_append(&e, h, (size_t)n);
    }
    if (rc == 0)
        rc = cv_buf_append(&e, "}", 1);
    if (rc == 0)
        cv_gw_req_error(c->req, valid ? http_code : 500, (const char *)cv_buf_head(&e), e.len);
    else
        cv_gw_req_fail(c->req, 500, "INTERNAL_ERROR", "Internal Error");
    cv_buf_fini(&d);
    cv_buf_fini(&e);
    json_decref(data);
    ctx_free(c);
    return 0;
}

void cv_gw_on_body(struct cv_gw_ctx *c,
                   void (*on_data)(struct cv_gw_ctx *c, const uint8_t *p, size_t n, void *ud),
                   void (*on_end)(struct cv_gw_ctx *c, void *ud), void *ud)
{
    c->body_data = on_data;
    c->body_end = on_end;
    c->body_ud = ud;
}

void cv_gw_on_files(
    struct cv_gw_ctx *c,
    void (*on_open)(struct cv_gw_ctx *c, const char *file_id, const json_t *meta, void *ud),
    void (*on_data)(struct cv_gw_ctx *c, const char *file_id, const uint8_t *p, size_t n, void *ud),
    void (*on_end)(struct cv_gw_ctx *c, const char *file_id, bool error, void *ud), void *ud)
{
    c->file_open = on_open;
    c->file_data = on_data;
    c->file_end = on_end;
    c->file_ud = ud;
}

int cv_gw_stream_start(struct cv_gw_ctx *c, int status, const char *content_type,
                       const char *const *headers, size_t nheaders)
{
    int rc = cv_gw_req_stream_start(c->req, status, content_type, headers, nheaders);
    if (rc == 0)
        c->streaming = true;
    return rc;
}

int cv_gw_stream_write(struct cv_gw_ctx *c, const void *p, size_t n)
{
    int rc = cv_gw_req_stream_write(c->req, p, n);
    if (rc < 0)
        return rc;
    if (!cv_gw_req_writable(c->req)) {
        c->blocked = true;
        return CV_EAGAIN;
    }
    return 0;
}

void cv_gw_on_drain(struct cv_gw_ctx *c, void (*fn)(struct cv_gw_ctx *c, void *ud), void *ud)
{
    c->drain_fn = fn;
    c->drain_ud = ud;
}

int cv_gw_stream_end(struct cv_gw_ctx *c, bool truncate)
{
    if (!c->streaming)
        return CV_EINVAL;
    cv_gw_req_stream_end(c->req, truncate);
    ctx_free(c);
    return 0;
}
