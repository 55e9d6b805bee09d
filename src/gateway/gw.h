/* The gateway core's own structures, shared by gateway.c and upload.c. */
#ifndef CV_GW_GW_H
#define CV_GW_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec/multipart.h"
#include "core/buf.h"
#include "gateway/internal.h"

struct cv_http1_server;
struct cv_http1_req;
struct cv_http1_cbs;

/* Largest request head (§6: at least 16 KiB). */
#define GW_HEAD_MAX (32 * 1024)
/* Request-stream bytes a backend may hold unconsumed before the HTTP body
 * is paused (per call). */
#define GW_INFLIGHT_MAX (1024 * 1024)
/* Multipart file parts that come before the manifest (upload.c): bytes
 * kept in memory per request (across its parts), the rest is spooled to
 * a temporary file; read back in chunks of GW_SPOOL_CHUNK, at most
 * GW_INFLIGHT_MAX per request and loop turn. */
#define GW_SPOOL_MEM_MAX (256 * 1024)
#define GW_SPOOL_CHUNK (64 * 1024)
/* Once streaming, a response silent this long is truncated (§11). */
#define GW_STREAM_IDLE_MS 60000
#define GW_MAX_POOLS 8
#define GW_RID_MAX 132
/* A graph event body, resolved into a tree, at most (the worker line limit). */
#define GW_GRAPH_MAX (16u * 1024 * 1024)

enum { GW_DL = 0, GW_IDLE = 1, GW_GRACE = 2, GW_AUTHQ = 3, GW_NTIMERS = 4 };

struct gw_link {
    struct cv_gw_req *prev, *next;
};

struct gw_list {
    struct cv_gw_req *head, *tail;
};

struct gw_hcopy {
    struct gw_hcopy *next;
    char *name, *value;
    char buf[];
};

struct gw_upload;

/* Calls sharing one deadline length wait in one FIFO list, so admission
 * order is expiry order within it; one timer serves every class. Class 0
 * is the gateway's deadline, class 1 delegated auth, then one per distinct
 * per-id deadline. */
#define GW_DL_AUTH 1
#define GW_AUTH_TIMEOUT_MS 5000
struct gw_dlclass {
    uint64_t ms;
    struct gw_list list;
};

/* Per-id settings (cv_gateway_opts.ids). */
struct gw_idopt {
    char *id; /* owned */
    unsigned dl_class;
    bool no_ctx;
};

struct cv_gw_req {
    struct cv_gateway *gw;
    struct cv_http1_req *h;   /* borrowed; NULL once the HTTP request is over */
    struct cv_gw_backend *be; /* borrowed */
    void *data;               /* the backend's */
    struct cv_gw_call call;
    bool started;   /* ops->start accepted it (or is running) */
    bool finished;  /* the backend answered or was cancelled */
    bool answered;  /* the final response went out (or is held, see upload.c) */
    bool streaming; /* a streamed response head went out */
    bool paused;    /* the HTTP body is paused for flow control */
    bool in[2];
    uint64_t due[2];
    struct gw_link link[2];
    uint64_t inflight; /* request-stream bytes not yet consumed by the backend */
    uint64_t octet_seen;
    size_t ack_owed;    /* response stream bytes queued, not acked yet */
    struct cv_buf body; /* JSON body (owned) */
    struct cv_buf held; /* a final envelope held until the multipart body ends */
    int held_status;
    bool holding;
    bool authing;       /* waiting for delegated auth (be is the auth backend) */
    bool auth_end_seen; /* on_end came while authing (an empty body) */
    bool auth_queued, auth_ok;
    bool no_ctx;              /* per-id allow_async_context=false: x-runner-context dropped */
    unsigned dl_class;        /* deadline class (gw->dls) */
    int route;                /* the route (codec/gwroute.h), kept while authing */
    char *context;            /* owned */
    char *runner_ctx;         /* owned: x-runner-context when present once */
    struct gw_hcopy *hcopies; /* owned */
    struct gw_upload *up;     /* owned: multipart state */
    char rid[GW_RID_MAX];
    char id[];
};

