/* Worker pool backend (specs/runner-http.md §13): initial landing.
 *
 * This first version validates the options and registers the backend so
 * that cv_gateway_add_pool links, but it does not run workers yet: every
 * call is refused (the core answers 503 WORKER_UNAVAILABLE) and a log line
 * says why. The full pool replaces it. */
#include "gateway/backend.h"

#include <stdlib.h>
#include <uv.h>

#include "core/err.h"
#include "core/log.h"
#include "culvert/gateway.h"

struct pool {
    struct cv_gw_backend base; /* first: the core sees this */
    uv_loop_t *loop;           /* borrowed */
    uv_timer_t done_timer;     /* defers shutdown's done callback */
    void (*done)(struct cv_gw_backend *b, void *ud);
    void *done_ud;
    bool logged;
};

/* Weak so that the core may define it too; both apply the same defaults,
 * and cv_gw_pool_new treats zero values as defaults anyway. */
__attribute__((weak)) void cv_gateway_pool_opts_init(struct cv_gateway_pool_opts *o)
{
    o->argv = NULL;
    o->workers = 0;
    o->protocol = CV_GW_CWP1;
    o->queue_timeout_ms = 5000;
    o->queue_max = 1024;
    o->max_requests = 0;
}

static bool has(struct cv_gw_backend *b, enum cv_gw_kind kind, const char *id)
{
    (void)b, (void)kind, (void)id;
    return true; /* allow-listed ids are assumed to exist before a hello */
}

static bool is_parallel(struct cv_gw_backend *b, const char *id)
{
    (void)b, (void)id;
    return false;
}

static bool streams(struct cv_gw_backend *b)
{
    (void)b;
    return false;
}

static int start(struct cv_gw_backend *b, struct cv_gw_req *req, const struct cv_gw_call *call)
{
    struct pool *p = (struct pool *)b;
    (void)call;
    if (!p->logged) {
        cv_log_error("gateway: worker pool not implemented yet; refusing calls (rid %s)",
                     cv_gw_req_rid(req));
        p->logged = true;
    }
    return CV_ECLOSED;
}

static void file_open(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                      const char *meta, size_t len)
{
    (void)b, (void)req, (void)stream, (void)meta, (void)len;
}

static void stream_data(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                        const uint8_t *p, size_t n)
{
    (void)b, (void)req, (void)stream, (void)p, (void)n;
}

static void stream_end(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                       const char *error_json)
{
    (void)b, (void)req, (void)stream, (void)error_json;
}

static void out_ack(struct cv_gw_backend *b, struct cv_gw_req *req, size_t n)
{
    (void)b, (void)req, (void)n;
}

static void cancel(struct cv_gw_backend *b, struct cv_gw_req *req, enum cv_gw_cancel_reason why)
{
    (void)b, (void)req, (void)why;
}

static void on_done_timer(uv_timer_t *t)
{
    struct pool *p = t->data;
    p->done(&p->base, p->done_ud);
}

static void shutdown_pool(struct cv_gw_backend *b, uint64_t grace_ms,
                          void (*done)(struct cv_gw_backend *b, void *ud), void *ud)
{
    struct pool *p = (struct pool *)b;
    (void)grace_ms;
    p->done = done;
    p->done_ud = ud;
    uv_timer_start(&p->done_timer, on_done_timer, 0, 0);
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void free_pool(struct cv_gw_backend *b)
{
    struct pool *p = (struct pool *)b;
    if (p == NULL)
        return;
    uv_close((uv_handle_t *)&p->done_timer, on_closed);
}

static const struct cv_gw_backend_ops pool_ops = {
    .has = has,
    .is_parallel = is_parallel,
    .streams = streams,
    .start = start,
    .file_open = file_open,
    .stream_data = stream_data,
    .stream_end = stream_end,
    .out_ack = out_ack,
    .cancel = cancel,
    .shutdown = shutdown_pool,
    .free = free_pool,
};

int cv_gw_pool_new(struct uv_loop_s *loop, const struct cv_gateway_pool_opts *o,
                   struct cv_gw_backend **out)
{
    if (o == NULL || o->argv == NULL || o->argv[0] == NULL || o->argv[0][0] == '\0') {
        cv_log_error("gateway: worker pool needs a command (--worker)");
        return CV_EINVAL;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return CV_ENOMEM;
    p->base.ops = &pool_ops;
    p->loop = loop;
    uv_timer_init(loop, &p->done_timer);
    p->done_timer.data = p;
    *out = &p->base;
    return 0;
}
