/* Worker pool backend (specs/runner-http.md §13): the backend ops, the
 * FIFO queue, dispatch to the least-loaded worker, replies and streams.
 * The processes themselves live in pool_worker.c.
 *
 * A call (struct preq) is queued until a worker can take it, then gets a
 * message id on that worker and stays in its in-flight map until the
 * reply (or the end of its response stream), a cancel from the core, or
 * the worker's death (502 WORKER_EXITED). A dispatched call is never
 * retried elsewhere. Lines to a worker are batched: they collect in its
 * tx buffer and go out in one write per loop turn. */
#include "gateway/pool.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "culvert/gateway.h"

/* A request stream (gateway -> worker): "body" or a multipart file. */
struct istream {
    struct istream *next;
    char *name; /* owned */
    char *meta; /* owned; file streams */
    size_t meta_len;
    char *error; /* owned; set when ended with an error */
    size_t error_len;
    struct cv_buf pending;          /* bytes from the core not yet sent (beyond the window) */
    uint64_t unacked;               /* sent to the worker, not yet acknowledged */
    uint64_t pending_bytes_dropped; /* after break_stream */
    bool file, open_sent, ended, end_sent;
};

enum pstate { P_QUEUED, P_RUNNING, P_STREAMING };

struct preq {
    struct preq *prev, *next; /* queue links */
    struct pool *pool;        /* borrowed */
    struct worker *w;         /* borrowed; NULL while queued */
    struct cv_gw_req *req;    /* borrowed */
    struct cv_gw_call call;   /* copy; its pointers are borrowed from the core */
    uint64_t id;              /* message id on w */
    uint64_t t_start;
    enum pstate state;
    struct istream *streams; /* owned list, in open order */
    uint64_t out_unacked;    /* response bytes handed to the core, not yet acked */
};

void pool_free_memory(struct pool *p);
static void on_stimer(uv_timer_t *t);

static void free_preq(struct preq *pr)
{
    struct istream *s = pr->streams;
    while (s != NULL) {
        struct istream *n = s->next;
        free(s->name);
        free(s->meta);
        free(s->error);
        cv_buf_fini(&s->pending);
        free(s);
        s = n;
    }
    free(pr);
}

/* ---- Catalog (the latest hello) ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool in_list(char **list, size_t n, const char *id)
{
    return n > 0 && bsearch(&id, list, n, sizeof(*list), cmp_str) != NULL;
}

static bool has(struct cv_gw_backend *b, enum cv_gw_kind kind, const char *id)
{
    struct pool *p = (struct pool *)b;
    if (!p->hello_seen)
        return true; /* before the first hello: allow-listed ids are assumed to exist */
    if (kind == CV_GW_TASK)
        return !p->hello.has_tasks || in_list(p->hello.tasks, p->hello.ntasks, id);
    return !p->hello.has_events || in_list(p->hello.events, p->hello.nevents, id);
}

static bool is_parallel(struct cv_gw_backend *b, const char *id)
{
    struct pool *p = (struct pool *)b;
    return p->hello_seen && p->hello.has_parallel &&
           in_list(p->hello.parallel, p->hello.nparallel, id);
}

static bool streams(struct cv_gw_backend *b)
{
    struct pool *p = (struct pool *)b;
    if (p->proto != CV_CWP_PROTO_CWP1)
        return false;
    /* Before any hello the call waits in the queue; dispatch checks the
     * worker's features and answers 415 if it has no streams. */
    return !p->hello_seen || p->hello.f_streams;
}

static void on_hello(struct worker *w, const char *text, size_t len)
{
    struct pool *p = w->pool;
    struct cv_cwp_hello h;
    if (cv_cwp_hello_parse(text, len, &h) != 0) {
        cv_log_error("gateway: worker %u sent an invalid hello: %.*s", w->index,
                     (int)(len > 512 ? 512 : len), text);
        worker_restart(w, "sent an invalid hello");
        return;
    }
    if (h.ntasks > 1)
        qsort(h.tasks, h.ntasks, sizeof(*h.tasks), cmp_str);
    if (h.nevents > 1)
        qsort(h.events, h.nevents, sizeof(*h.events), cmp_str);
    if (h.nparallel > 1)
        qsort(h.parallel, h.nparallel, sizeof(*h.parallel), cmp_str);
    w->max_in_flight = h.max_in_flight;
    if (p->max_inflight != 0 && p->max_inflight < w->max_in_flight)
        w->max_in_flight = p->max_inflight;
    w->window = h.window;
    w->f_cancel = h.f_cancel;
    w->f_streams = h.f_streams;
    w->f_auth = h.f_auth;
    w->state = W_READY;
    w->ready_at = uv_now(p->loop);
    cv_log_info("gateway: worker %u ready (pid %lld, maxInFlight %u, window %llu%s%s%s)", w->index,
                (long long)h.pid, w->max_in_flight, (unsigned long long)h.window,
                h.f_cancel ? ", cancel" : "", h.f_streams ? ", streams" : "",
                h.f_auth ? ", auth" : "");
    cv_cwp_hello_fini(&p->hello);
    p->hello = h;
    p->hello_seen = true;
    worker_arm(w);
    pool_on_ready(p);
}

