/* Worker processes of a pool (§13.4): spawn with pipes, the hello wait,
 * batched writes to stdin, stdout split into lines, stderr logged by line
 * (tagged, rate-limited), pings, restarts with backoff and the graceful
 * stop. Every per-worker deadline shares one timer (worker_arm). */
#include "gateway/pool.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"

extern char **environ;

/* Log lines per worker per second (its stderr, plus the stdout lines it
 * should not have sent), and the longest stderr line kept. */
#define STDERR_RATE 100
#define STDERR_LINE 4096
/* Bytes asked of the stdout buffer per read. */
#define READ_CHUNK (16 * 1024)

static void stopped(struct worker *w);
static int spawn(struct worker *w);
static void worker_recycle(struct worker *w);

static uint64_t now_ms(const struct worker *w)
{
    return uv_now(w->pool->loop);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct worker *w = h->data;
    if (--w->open_handles == 0)
        stopped(w);
}

static void close_pipe(struct worker *w, uv_pipe_t *pp, bool *open)
{
    if (!*open)
        return;
    *open = false;
    uv_close((uv_handle_t *)pp, on_handle_closed);
    (void)w;
}

/* Ends the current process now: in-flight calls fail with 502
 * WORKER_EXITED, the pipes close, SIGTERM (SIGKILL after kill_ms). A
 * failure delays the respawn by the backoff. */
static void worker_down(struct worker *w, const char *why, bool failure)
{
    struct pool *p = w->pool;
    uint64_t now = now_ms(w);
    if (w->state == W_STOPPING || w->state == W_IDLE)
        return;
    if (failure)
        cv_log_warn("gateway: worker %u (pid %d) %s; restarting it", w->index, w->pid, why);
    w->state = W_STOPPING;
    pool_fail_inflight(w);
    close_pipe(w, &w->in, &w->in_open);
    close_pipe(w, &w->out, &w->out_open);
    if (w->proc_alive) {
        uv_process_kill(&w->proc, SIGTERM);
        w->kill_at = now + p->tm.kill_ms;
    }
    w->term_at = 0;
    w->ping_id = 0;
    w->silence_at = 0;
    w->respawn_at = 0;
    if (failure) {
        if (w->ready_at != 0 && now - w->ready_at >= p->tm.healthy_ms)
            w->backoff_ms = p->tm.backoff_min_ms;
        w->recycle = false;
    }
    worker_arm(w);
}

/* A graceful stop: a shutdown line, then SIGTERM after wait_ms if the
 * process is still there. Calls in flight must have been dealt with. */
static void worker_stop_gracefully(struct worker *w, uint64_t wait_ms, uint64_t grace_ms)
{
    struct pool *p = w->pool;
    if (w->state == W_STOPPING || w->state == W_IDLE)
        return;
    pool_fail_inflight(w);
    if (w->in_open && cv_cwp_put_shutdown(&w->tx, p->proto, w->next_id++, grace_ms) == 0)
        worker_send(w);
    w->state = W_STOPPING;
    w->term_at = now_ms(w) + wait_ms;
    w->ping_id = 0;
    w->silence_at = 0;
    worker_arm(w);
}

void worker_restart(struct worker *w, const char *why)
{
    if (w->state == W_STOPPING || w->state == W_IDLE || w->restart_due)
        return;
    w->restart_due = true;
    w->restart_why = why;
    worker_arm(w);
}

bool worker_can_take(const struct worker *w)
{
    return w->state == W_READY && !w->restart_due && w->ninflight < w->max_in_flight;
}

/* ---- Writing: one write per loop turn ---- */

static void flush(struct worker *w);

static void on_write(uv_write_t *req, int status)
{
    struct worker *w = req->data;
    w->writing = false;
    cv_buf_consume(&w->wbuf, w->wbuf.len);
    if (status < 0) {
        if (status != UV_ECANCELED)
            worker_down(w, status == UV_EPIPE ? "closed its stdin (EPIPE)" : uv_strerror(status),
                        true);
        return;
    }
    if (w->tx.len > 0)
        flush(w);
}

