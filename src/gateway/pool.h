/* Worker pool internals (src/gateway/pool*.c only).
 *
 * pool.c holds the backend ops, the FIFO queue, dispatch and the reply
 * handling; pool_worker.c the worker processes: spawn, pipes, hello,
 * timers, restarts with backoff and the shutdown sequence. */
#ifndef CV_GW_POOL_H
#define CV_GW_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "codec/cwp.h"
#include "core/buf.h"
#include "core/idmap.h"
#include "gateway/backend.h"

/* Timings (§13.4); tests shorten them through CULVERT_GW_POOL_TUNING. */
struct pool_timing {
    uint64_t hello_ms;   /* first line must be the hello (10 s) */
    uint64_t ping_ms;    /* ping a worker idle this long (10 s) */
    uint64_t pong_ms;    /* ... restart if unanswered (5 s) */
    uint64_t silence_ms; /* after a timeout cancel: restart if silent (5 s) */
    uint64_t kill_ms;    /* SIGTERM to SIGKILL (2 s) */
    uint64_t backoff_min_ms, backoff_max_ms, healthy_ms; /* 100 ms .. 10 s, reset after 60 s */
};

enum wstate {
    W_IDLE,    /* no process (before spawn, or waiting for the respawn backoff) */
    W_HELLO,   /* spawned, waiting for the hello */
    W_READY,   /* dispatching */
    W_DRAIN,   /* recycling or shutting down: no new calls, in-flight ones finish */
    W_STOPPING /* process and pipes are being closed */
};

struct pool;
struct preq;

struct worker {
    struct pool *pool; /* borrowed */
    unsigned index;
    enum wstate state;
    uv_process_t proc;
    uv_pipe_t in, out, err;
    int open_handles; /* of the current process: proc + pipes not yet closed */
    bool proc_alive;  /* exit callback not yet seen */
    bool err_open, out_open, in_open;
    int pid;
    uv_timer_t timer; /* every per-worker deadline, see worker_arm */
    /* Messages. */
    uint64_t next_id;
    struct cv_idmap inflight; /* (uint32)id -> struct preq */
    unsigned ninflight;
    uint64_t served; /* replies since spawn (recycling) */
    /* From the hello (defaults for legacy workers). */
    uint32_t max_in_flight;
    uint64_t window;
    bool f_cancel, f_streams, f_auth;
    /* Pipes. */
    struct cv_buf rx;      /* stdout bytes not yet split into lines */
    size_t rx_scanned;     /* bytes of rx known to hold no '\n' */
    struct cv_buf errline; /* stderr partial line */
    struct cv_buf tx;      /* lines queued for stdin */
    struct cv_buf wbuf;    /* lines being written (uv_write in flight) */
    uv_write_t wreq;
    bool writing;
    bool flush_queued;
    struct worker *flush_next;
    /* Health. */
    uint64_t rx_lines; /* lines received since spawn */
    uint64_t last_rx;  /* loop time of the last line */
    uint64_t ping_id;  /* outstanding ping, 0 if none */
    uint64_t ping_at;
    uint64_t silence_at; /* restart if rx_lines == silence_mark then; 0: off */
    uint64_t silence_mark;
    unsigned timeouts;    /* consecutive timeouts */
    uint64_t hello_at;    /* W_HELLO deadline */
    uint64_t ready_at;    /* when it became ready (backoff reset) */
    uint64_t kill_at;     /* W_STOPPING: SIGKILL then; 0: off */
    uint64_t term_at;     /* graceful stop: SIGTERM then; 0: off */
    uint64_t errclose_at; /* close stderr then (process gone) */
    uint64_t respawn_at;  /* W_IDLE: spawn then; 0: never */
    uint64_t backoff_ms;
    bool restart_due;        /* restart from the timer (not inside a callback) */
    const char *restart_why; /* static */
    bool recycle;            /* respawn at once once stopped (no failure) */
    bool stderr_skip;        /* dropping the rest of an over-long stderr line */
    unsigned stderr_lines;   /* rate limit window count */
    unsigned stderr_dropped;
    uint64_t stderr_window;
};

struct pool {
    struct cv_gw_backend base; /* first: the core sees this */
    uv_loop_t *loop;           /* borrowed */
    char **argv;               /* owned copy */
    enum cv_cwp_proto proto;
    unsigned nworkers;
    uint64_t queue_timeout_ms;
    unsigned queue_max;
    uint64_t max_requests;
    unsigned max_inflight; /* gateway-side cap per worker (0: none) */
    bool auth_warned;
    struct pool_timing tm;
    struct worker *workers; /* owned array */
    unsigned rr;            /* round-robin cursor */
    /* FIFO of calls waiting for a worker. */
    struct preq *qhead, *qtail;
    unsigned qlen;
    uv_timer_t qtimer;
    /* Batched writes: workers with queued lines, flushed once per loop turn. */
    uv_check_t flush;
    uv_prepare_t flush_prep;
    struct worker *flush_list;
    /* The latest hello: the catalog for has/is_parallel/streams. */
    bool hello_seen;
    struct cv_cwp_hello hello;
    /* Scratch for building error objects and decoding data frames; the
     * compact copy of the line being handled; a line with invalid UTF-8
     * repaired (U+FFFD). */
    struct cv_buf scratch;
    char *line; /* owned */
    size_t linecap;
    struct cv_buf fixed;
    uint8_t *dec; /* owned, CV_CWP_MAX_DATA + 4 */
    /* Shutdown. */
    bool closing;
    bool stopping_workers;
    uint64_t grace_ms, drain_until;
    uv_timer_t stimer;
    void (*done)(struct cv_gw_backend *b, void *ud);
    void *done_ud;
    bool done_called;
    bool free_on_done;
    int handles; /* pool-level and worker timers not yet closed */
    bool teardown;
};

/* pool_worker.c */
int pool_workers_start(struct pool *p);
void worker_send(struct worker *w);                     /* lines were appended to w->tx */
void worker_restart(struct worker *w, const char *why); /* deferred to the timer */
void worker_arm(struct worker *w);
void pool_stop_workers(struct pool *p);
void pool_teardown(struct pool *p);
bool worker_can_take(const struct worker *w);
/* Rate limit shared by a worker's stderr lines and its dropped stdout
 * lines: true if one more may be logged now (STDERR_RATE a second). */
bool worker_log_ok(struct worker *w);

/* pool.c */
void pool_on_line(struct worker *w, char *line, size_t len);
void pool_on_ready(struct pool *p);
void pool_fail_inflight(struct worker *w);
void pool_check_shutdown(struct pool *p);
void pool_free_memory(struct pool *p);

#endif