/* ---- Dispatch and the queue ---- */

static struct worker *pick(struct pool *p)
{
    struct worker *best = NULL;
    unsigned bi = 0;
    for (unsigned k = 0; k < p->nworkers; k++) {
        unsigned i = (p->rr + k) % p->nworkers;
        struct worker *w = &p->workers[i];
        if (worker_can_take(w) && (best == NULL || w->ninflight < best->ninflight)) {
            best = w;
            bi = i;
        }
    }
    if (best != NULL)
        p->rr = bi + 1;
    return best;
}

static void pump(struct preq *pr);

/* Sends the call to w. Returns 0, CV_EINVAL (w has no streams for a
 * streaming call) or CV_ETOOBIG/CV_ENOMEM. */
static int dispatch(struct worker *w, struct preq *pr)
{
    struct pool *p = w->pool;
    bool auth = pr->call.kind == CV_GW_AUTH;
    if (auth && !(p->proto == CV_CWP_PROTO_V2 || (p->proto == CV_CWP_PROTO_CWP1 && w->f_auth))) {
        if (!p->auth_warned) {
            p->auth_warned = true;
            cv_log_warn("gateway: delegated auth asked of worker %u, which has no \"auth\" "
                        "feature: rejected",
                        w->index);
        }
        return CV_EINVAL;
    }
    if (!auth && pr->call.mode != CV_GW_MODE_JSON && !w->f_streams)
        return CV_EINVAL;
    uint64_t id = w->next_id++;
    while (cv_idmap_get(&w->inflight, (uint32_t)id) != NULL || (uint32_t)id == 0)
        id = w->next_id++;
    uint64_t elapsed = uv_now(p->loop) - pr->t_start;
    struct cv_cwp_call c = {
        .event = pr->call.kind == CV_GW_EVENT,
        .id = id,
        .name = pr->call.id,
        .rid = pr->call.rid,
        .mode = (enum cv_cwp_mode)pr->call.mode,
        .input = pr->call.mode == CV_GW_MODE_OCTET ? NULL : pr->call.input,
        .input_len = pr->call.input_len,
        .is_body = pr->call.input_is_body,
        .return_payload = pr->call.return_payload,
        .context = pr->call.context,
        .context_len = pr->call.context_len,
        .deadline_ms = pr->call.deadline_ms > elapsed ? pr->call.deadline_ms - elapsed : 1,
    };
    int rc = cv_idmap_put(&w->inflight, (uint32_t)id, pr);
    if (rc != 0)
        return rc;
    size_t before = w->tx.len;
    if (auth)
        rc = cv_cwp_put_auth(&w->tx, id, pr->call.rid, pr->call.context, pr->call.context_len);
    else
        rc = cv_cwp_put_call(&w->tx, p->proto, &c);
    if (rc == 0 && w->tx.len - before > CV_CWP_MAX_LINE) {
        /* Over the line limit of either side: this call fails, the worker stays. */
        w->tx.len = before;
        rc = CV_ETOOBIG;
    }
    if (rc != 0) {
        cv_idmap_del(&w->inflight, (uint32_t)id);
        return rc;
    }
    w->ninflight++;
    pr->w = w;
    pr->id = id;
    pr->state = P_RUNNING;
    worker_send(w);
    pump(pr);
    return 0;
}

static void unlink_queued(struct pool *p, struct preq *pr)
{
    if (pr->prev != NULL)
        pr->prev->next = pr->next;
    else
        p->qhead = pr->next;
    if (pr->next != NULL)
        pr->next->prev = pr->prev;
    else
        p->qtail = pr->prev;
    pr->prev = pr->next = NULL;
    p->qlen--;
}

static void on_qtimer(uv_timer_t *t);

static void arm_queue(struct pool *p)
{
    if (p->qhead == NULL || p->teardown) {
        if (!p->teardown)
            uv_timer_stop(&p->qtimer);
        return;
    }
    uint64_t due = p->qhead->t_start + p->queue_timeout_ms, now = uv_now(p->loop);
    uv_timer_start(&p->qtimer, on_qtimer, due > now ? due - now : 0, 0);
}