static void flush(struct worker *w)
{
    if (!w->in_open) {
        cv_buf_reset(&w->tx);
        return;
    }
    if (w->writing || w->tx.len == 0)
        return;
    uv_buf_t b = uv_buf_init((char *)cv_buf_head(&w->tx), (unsigned)w->tx.len);
    int n = uv_try_write((uv_stream_t *)&w->in, &b, 1);
    if (n == UV_EAGAIN || n == UV_ENOSYS)
        n = 0;
    if (n < 0) {
        worker_down(w, n == UV_EPIPE ? "closed its stdin (EPIPE)" : uv_strerror(n), true);
        return;
    }
    cv_buf_consume(&w->tx, (size_t)n);
    if (w->tx.len == 0)
        return;
    /* The rest goes out with uv_write from wbuf; tx keeps collecting. */
    struct cv_buf t = w->wbuf;
    w->wbuf = w->tx;
    w->tx = t;
    b = uv_buf_init((char *)cv_buf_head(&w->wbuf), (unsigned)w->wbuf.len);
    w->wreq.data = w;
    int rc = uv_write(&w->wreq, (uv_stream_t *)&w->in, &b, 1, on_write);
    if (rc < 0) {
        cv_buf_consume(&w->wbuf, w->wbuf.len);
        worker_down(w, uv_strerror(rc), true);
        return;
    }
    w->writing = true;
}

/* Lines queued during the I/O callbacks of a loop turn go out in its
 * check phase; lines queued by timers (pings, the queue, respawns) go out
 * in the prepare phase just before the loop would block in poll. */
static void flush_all(struct pool *p)
{
    while (p->flush_list != NULL) {
        struct worker *w = p->flush_list;
        p->flush_list = w->flush_next;
        w->flush_next = NULL;
        w->flush_queued = false;
        flush(w);
    }
    uv_check_stop(&p->flush);
    uv_prepare_stop(&p->flush_prep);
}

static void on_check(uv_check_t *h)
{
    flush_all(h->data);
}

static void on_prepare(uv_prepare_t *h)
{
    flush_all(h->data);
}

void worker_send(struct worker *w)
{
    struct pool *p = w->pool;
    if (w->tx.len + w->wbuf.len > CV_CWP_MAX_LINE) {
        worker_restart(w, "has more than 16 MiB unread on its stdin");
        return;
    }
    if (w->flush_queued)
        return;
    w->flush_queued = true;
    w->flush_next = p->flush_list;
    if (p->flush_list == NULL) {
        uv_check_start(&p->flush, on_check);
        uv_prepare_start(&p->flush_prep, on_prepare);
    }
    p->flush_list = w;
}

/* ---- Reading ---- */

static void on_out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct worker *w = h->data;
    size_t room = w->rx.max - w->rx.len;
    (void)hint;
    if (room > READ_CHUNK)
        room = READ_CHUNK;
    if (room == 0 || cv_buf_reserve(&w->rx, room) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)cv_buf_tail(&w->rx), (unsigned)cv_buf_tailroom(&w->rx));
}

static void split_lines(struct worker *w)
{
    while (w->out_open && w->rx.len > w->rx_scanned) {
        uint8_t *h = cv_buf_head(&w->rx);
        uint8_t *nl = memchr(h + w->rx_scanned, '\n', w->rx.len - w->rx_scanned);
        if (nl == NULL) {
            w->rx_scanned = w->rx.len;
            if (w->rx.len > CV_CWP_MAX_LINE + 1)
                worker_down(w, "sent a line over 16 MiB", true);
            return;
        }
        size_t len = (size_t)(nl - h), l = len;
        if (l > 0 && h[l - 1] == '\r')
            l--;
        w->rx_scanned = 0;
        w->rx_lines++;
        w->last_rx = now_ms(w);
        if (w->state == W_HELLO || w->state == W_READY || w->state == W_DRAIN)
            pool_on_line(w, (char *)h, l);
        cv_buf_consume(&w->rx, len + 1);
    }
}