struct cv_gateway {
    uv_loop_t *loop;             /* borrowed */
    struct cv_http1_server *srv; /* owned */
    char *base;                  /* normalised base path */
    char **tokens;               /* owned copies, wiped when freed */
    size_t *token_lens;
    size_t ntokens;
    char *auth_header;
    bool allow_anonymous, discovery_disabled;
    char **tasks, **events;
    size_t ntasks, nevents;
    /* CORS header lines (§5.5), built at start. With a fixed origin
     * cors_actual holds every line of a non-preflight response and pre_a
     * the origin and methods lines of a preflight; with dynamic origins
     * (cors_dyn: a list or a regex) the origin lines are made per request
     * (Vary, then ACAO if Origin matches) and these hold the rest. pre_a
     * ends with the configured Allow-Headers line if any (cors_echo
     * false); pre_b follows the echoed one. */
    char *cors_actual, *pre_a, *pre_b;
    size_t cors_actual_len, pre_a_len, pre_b_len;
    bool cors_dyn, cors_vary, cors_echo;
    char **cors_origins;
    size_t cors_norigins;
    void *cors_re; /* owned regex_t, or NULL */
    char *discovery;
    size_t discovery_len;
    uint64_t deadline_ms, max_json, max_octet, stream_idle_ms;
    struct cv_gw_native *native;
    struct cv_gw_backend *pools[GW_MAX_POOLS];
    size_t npools;
    uint64_t rng[4];
    char *route_buf;
    size_t route_cap;
    struct cv_buf out, head; /* scratch for response bodies and heads */
    struct gw_list lists[2]; /* lists[GW_DL] unused: see dls */
    struct gw_dlclass *dls;
    size_t ndls;
    struct gw_idopt *ids;
    size_t nids;
    struct cv_gw_backend *auth_be; /* delegated auth (borrowed pool), or NULL */
    struct cv_mp_limits mp;        /* multipart limits (§8.3) */
    char *spool_dir;               /* owned: where early file parts are spooled */
    /* Uploads whose replay of early parts goes on next loop turn, from an
     * idle handle (upload.c): a zero timer restarted in its own callback
     * would run again before any I/O (libuv < 1.45). */
    struct gw_upload *replayq, *replayq_tail;
    uv_idle_t replay_idle;
    uv_timer_t timers[GW_NTIMERS];
    struct gw_list authq; /* auth verdicts to act on (linked by link[GW_DL]) */
    size_t ncalls;
    bool stopping, server_closed;
    size_t shutdowns_pending;
    int closing_timers;
    void (*done)(struct cv_gateway *gw, void *ud);
    void *done_ud;
};

/* gateway.c */
extern const struct cv_http1_cbs gw_http_cbs;
bool gw_token_ok(const char *s); /* an HTTP token (header name) */
bool gw_value_ok(const char *s); /* no CR or LF */
void gw_start(struct cv_gw_req *r);
void gw_answer(struct cv_gw_req *r, int status, const void *body, size_t len);
void gw_fail_call(struct cv_gw_req *r, int status, const char *code, const char *msg);
void gw_stream_in(struct cv_gw_req *r, const char *stream, const uint8_t *p, size_t n);

/* lifecycle.c: called as calls end (finishes a graceful stop) */
void gw_maybe_stopped(struct cv_gateway *gw);

/* upload.c: multipart mode (§8.3) */
void gw_upload_begin(struct cv_gw_req *r, const char *ctype, size_t len);
void gw_upload_data(struct cv_gw_req *r, const uint8_t *p, size_t n);
void gw_upload_end(struct cv_gw_req *r);
/* While the multipart body is still arriving, keeps the final envelope
 * (a late multipart failure replaces it). Returns true if held. */
bool gw_upload_hold(struct cv_gw_req *r, int status, const void *body, size_t len);
/* The call is over (deadline): stop parsing. */
void gw_upload_abort(struct cv_gw_req *r);
/* The backend consumed request-stream bytes: a replay of early parts
 * waiting for room goes on (from the loop, never synchronously). */
void gw_upload_consumed(struct cv_gw_req *r);
void gw_upload_free(struct cv_gw_req *r);

#endif