/* Dispatches queued calls while workers have room. Answers the core, so
 * it runs only from libuv callbacks, never inside a core call. */
static void drain_queue(struct pool *p)
{
    while (p->qhead != NULL) {
        struct worker *w = pick(p);
        if (w == NULL)
            break;
        struct preq *pr = p->qhead;
        unlink_queued(p, pr);
        int rc = dispatch(w, pr);
        if (rc == CV_EINVAL && pr->call.kind == CV_GW_AUTH) {
            cv_gw_req_fail(pr->req, 401, "UNAUTHORIZED", "Unauthorized");
            free_preq(pr);
        } else if (rc == CV_EINVAL) {
            cv_gw_req_fail(pr->req, 415, "UNSUPPORTED_MODE",
                           "Streaming mode not supported by this backend");
            free_preq(pr);
        } else if (rc == CV_ETOOBIG) {
            cv_log_warn("gateway: call %s: input over the 16 MiB worker line limit", pr->call.rid);
            cv_gw_req_fail(pr->req, 413, "PAYLOAD_TOO_LARGE", "Payload too large");
            free_preq(pr);
        } else if (rc != 0) {
            cv_log_error("gateway: cannot send call %s to worker %u: %s", pr->call.rid, w->index,
                         cv_strerror(rc));
            cv_gw_req_fail(pr->req, 503, "WORKER_UNAVAILABLE", "No worker available");
            free_preq(pr);
        }
    }
    arm_queue(p);
}

static void on_qtimer(uv_timer_t *t)
{
    struct pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    drain_queue(p);
    while (p->qhead != NULL && p->qhead->t_start + p->queue_timeout_ms <= now) {
        struct preq *pr = p->qhead;
        unlink_queued(p, pr);
        cv_log_warn("gateway: call %s waited %llu ms for a worker; 503", pr->call.rid,
                    (unsigned long long)(now - pr->t_start));
        cv_gw_req_fail(pr->req, 503, "WORKER_UNAVAILABLE", "No worker available");
        free_preq(pr);
    }
    arm_queue(p);
}

/* From inside a core call: look at the queue on the next loop turn. */
static void kick_queue(struct pool *p)
{
    if (p->qhead != NULL && !p->teardown)
        uv_timer_start(&p->qtimer, on_qtimer, 0, 0);
}

void pool_on_ready(struct pool *p)
{
    drain_queue(p);
}

static int start(struct cv_gw_backend *b, struct cv_gw_req *req, const struct cv_gw_call *call)
{
    struct pool *p = (struct pool *)b;
    if (p->closing)
        return CV_ECLOSED;
    struct preq *pr = calloc(1, sizeof(*pr));
    if (pr == NULL)
        return CV_ENOMEM;
    pr->pool = p;
    pr->req = req;
    pr->call = *call;
    pr->t_start = uv_now(p->loop);
    pr->state = P_QUEUED;
    if (p->qhead == NULL) {
        struct worker *w = pick(p);
        if (w != NULL) {
            int rc = dispatch(w, pr);
            if (rc == 0) {
                cv_gw_req_set_data(req, pr);
                return 0;
            }
            if (rc != CV_ETOOBIG) {
                free_preq(pr);
                return rc;
            }
            /* Answered 413 from the queue on the next loop turn (start
             * itself can only refuse with 503). */
            cv_gw_req_set_data(req, pr);
            pr->next = p->qhead;
            if (p->qhead != NULL)
                p->qhead->prev = pr;
            else
                p->qtail = pr;
            p->qhead = pr;
            p->qlen++;
            kick_queue(p);
            return 0;
        }
    }
    if (p->qlen >= p->queue_max) {
        cv_log_warn("gateway: call %s refused: worker queue full (%u)", call->rid, p->qlen);
        free_preq(pr);
        return CV_EAGAIN;
    }
    cv_gw_req_set_data(req, pr);
    pr->prev = p->qtail;
    if (p->qtail != NULL)
        p->qtail->next = pr;
    else
        p->qhead = pr;
    p->qtail = pr;
    p->qlen++;
    if (p->qlen == 1)
        arm_queue(p);
    return 0;
}

/* ---- Request streams ---- */