static void on_out_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct worker *w = s->data;
    (void)buf;
    if (n > 0) {
        cv_buf_commit(&w->rx, (size_t)n);
        split_lines(w);
        return;
    }
    if (n == 0)
        return;
    if (n == UV_ENOBUFS) {
        worker_down(w, "sent a line over 16 MiB", true);
        return;
    }
    if (w->state == W_STOPPING) {
        close_pipe(w, &w->out, &w->out_open);
        return;
    }
    worker_down(w, n == UV_EOF ? "closed its stdout" : uv_strerror((int)n), true);
}

bool worker_log_ok(struct worker *w)
{
    uint64_t now = now_ms(w);
    if (now - w->stderr_window >= 1000) {
        if (w->stderr_dropped > 0)
            cv_log_warn("gateway: worker %u: %u log lines dropped (rate limit)", w->index,
                        w->stderr_dropped);
        w->stderr_window = now;
        w->stderr_lines = 0;
        w->stderr_dropped = 0;
    }
    if (w->stderr_lines >= STDERR_RATE) {
        w->stderr_dropped++;
        return false;
    }
    w->stderr_lines++;
    return true;
}

static void log_stderr(struct worker *w, const char *line, size_t len, bool cut)
{
    if (worker_log_ok(w))
        cv_log_info("worker %u: %.*s%s", w->index, (int)len, line, cut ? " [...]" : "");
}

static void on_err_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct worker *w = h->data;
    (void)hint;
    if (cv_buf_reserve(&w->errline, STDERR_LINE + 1 - w->errline.len) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)cv_buf_tail(&w->errline), (unsigned)cv_buf_tailroom(&w->errline));
}

static void on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct worker *w = s->data;
    (void)buf;
    if (n < 0) {
        if (w->errline.len > 0 && !w->stderr_skip)
            log_stderr(w, (char *)cv_buf_head(&w->errline), w->errline.len, false);
        w->stderr_skip = false;
        cv_buf_reset(&w->errline);
        close_pipe(w, &w->err, &w->err_open);
        return;
    }
    cv_buf_commit(&w->errline, (size_t)n);
    for (;;) {
        char *h = (char *)cv_buf_head(&w->errline);
        char *nl = w->errline.len ? memchr(h, '\n', w->errline.len) : NULL;
        if (nl == NULL) {
            /* A line longer than STDERR_LINE: log its start, drop the rest. */
            if (w->errline.len >= STDERR_LINE) {
                if (!w->stderr_skip)
                    log_stderr(w, h, STDERR_LINE, true);
                w->stderr_skip = true;
                cv_buf_reset(&w->errline);
            }
            return;
        }
        size_t l = (size_t)(nl - h);
        if (!w->stderr_skip)
            log_stderr(w, h, l > 0 && h[l - 1] == '\r' ? l - 1 : l, false);
        w->stderr_skip = false;
        cv_buf_consume(&w->errline, l + 1);
    }
}

/* ---- Process ---- */

static void on_exit_cb(uv_process_t *proc, int64_t status, int sig)
{
    struct worker *w = proc->data;
    w->proc_alive = false;
    if (w->state == W_STOPPING)
        cv_log_debug("gateway: worker %u (pid %d) exited (status %lld, signal %d)", w->index,
                     w->pid, (long long)status, sig);
    else
        cv_log_warn("gateway: worker %u (pid %d) exited (status %lld, signal %d)", w->index, w->pid,
                    (long long)status, sig);
    uv_close((uv_handle_t *)&w->proc, on_handle_closed);
    w->kill_at = w->term_at = 0;
    if (w->state != W_STOPPING)
        worker_down(w, "exited", true);
    /* Gone: nothing more will be written or read on its behalf, except the
     * last stderr lines, which get a moment to drain. */
    close_pipe(w, &w->in, &w->in_open);
    close_pipe(w, &w->out, &w->out_open);
    if (w->err_open)
        w->errclose_at = now_ms(w) + 200;
    worker_arm(w);
}