static struct istream *find_stream(struct preq *pr, const char *name)
{
    for (struct istream *s = pr->streams; s != NULL; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static struct istream *add_stream(struct preq *pr, const char *name, bool file)
{
    struct istream *s = calloc(1, sizeof(*s)), **tail = &pr->streams;
    if (s == NULL || (s->name = strdup(name)) == NULL) {
        free(s);
        return NULL;
    }
    s->file = file;
    /* The core bounds what it hands over by cv_gw_req_consumed; this cap
     * only guards against a core bug. */
    cv_buf_init(&s->pending, (size_t)1 << 30);
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = s;
    return s;
}

/* Sends what the window allows of every request stream. */
static void pump(struct preq *pr)
{
    struct worker *w = pr->w;
    bool sent = false;
    if (pr->state == P_QUEUED || w == NULL || !w->in_open)
        return;
    for (struct istream *s = pr->streams; s != NULL; s = s->next) {
        if (s->file && !s->open_sent) {
            if (cv_cwp_put_file(&w->tx, pr->id, s->name, s->meta ? s->meta : "{}",
                                s->meta ? s->meta_len : 2) != 0)
                break;
            s->open_sent = sent = true;
        }
        while (s->pending.len > 0 && s->unacked < w->window) {
            size_t n = s->pending.len;
            if (n > CV_CWP_MAX_DATA)
                n = CV_CWP_MAX_DATA;
            if (n > w->window - s->unacked)
                n = (size_t)(w->window - s->unacked);
            if (cv_cwp_put_data(&w->tx, pr->id, s->name, cv_buf_head(&s->pending), n) != 0)
                break;
            cv_buf_consume(&s->pending, n);
            s->unacked += n;
            sent = true;
        }
        if (s->ended && !s->end_sent && s->pending.len == 0) {
            if (cv_cwp_put_end(&w->tx, pr->id, s->name, s->error, s->error_len) != 0)
                break;
            s->end_sent = sent = true;
        }
    }
    if (sent)
        worker_send(w);
}

/* A stream we cannot buffer (out of memory) ends with an error for the
 * worker instead of silently losing bytes; what the core handed over is
 * released so that it does not wait for it. */
static const char stream_error[] = "{\"message\":\"Internal Error\",\"code\":\"STREAM_ERROR\"}";

static void break_stream(struct preq *pr, struct istream *s, size_t dropped)
{
    cv_log_error("gateway: call %s: out of memory on stream %s; ending it with an error",
                 pr->call.rid, s->name);
    s->ended = true;
    free(s->error);
    s->error = NULL;
    s->error_len = 0;
    if ((s->error = strdup(stream_error)) != NULL)
        s->error_len = sizeof(stream_error) - 1;
    s->pending_bytes_dropped += dropped;
    if (dropped > 0)
        cv_gw_req_consumed(pr->req, dropped);
}

static void file_open(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                      const char *meta, size_t len)
{
    struct preq *pr = cv_gw_req_data(req);
    struct istream *s = find_stream(pr, stream);
    (void)b;
    if (s == NULL && (s = add_stream(pr, stream, true)) == NULL) {
        cv_log_error("gateway: call %s: out of memory for file %s", pr->call.rid, stream);
        return;
    }
    free(s->meta);
    s->file = true;
    s->meta_len = len;
    if ((s->meta = malloc(len ? len : 1)) == NULL) {
        s->meta_len = 0;
        break_stream(pr, s, 0);
    } else {
        memcpy(s->meta, meta, len);
    }
    pump(pr);
}

static void stream_data(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                        const uint8_t *p, size_t n)
{
    struct preq *pr = cv_gw_req_data(req);
    struct istream *s = find_stream(pr, stream);
    (void)b;
    if (s == NULL && (s = add_stream(pr, stream, false)) == NULL) {
        cv_log_error("gateway: call %s: out of memory for stream %s", pr->call.rid, stream);
        cv_gw_req_consumed(req, n);
        return;
    }
    if (s->pending_bytes_dropped > 0 || (s->ended && s->error != NULL)) {
        s->pending_bytes_dropped += n;
        cv_gw_req_consumed(req, n);
        return;
    }
    if (cv_buf_append(&s->pending, p, n) != 0)
        break_stream(pr, s, n);
    pump(pr);
}

static void stream_end(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                       const char *error_json)
{
    struct preq *pr = cv_gw_req_data(req);
    struct istream *s = find_stream(pr, stream);
    (void)b;
    if (s == NULL && (s = add_stream(pr, stream, false)) == NULL)
        return;
    s->ended = true;
    if (error_json != NULL && s->error == NULL) {
        s->error_len = strlen(error_json);
        s->error = strdup(error_json);
        if (s->error == NULL)
            s->error_len = 0;
    }
    pump(pr);
}

static void out_ack(struct cv_gw_backend *b, struct cv_gw_req *req, size_t n)
{
    struct preq *pr = cv_gw_req_data(req);
    (void)b;
    if (pr == NULL || pr->state != P_STREAMING || !pr->w->in_open)
        return;
    pr->out_unacked = n > pr->out_unacked ? 0 : pr->out_unacked - n;
    if (cv_cwp_put_ack(&pr->w->tx, pr->id, "out", n) == 0)
        worker_send(pr->w);
}

/* ---- Ending calls ---- */

static void send_cancel(struct worker *w, uint64_t id, enum cv_gw_cancel_reason why)
{
    if (!w->f_cancel || !w->in_open || w->state == W_STOPPING)
        return;
    if (cv_cwp_put_cancel(&w->tx, id, cv_gw_cancel_name(why)) == 0)
        worker_send(w);
}

/* Forgets a dispatched call (its req was answered or cancelled). */
static void forget(struct preq *pr)
{
    struct worker *w = pr->w;
    struct pool *p = pr->pool;
    cv_idmap_del(&w->inflight, (uint32_t)pr->id);
    w->ninflight--;
    free_preq(pr);
    if (p->max_requests != 0 && w->served >= p->max_requests && w->state == W_READY)
        w->state = W_DRAIN;
    if (p->closing && !p->teardown)
        uv_timer_start(&p->stimer, on_stimer, 0, 0);
}

/* The call got its answer (from a libuv callback). */
static void finish(struct preq *pr)
{
    struct worker *w = pr->w;
    struct pool *p = pr->pool;
    w->served++;
    w->timeouts = 0;
    forget(pr);
    if (w->state == W_DRAIN)
        worker_arm(w); /* recycles it once idle */
    drain_queue(p);
}

static void cancel(struct cv_gw_backend *b, struct cv_gw_req *req, enum cv_gw_cancel_reason why)
{
    struct pool *p = (struct pool *)b;
    struct preq *pr = cv_gw_req_data(req);
    if (pr == NULL)
        return;
    if (pr->state == P_QUEUED) {
        unlink_queued(p, pr);
        free_preq(pr);
        arm_queue(p);
        return;
    }
    struct worker *w = pr->w;
    uint64_t id = pr->id;
    send_cancel(w, id, why);
    forget(pr);
    if (why == CV_GW_CANCEL_TIMEOUT && (w->state == W_READY || w->state == W_DRAIN)) {
        if (++w->timeouts >= 3) {
            worker_restart(w, "timed out 3 times in a row");
        } else {
            /* A ping right away: a worker whose loop still turns answers it
             * (cwp/1); one that stays silent is restarted. */
            w->silence_at = uv_now(p->loop) + p->tm.silence_ms;
            w->silence_mark = w->rx_lines;
            if (p->proto == CV_CWP_PROTO_CWP1 && w->ping_id == 0 && w->in_open) {
                w->ping_id = w->next_id++;
                w->ping_at = uv_now(p->loop);
                if (cv_cwp_put_ping(&w->tx, w->ping_id) == 0)
                    worker_send(w);
            }
            worker_arm(w);
        }
    }
    if (w->state == W_DRAIN)
        worker_arm(w);
    kick_queue(p);
}

void pool_fail_inflight(struct worker *w)
{
    size_t n = 0;
    struct preq **list = NULL;
    if (w->inflight.count > 0) {
        list = malloc(w->inflight.count * sizeof(*list));
        for (size_t i = 0; list != NULL && i < w->inflight.cap; i++)
            if (w->inflight.slots[i].val != NULL)
                list[n++] = w->inflight.slots[i].val;
    }
    cv_idmap_fini(&w->inflight);
    cv_idmap_init(&w->inflight);
    w->ninflight = 0;
    for (size_t i = 0; i < n; i++) {
        struct preq *pr = list[i];
        if (pr->state == P_STREAMING)
            cv_gw_req_stream_end(pr->req, true);
        else
            cv_gw_req_fail(pr->req, 502, "WORKER_EXITED", "Worker exited");
        free_preq(pr);
    }
    free(list);
}

/* ---- Replies ---- */

static void bad_reply(struct preq *pr, const char *why)
{
    struct worker *w = pr->w;
    cv_log_warn("gateway: worker %u: invalid reply for call %s (id %llu): %s", w->index,
                pr->call.rid, (unsigned long long)pr->id, why);
    if (pr->state == P_STREAMING) {
        send_cancel(w, pr->id, CV_GW_CANCEL_CLIENT);
        cv_gw_req_stream_end(pr->req, true);
    } else {
        cv_gw_req_fail(pr->req, 502, "WORKER_BAD_REPLY", "Invalid worker reply");
    }
    finish(pr);
}

/* Starts a streamed response from a reply's "stream" object. */
static void stream_reply(struct preq *pr, const char *t, const struct cv_cwp_msg *m)
{
    size_t nh = 0, pos, cap = 0;
    struct cv_cwp_slice k, v;
    if (m->headers.present) {
        pos = m->headers.off;
        while (cv_cwp_next_member(t, m->headers.off + m->headers.len, &pos, &k, &v)) {
            nh++;
            cap += k.len + v.len + 2;
        }
    }
    cap += m->content_type.len + 1;
    const char **hv = calloc(nh * 2 + 1, sizeof(*hv));
    char *store = malloc(cap + 1), *sp = store;
    if (hv == NULL || store == NULL) {
        free(hv);
        free(store);
        bad_reply(pr, "out of memory");
        return;
    }
    size_t n = 0;
    if (m->headers.present) {
        pos = m->headers.off;
        while (cv_cwp_next_member(t, m->headers.off + m->headers.len, &pos, &k, &v)) {
            int kl = cv_cwp_str(t, k, sp, k.len + 1);
            if (kl < 0)
                continue;
            const char *name = sp;
            sp += kl + 1;
            const char *val = sp;
            if (t[v.off] == '"') {
                int vl = cv_cwp_str(t, v, sp, v.len + 1);
                if (vl < 0)
                    continue;
                sp += vl + 1;
            } else if (t[v.off] != '{' && t[v.off] != '[' && t[v.off] != 'n') {
                memcpy(sp, t + v.off, v.len); /* numbers and booleans, as Node writes them */
                sp[v.len] = '\0';
                sp += v.len + 1;
            } else {
                continue;
            }
            hv[n++] = name;
            hv[n++] = val;
        }
    }
    const char *ctype = NULL;
    if (m->content_type.present && cv_cwp_str(t, m->content_type, sp, m->content_type.len + 1) >= 0)
        ctype = sp;
    int rc = cv_gw_req_stream_start(pr->req, m->stream_status, ctype, hv, n / 2);
    free(hv);
    free(store);
    if (rc != 0) {
        bad_reply(pr, "a stream reply to a call that cannot stream");
        return;
    }
    pr->state = P_STREAMING;
}

static void on_reply(struct preq *pr, const char *t, const struct cv_cwp_msg *m)
{
    struct pool *p = pr->pool;
    if (pr->state == P_STREAMING) {
        bad_reply(pr, "a second reply to a streaming call");
        return;
    }
    if (m->ok && m->stream) {
        stream_reply(pr, t, m);
        return;
    }
    if (m->ok) {
        if (m->result.present)
            cv_gw_req_result(pr->req, t + m->result.off, m->result.len);
        else
            cv_gw_req_result(pr->req, NULL, 0);
        finish(pr);
        return;
    }
    cv_buf_reset(&p->scratch);
    if (cv_cwp_put_error(&p->scratch, t, m) != 0) {
        bad_reply(pr, "error object too large");
        return;
    }
    cv_log_debug("gateway: worker %u: call %s failed (%d): %.*s", pr->w->index, pr->call.rid,
                 m->status, (int)(p->scratch.len > 512 ? 512 : p->scratch.len),
                 (char *)cv_buf_head(&p->scratch));
    cv_gw_req_error(pr->req, m->status, (const char *)cv_buf_head(&p->scratch), p->scratch.len);
    cv_buf_consume(&p->scratch, p->scratch.len);
    finish(pr);
}

static void on_data(struct preq *pr, const char *t, const struct cv_cwp_msg *m)
{
    struct pool *p = pr->pool;
    struct worker *w = pr->w;
    if (pr->state != P_STREAMING || !cv_cwp_str_eq(t, m->stream_name, "out")) {
        bad_reply(pr, "a data frame outside a response stream");
        return;
    }
    if (m->b64.len > (CV_CWP_MAX_DATA / 3 + 1) * 4) {
        bad_reply(pr, "a data frame over 64 KiB");
        return;
    }
    int n = cv_cwp_b64_decode(t + m->b64.off, m->b64.len, p->dec);
    if (n < 0 || (size_t)n > CV_CWP_MAX_DATA) {
        bad_reply(pr, n < 0 ? "bad base64 in a data frame" : "a data frame over 64 KiB");
        return;
    }
    pr->out_unacked += (uint64_t)n;
    if (pr->out_unacked > w->window + CV_CWP_MAX_DATA) {
        bad_reply(pr, "response stream beyond the flow-control window");
        return;
    }
    if (n > 0)
        cv_gw_req_stream_write(pr->req, p->dec, (size_t)n);
}

static void on_ack(struct preq *pr, const char *t, const struct cv_cwp_msg *m)
{
    char name[256];
    if (cv_cwp_str(t, m->stream_name, name, sizeof(name)) < 0)
        return;
    struct istream *s = find_stream(pr, name);
    if (s == NULL)
        return;
    uint64_t k = m->bytes > s->unacked ? s->unacked : m->bytes;
    s->unacked -= k;
    if (k > 0)
        cv_gw_req_consumed(pr->req, (size_t)k);
    pump(pr);
}

/* The compact copy of a line: reused, released after an unusually long one. */
static char *line_out(struct pool *p, size_t len)
{
    if (p->linecap < len || p->line == NULL) {
        size_t cap = len < 4096 ? 4096 : len;
        char *n = realloc(p->line, cap);
        if (n == NULL)
            return NULL;
        p->line = n;
        p->linecap = cap;
    }
    return p->line;
}

static void line_done(struct pool *p)
{
    if (p->linecap > 1024 * 1024) {
        free(p->line);
        p->line = NULL;
        p->linecap = 0;
    }
}

static void on_line(struct worker *w, const char *t, size_t clen, struct cv_cwp_msg *m);

void pool_on_line(struct worker *w, char *line, size_t len)
{
    struct pool *p = w->pool;
    struct cv_cwp_msg m;
    size_t clen;
    char *out = line_out(p, len);
    if (out == NULL) {
        cv_log_error("gateway: worker %u: out of memory for a %zu-byte line; dropped", w->index,
                     len);
        return;
    }
    int rc = cv_cwp_parse(p->proto, line, len, out, &clen, &m);
    if (rc != 0 && m.why != NULL && strcmp(m.why, "invalid UTF-8") == 0 &&
        cv_cwp_fix_utf8(line, len, &p->fixed) == 1 && (out = line_out(p, p->fixed.len)) != NULL)
        rc = cv_cwp_parse(p->proto, (const char *)cv_buf_head(&p->fixed), p->fixed.len, out, &clen,
                          &m);
    cv_buf_reset(&p->fixed);
    if (rc != 0) {
        if (worker_log_ok(w))
            cv_log_warn("gateway: worker %u: dropped a line that is not a JSON object (%s): %.*s",
                        w->index, m.why, (int)(len > 512 ? 512 : len), line);
        line_done(p);
        return;
    }
    on_line(w, out, clen, &m);
    line_done(p);
}

static void on_line(struct worker *w, const char *t, size_t clen, struct cv_cwp_msg *mp)
{
    struct pool *p = w->pool;
    struct cv_cwp_msg m = *mp;
    switch (m.type) {
    case CV_CWP_HELLO:
        if (w->state == W_HELLO && p->proto == CV_CWP_PROTO_CWP1)
            on_hello(w, t, clen);
        else
            cv_log_debug("gateway: worker %u: repeated hello ignored", w->index);
        return;
    case CV_CWP_WORKER:
        if (worker_log_ok(w))
            cv_log_warn("gateway: worker %u says: %.*s", w->index, (int)(clen > 512 ? 512 : clen),
                        t);
        return;
    case CV_CWP_OTHER:
        cv_log_debug("gateway: worker %u: unknown message type ignored", w->index);
        return;
    default: break;
    }
    if (w->state == W_HELLO) {
        cv_log_warn("gateway: worker %u: message before its hello dropped", w->index);
        return;
    }
    if (m.id == w->ping_id) {
        w->ping_id = 0;
        worker_arm(w);
        return;
    }
    struct preq *pr = cv_idmap_get(&w->inflight, (uint32_t)m.id);
    if (pr == NULL || pr->id != m.id) {
        cv_log_debug("gateway: worker %u: message for id %llu not in flight dropped", w->index,
                     (unsigned long long)m.id);
        return;
    }
    switch (m.type) {
    case CV_CWP_REPLY: on_reply(pr, t, &m); break;
    case CV_CWP_BAD: bad_reply(pr, m.why); break;
    case CV_CWP_DATA: on_data(pr, t, &m); break;
    case CV_CWP_END:
        if (!cv_cwp_str_eq(t, m.stream_name, "out"))
            break; /* a worker ending a request stream early: nothing to do */
        if (pr->state != P_STREAMING) {
            bad_reply(pr, "an end frame outside a response stream");
            break;
        }
        cv_gw_req_stream_end(pr->req, m.frame_error.present);
        finish(pr);
        break;
    case CV_CWP_ACK: on_ack(pr, t, &m); break;
    default: cv_log_debug("gateway: worker %u: frame ignored", w->index); break;
    }
}

/* ---- Shutdown ---- */

static unsigned total_inflight(const struct pool *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->nworkers; i++)
        n += p->workers[i].ninflight;
    return n;
}

void pool_check_shutdown(struct pool *p)
{
    if (!p->closing || !p->stopping_workers || p->teardown)
        return;
    for (unsigned i = 0; i < p->nworkers; i++)
        if (p->workers[i].state != W_IDLE)
            return;
    pool_teardown(p);
}

static void on_stimer(uv_timer_t *t)
{
    struct pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    while (p->qhead != NULL) {
        struct preq *pr = p->qhead;
        unlink_queued(p, pr);
        cv_gw_req_fail(pr->req, 503, "WORKER_UNAVAILABLE", "No worker available");
        free_preq(pr);
    }
    arm_queue(p);
    if (p->stopping_workers)
        return;
    if (total_inflight(p) == 0 || now >= p->drain_until) {
        pool_stop_workers(p);
        return;
    }
    uv_timer_start(&p->stimer, on_stimer, p->drain_until - now, 0);
}

static void shutdown_pool(struct cv_gw_backend *b, uint64_t grace_ms,
                          void (*done)(struct cv_gw_backend *b, void *ud), void *ud)
{
    struct pool *p = (struct pool *)b;
    p->done = done;
    p->done_ud = ud;
    if (p->closing)
        return;
    p->closing = true;
    p->grace_ms = grace_ms;
    p->drain_until = uv_now(p->loop) + grace_ms;
    uv_timer_start(&p->stimer, on_stimer, 0, 0);
}

void pool_free_memory(struct pool *p)
{
    for (unsigned i = 0; p->workers != NULL && i < p->nworkers; i++)
        cv_idmap_fini(&p->workers[i].inflight);
    free(p->workers);
    for (char **a = p->argv; a != NULL && *a != NULL; a++)
        free(*a);
    free(p->argv);
    cv_cwp_hello_fini(&p->hello);
    cv_buf_fini(&p->scratch);
    cv_buf_fini(&p->fixed);
    free(p->line);
    free(p->dec);
    free(p);
}

static void free_pool(struct cv_gw_backend *b)
{
    struct pool *p = (struct pool *)b;
    if (p == NULL)
        return;
    if (p->teardown && p->handles == 0) {
        pool_free_memory(p);
        return;
    }
    /* Freed without a finished shutdown: finish it, then free. */
    p->free_on_done = true;
    if (!p->closing)
        shutdown_pool(b, 0, NULL, NULL);
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
        cv_log_error("gateway: a worker pool needs a command (--worker)");
        return CV_EINVAL;
    }
    if ((unsigned)o->protocol > CV_GW_RUNNER_IPC_V2) {
        cv_log_error("gateway: unknown worker protocol %d", (int)o->protocol);
        return CV_EINVAL;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return CV_ENOMEM;
    size_t argc = 0;
    while (o->argv[argc] != NULL)
        argc++;
    p->argv = calloc(argc + 1, sizeof(*p->argv));
    p->nworkers = o->workers ? o->workers : uv_available_parallelism();
    if (p->nworkers == 0)
        p->nworkers = 1;
    p->workers = calloc(p->nworkers, sizeof(*p->workers));
    p->dec = malloc(CV_CWP_MAX_DATA + 4);
    bool nomem = p->argv == NULL || p->workers == NULL || p->dec == NULL;
    for (size_t i = 0; !nomem && i < argc; i++)
        nomem = (p->argv[i] = strdup(o->argv[i])) == NULL;
    if (nomem) {
        pool_free_memory(p);
        return CV_ENOMEM;
    }
    p->base.ops = &pool_ops;
    p->loop = loop;
    p->proto = (enum cv_cwp_proto)o->protocol;
    p->queue_timeout_ms = o->queue_timeout_ms ? o->queue_timeout_ms : 5000;
    p->queue_max = o->queue_max ? o->queue_max : 1024;
    p->max_requests = o->max_requests;
    p->max_inflight = o->max_inflight;
    cv_buf_init(&p->scratch, (size_t)CV_CWP_MAX_LINE * 2);
    cv_buf_init(&p->fixed, (size_t)CV_CWP_MAX_LINE * 3 + 8);
    uv_timer_init(loop, &p->qtimer);
    uv_timer_init(loop, &p->stimer);
    p->qtimer.data = p->stimer.data = p;
    p->handles = 2;
    int rc = pool_workers_start(p);
    if (rc != 0) {
        /* Stop what did start, then free everything once the handles close. */
        p->free_on_done = true;
        p->closing = true;
        pool_stop_workers(p);
        return rc;
    }
    *out = &p->base;
    return 0;
}