static void stopped(struct worker *w)
{
    struct pool *p = w->pool;
    w->state = W_IDLE;
    w->kill_at = w->term_at = w->errclose_at = 0;
    w->restart_due = false;
    cv_buf_fini(&w->rx);
    cv_buf_fini(&w->tx);
    cv_buf_fini(&w->wbuf);
    cv_buf_fini(&w->errline);
    if (p->closing) {
        pool_check_shutdown(p);
        return;
    }
    uint64_t delay = 0;
    if (!w->recycle) {
        delay = w->backoff_ms;
        w->backoff_ms =
            w->backoff_ms * 2 > p->tm.backoff_max_ms ? p->tm.backoff_max_ms : w->backoff_ms * 2;
    }
    w->recycle = false;
    w->respawn_at = now_ms(w) + delay;
    if (w->respawn_at == 0)
        w->respawn_at = 1;
    worker_arm(w);
}

static int spawn(struct worker *w)
{
    struct pool *p = w->pool;
    uv_loop_t *loop = p->loop;
    char proto_env[64], index_env[48];
    static const char *const proto_names[] = {"cwp/1", "runner-ipc-v1", "runner-ipc-v2"};

    snprintf(proto_env, sizeof(proto_env), "CULVERT_WORKER_PROTOCOL=%s", proto_names[p->proto]);
    snprintf(index_env, sizeof(index_env), "CULVERT_WORKER_INDEX=%u", w->index);
    size_t nenv = 0;
    while (environ != NULL && environ[nenv] != NULL)
        nenv++;
    char **env = calloc(nenv + 3, sizeof(*env));
    if (env == NULL)
        return CV_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "CULVERT_WORKER_PROTOCOL=", 24) != 0 &&
            strncmp(environ[i], "CULVERT_WORKER_INDEX=", 21) != 0)
            env[k++] = environ[i];
    env[k++] = proto_env;
    env[k++] = index_env;

    /* Per-process state starts fresh; ids restart at 1 (they are per process). */
    w->next_id = 1;
    w->ninflight = 0;
    w->served = 0;
    w->rx_scanned = 0;
    w->rx_lines = 0;
    w->ping_id = 0;
    w->silence_at = 0;
    w->timeouts = 0;
    w->max_in_flight =
        w->pool->max_inflight && w->pool->max_inflight < 64 ? w->pool->max_inflight : 64;
    w->window = 1024 * 1024;
    w->f_cancel = w->f_streams = w->f_auth = false;
    w->ready_at = 0;
    cv_buf_init(&w->rx, CV_CWP_MAX_LINE + 2);
    cv_buf_init(&w->tx, (size_t)CV_CWP_MAX_LINE * 2);
    cv_buf_init(&w->wbuf, (size_t)CV_CWP_MAX_LINE * 2);
    cv_buf_init(&w->errline, STDERR_LINE + 1);

    uv_pipe_init(loop, &w->in, 0);
    uv_pipe_init(loop, &w->out, 0);
    uv_pipe_init(loop, &w->err, 0);
    w->in.data = w->out.data = w->err.data = w->proc.data = w;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&w->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&w->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&w->err;
    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.file = p->argv[0];
    o.args = p->argv;
    o.env = env;
    o.stdio_count = 3;
    o.stdio = stdio;
    o.exit_cb = on_exit_cb;
    int rc = uv_spawn(loop, &w->proc, &o);
    free(env);
    w->open_handles = 4;
    w->in_open = w->out_open = w->err_open = true;
    w->proc.data = w;
    if (rc != 0) {
        cv_log_error("gateway: cannot start worker %u (%s): %s", w->index, p->argv[0],
                     uv_strerror(rc));
        w->state = W_STOPPING;
        w->proc_alive = false;
        uv_close((uv_handle_t *)&w->proc, on_handle_closed);
        close_pipe(w, &w->in, &w->in_open);
        close_pipe(w, &w->out, &w->out_open);
        close_pipe(w, &w->err, &w->err_open);
        return rc;
    }
    w->proc_alive = true;
    w->pid = w->proc.pid;
    uv_read_start((uv_stream_t *)&w->out, on_out_alloc, on_out_read);
    uv_read_start((uv_stream_t *)&w->err, on_err_alloc, on_err_read);
    w->last_rx = now_ms(w);
    cv_log_debug("gateway: worker %u spawned (pid %d)", w->index, w->pid);
    if (p->proto == CV_CWP_PROTO_CWP1) {
        w->state = W_HELLO;
        w->hello_at = now_ms(w) + p->tm.hello_ms;
    } else {
        /* Legacy workers have no hello: ready at spawn. */
        w->state = W_READY;
        w->ready_at = now_ms(w);
        pool_on_ready(p);
    }
    worker_arm(w);
    return 0;
}

/* ---- Timers ---- */

static void due(uint64_t *next, uint64_t t)
{
    if (t != 0 && (*next == 0 || t < *next))
        *next = t;
}

static void on_timer(uv_timer_t *t);

void worker_arm(struct worker *w)
{
    struct pool *p = w->pool;
    uint64_t next = 0, now = now_ms(w);
    if (p->teardown)
        return;
    if (w->restart_due)
        next = now;
    switch (w->state) {
    case W_IDLE: due(&next, w->respawn_at); break;
    case W_HELLO: due(&next, w->hello_at); break;
    case W_READY:
    case W_DRAIN:
        if (w->state == W_DRAIN && w->ninflight == 0 && !p->closing)
            next = now;
        due(&next, w->silence_at);
        if (w->ping_id != 0)
            due(&next, w->ping_at + p->tm.pong_ms);
        else if (p->proto == CV_CWP_PROTO_CWP1)
            due(&next, w->last_rx + p->tm.ping_ms);
        break;
    case W_STOPPING:
        if (w->proc_alive) {
            due(&next, w->term_at);
            due(&next, w->kill_at);
        }
        if (w->err_open)
            due(&next, w->errclose_at);
        break;
    }
    if (next == 0) {
        uv_timer_stop(&w->timer);
        return;
    }
    uv_timer_start(&w->timer, on_timer, next > now ? next - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct pool *p = w->pool;
    uint64_t now = now_ms(w);
    if (w->restart_due) {
        w->restart_due = false;
        worker_down(w, w->restart_why, true);
    }
    switch (w->state) {
    case W_IDLE:
        if (w->respawn_at != 0 && now >= w->respawn_at) {
            w->respawn_at = 0;
            spawn(w);
        }
        break;
    case W_HELLO:
        if (now >= w->hello_at)
            worker_down(w, "sent no hello in time", true);
        break;
    case W_READY:
    case W_DRAIN:
        if (w->state == W_DRAIN && w->ninflight == 0 && !p->closing) {
            worker_recycle(w);
            break;
        }
        if (w->ping_id != 0 && now >= w->ping_at + p->tm.pong_ms) {
            worker_down(w, "did not answer a ping", true);
            break;
        }
        if (w->silence_at != 0 && now >= w->silence_at) {
            if (w->rx_lines == w->silence_mark) {
                worker_down(w, "stayed silent after a timeout", true);
                break;
            }
            w->silence_at = 0;
        }
        if (w->ping_id == 0 && p->proto == CV_CWP_PROTO_CWP1 && now >= w->last_rx + p->tm.ping_ms) {
            if (w->ninflight == 0) {
                w->ping_id = w->next_id++;
                w->ping_at = now;
                if (cv_cwp_put_ping(&w->tx, w->ping_id) == 0)
                    worker_send(w);
            } else {
                /* Busy: its replies are the sign of life; look again later. */
                w->last_rx = now;
            }
        }
        break;
    case W_STOPPING:
        if (w->proc_alive && w->term_at != 0 && now >= w->term_at) {
            w->term_at = 0;
            uv_process_kill(&w->proc, SIGTERM);
            w->kill_at = now + p->tm.kill_ms;
        }
        if (w->proc_alive && w->kill_at != 0 && now >= w->kill_at) {
            w->kill_at = 0;
            cv_log_warn("gateway: worker %u (pid %d) ignored SIGTERM; killing it", w->index,
                        w->pid);
            uv_process_kill(&w->proc, SIGKILL);
        }
        if (w->err_open && w->errclose_at != 0 && now >= w->errclose_at)
            close_pipe(w, &w->err, &w->err_open);
        break;
    }
    worker_arm(w);
}

/* ---- Pool-level ---- */

static uint64_t env_ms(const char *spec, const char *key, uint64_t def)
{
    size_t kl = strlen(key);
    for (const char *s = spec; s != NULL && *s != '\0';) {
        if (strncmp(s, key, kl) == 0 && s[kl] == '=') {
            char *end;
            unsigned long long v = strtoull(s + kl + 1, &end, 10);
            if (end != s + kl + 1 && v > 0)
                return v;
        }
        s = strchr(s, ',');
        if (s != NULL)
            s++;
    }
    return def;
}

int pool_workers_start(struct pool *p)
{
    /* Tuning for tests: CULVERT_GW_POOL_TUNING="hello=ms,ping=ms,pong=ms,
     * silence=ms,kill=ms,backoff=ms,queue=n,maxrequests=n" shortens the
     * §13.4 timings so that every failure path can be tested in seconds
     * (queue and maxrequests override the pool options, which the CLI
     * sets with --queue-max and --max-requests). Unset in production. */
    const char *spec = getenv("CULVERT_GW_POOL_TUNING");
    p->tm.hello_ms = env_ms(spec, "hello", 10000);
    p->tm.ping_ms = env_ms(spec, "ping", 10000);
    p->tm.pong_ms = env_ms(spec, "pong", 5000);
    p->tm.silence_ms = env_ms(spec, "silence", 5000);
    p->tm.kill_ms = env_ms(spec, "kill", 2000);
    p->tm.backoff_min_ms = env_ms(spec, "backoff", 100);
    p->queue_max = (unsigned)env_ms(spec, "queue", p->queue_max);
    p->max_requests = env_ms(spec, "maxrequests", p->max_requests);
    if (spec != NULL)
        cv_log_warn("gateway: CULVERT_GW_POOL_TUNING=%s (test tuning)", spec);
    p->tm.backoff_max_ms = 10000;
    p->tm.healthy_ms = 60000;

    uv_check_init(p->loop, &p->flush);
    uv_prepare_init(p->loop, &p->flush_prep);
    p->flush.data = p->flush_prep.data = p;
    p->handles += 2;
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        w->pool = p;
        w->index = i;
        w->state = W_IDLE;
        w->backoff_ms = p->tm.backoff_min_ms;
        cv_idmap_init(&w->inflight);
        uv_timer_init(p->loop, &w->timer);
        w->timer.data = w;
        p->handles++;
    }
    for (unsigned i = 0; i < p->nworkers; i++) {
        int rc = spawn(&p->workers[i]);
        /* A command that cannot run at all fails the start; later spawn
         * failures are retried with backoff. */
        if (rc != 0)
            return rc;
    }
    return 0;
}

void pool_stop_workers(struct pool *p)
{
    uint64_t wait = p->grace_ms;
    if (wait < 500)
        wait = 500;
    if (wait > 5000)
        wait = 5000;
    p->stopping_workers = true;
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        w->respawn_at = 0;
        worker_stop_gracefully(w, wait, p->grace_ms);
        worker_arm(w);
    }
    pool_check_shutdown(p);
}

/* Recycling (max_requests): called when a draining worker has nothing in flight. */
static void worker_recycle(struct worker *w)
{
    w->recycle = true;
    cv_log_info("gateway: worker %u (pid %d) recycled after %llu requests", w->index, w->pid,
                (unsigned long long)w->served);
    worker_stop_gracefully(w, 2000, 1000);
}

static void on_pool_handle_closed(uv_handle_t *h)
{
    struct pool *p = h->data;
    if (--p->handles > 0)
        return;
    if (p->free_on_done) {
        pool_free_memory(p);
        return;
    }
    if (p->done != NULL && !p->done_called) {
        p->done_called = true;
        p->done(&p->base, p->done_ud);
    }
}

void pool_teardown(struct pool *p)
{
    if (p->teardown)
        return;
    p->teardown = true;
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        if (w->pool == NULL)
            continue;
        w->timer.data = p;
        uv_close((uv_handle_t *)&w->timer, on_pool_handle_closed);
    }
    p->flush.data = p;
    uv_close((uv_handle_t *)&p->flush, on_pool_handle_closed);
    uv_close((uv_handle_t *)&p->flush_prep, on_pool_handle_closed);
    uv_close((uv_handle_t *)&p->qtimer, on_pool_handle_closed);
    uv_close((uv_handle_t *)&p->stimer, on_pool_handle_closed);
}
