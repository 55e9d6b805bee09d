/* Public API of the culvert gateway (libculvert): an HTTP/1.1 server for
 * the BlueLibs Runner tunnel HTTP protocol v1.0 (specs/runner-http.md).
 * Tasks and events are served by native C handlers registered here, or by
 * pools of worker processes speaking the line protocol (§13).
 *
 * Everything runs on the caller's libuv loop; no function is thread-safe.
 * A handler gets a call object and answers it now or later (on the same
 * loop) with exactly one of cv_gw_reply / cv_gw_fail / cv_gw_fail_typed /
 * cv_gw_stream_start..end; if the client goes away or the deadline passes
 * first, the cancel callback runs and the call object is invalid after it.
 * See examples/gateway_native.c. */
#ifndef CULVERT_GATEWAY_H
#define CULVERT_GATEWAY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cv_gateway;
struct cv_gw_ctx; /* one native task or event call */

/* CORS (§5.5). Defaults (all zero/NULL, max_age -1): ACAO "*" on every
 * response under base, preflights allow "POST, GET, OPTIONS" and echo
 * Access-Control-Request-Headers. */
struct cv_gateway_cors {
    const char *origin;          /* one fixed origin (may be "*"); NULL: "*" unless
                                  * credentials or a list/regex is set */
    bool credentials;            /* Access-Control-Allow-Credentials: true; with no
                                  * origin at all: no ACAO, Vary: Origin (fail-safe) */
    const char *exposed_headers; /* comma list; NULL: none */
    int max_age;                 /* seconds; < 0: none */
    /* Dynamic origins: the request's Origin is echoed if it is in origins
     * or matches origin_regex (POSIX ERE, unanchored unless written with
     * ^...$), else no ACAO; Vary: Origin is added. Exclusive with origin. */
    const char *const *origins;
    size_t norigins;
    const char *origin_regex;
    const char *methods;         /* comma list replacing "POST, GET, OPTIONS"; NULL: default */
    const char *allowed_headers; /* comma list replacing the echo; NULL: echo */
    bool no_vary;                /* never send Vary: Origin (vary_origin=false) */
};

/* Settings for one task or event id (cv_gateway_opts.ids). */
struct cv_gateway_id_opts {
    const char *id;
    uint64_t deadline_ms;  /* 0: the gateway's deadline_ms */
    bool no_async_context; /* drop x-runner-context for this id (allow_async_context=false) */
};

struct cv_gateway_opts {
    const char *host;          /* numeric; default "127.0.0.1" */
    uint16_t port;             /* default 7070; 0: ephemeral */
    const char *base_path;     /* default "/__runner" */
    const char *const *tokens; /* accepted tokens (rotation); none: see allow_anonymous */
    size_t ntokens;
    const char *auth_header;   /* default "x-runner-token" */
    bool allow_anonymous;      /* no tokens: serve anyway (else 500 AUTH_NOT_CONFIGURED) */
    const char *const *allow_tasks;  /* the allow-list, in config order */
    size_t nallow_tasks;
    const char *const *allow_events;
    size_t nallow_events;
    struct cv_gateway_cors cors;
    bool discovery_disabled;
    uint64_t deadline_ms;      /* per call, admission to response head; default 30000 */
    uint64_t max_json_body;    /* default 2 MiB */
    uint64_t max_octet_body;   /* default 0: unlimited */
    uint64_t stream_idle_ms;   /* a streamed response silent this long is cut (60000) */
    /* Per-id settings (§5.3, §11), for tasks and events alike. */
    const struct cv_gateway_id_opts *ids;
    size_t nids;
    /* Multipart limits (§8.3), merged per key with the defaults (0: the
     * default): file size 20 MiB, 10 files, 100 fields, field size 1 MiB
     * (covers the manifest), parts unlimited. */
    uint64_t mp_file_size;
    uint32_t mp_files;
    uint32_t mp_fields;
    uint64_t mp_field_size;
    uint32_t mp_parts;
    /* Where multipart file parts that come before the manifest are spooled
     * past 256 KiB per request (unnamed temporary files); NULL: $TMPDIR,
     * else /tmp. Checked at start (CV_EINVAL if no file can be made). */
    const char *spool_dir;
};
void cv_gateway_opts_init(struct cv_gateway_opts *o);

/* Starts listening. Copies everything in opts. Returns 0, CV_EINVAL (bad
 * option, with a log line saying which) or a libuv error. */
int cv_gateway_start(uv_loop_t *loop, const struct cv_gateway_opts *opts, struct cv_gateway **out);
uint16_t cv_gateway_port(const struct cv_gateway *gw);
/* Stops accepting; calls in flight get grace_ms to finish, then are
 * cancelled (reason shutdown); worker pools are shut down; done runs once
 * everything is closed (never synchronously). */
void cv_gateway_stop(struct cv_gateway *gw, uint64_t grace_ms,
                     void (*done)(struct cv_gateway *gw, void *ud), void *ud);

/* ---- Native handlers ---- */
typedef void (*cv_gw_handler)(struct cv_gw_ctx *c, void *ud);

/* Registers a task or event handler for id (ids must also be on the
 * allow-list to be reachable). A parallel event refuses returnPayload
 * (§10). Returns 0, CV_EINVAL (duplicate id) or CV_ENOMEM. */
int cv_gateway_add_task(struct cv_gateway *gw, const char *id, cv_gw_handler fn, void *ud);
int cv_gateway_add_event(struct cv_gateway *gw, const char *id, cv_gw_handler fn, void *ud,
                         bool parallel);

/* Delegated auth (§5.1): fn is asked for every task, event and discovery
 * call whose auth header matched no token (also when no token is
 * configured). It admits with cv_gw_reply(c, NULL) and rejects with
 * cv_gw_fail (whatever the status, the client gets 401 UNAUTHORIZED);
 * no answer within 5 s rejects too (fail-closed). It reads the request
 * with cv_gw_header (the auth header included); cv_gw_id gives the task
 * or event id asked for ("" for discovery); the input is undefined. The
 * request body is not read until fn admits. One auth provider per
 * gateway (this or a pool with auth set). Returns 0, CV_EINVAL or
 * CV_ENOMEM. */
int cv_gateway_set_auth(struct cv_gateway *gw, cv_gw_handler fn, void *ud);

/* The decoded input (task) or payload (event), in the wire-form tree
 * described in codec/rjson.h; an absent input is the Undefined record.
 * Borrowed, valid until the call ends. NULL for octet-stream calls. */
const json_t *cv_gw_input(const struct cv_gw_ctx *c);
bool cv_gw_is_event(const struct cv_gw_ctx *c);
bool cv_gw_return_payload(const struct cv_gw_ctx *c);
const char *cv_gw_id(const struct cv_gw_ctx *c);
const char *cv_gw_request_id(const struct cv_gw_ctx *c);
/* A request header (lowercase name), NULL if absent or repeated. */
const char *cv_gw_header(const struct cv_gw_ctx *c, const char *name);
/* The raw x-runner-context value, NULL if absent. */
const char *cv_gw_runner_context(const struct cv_gw_ctx *c);
void cv_gw_set_data(struct cv_gw_ctx *c, void *data);
void *cv_gw_data(const struct cv_gw_ctx *c);

/* Called once if the call ends before the handler answered (client gone,
 * deadline, shutdown). c is invalid after it returns. */
void cv_gw_on_cancel(struct cv_gw_ctx *c, void (*fn)(struct cv_gw_ctx *c, void *ud), void *ud);

/* Answers with {"ok":true,"result":R} (steals result; NULL: undefined).
 * For events: the payload when returnPayload was asked, else ignored.
 * Returns 0 or CV_EINVAL (a stream was started). After an answer the call
 * object is freed: answering twice is a use after free. */
int cv_gw_reply(struct cv_gw_ctx *c, json_t *result);
/* Answers with an error envelope; status 400..599, code a string. A 500's
 * message is replaced by "Internal Error" (§4.2). */
int cv_gw_fail(struct cv_gw_ctx *c, int status, const char *code, const char *message);
/* A typed error (§4.2): status = http_code if 100..599 else 500; body
 * {"message":M,"code":"INTERNAL_ERROR","id":error_id,"data":data,"httpCode":H}.
 * message NULL: the JSON of data. Steals data. */
int cv_gw_fail_typed(struct cv_gw_ctx *c, int http_code, const char *error_id,
                     const char *message, json_t *data);

/* Octet-stream request bodies (§8.4): delivered through on_data, then
 * on_end; the handler may answer (reply or stream) before the body ends
 * (duplex). Set in the handler before returning. */
void cv_gw_on_body(struct cv_gw_ctx *c, void (*on_data)(struct cv_gw_ctx *c, const uint8_t *p,
                                                        size_t n, void *ud),
                   void (*on_end)(struct cv_gw_ctx *c, void *ud), void *ud);

/* Multipart file streams (§8.3): on_open once per file part (file_id is
 * the sentinel's id; meta the merged metadata object, borrowed), then its
 * bytes, then on_end (error: the part failed or was cut short). The task
 * starts once the manifest decodes, so files arrive while it runs. */
void cv_gw_on_files(struct cv_gw_ctx *c,
                    void (*on_open)(struct cv_gw_ctx *c, const char *file_id, const json_t *meta,
                                    void *ud),
                    void (*on_data)(struct cv_gw_ctx *c, const char *file_id, const uint8_t *p,
                                    size_t n, void *ud),
                    void (*on_end)(struct cv_gw_ctx *c, const char *file_id, bool error, void *ud),
                    void *ud);

/* Streamed responses (tasks only, §8.5): status (200 if 0), content type
 * (NULL: application/octet-stream), extra headers as name/value pairs
 * (blocked names dropped). write copies the bytes (always taken) and
 * returns CV_EAGAIN when the client is slow: wait for on_drain before
 * writing more. end(c, false) finishes; end(c, true) truncates (closes
 * without the last chunk). The call object is invalid after end. */
int cv_gw_stream_start(struct cv_gw_ctx *c, int status, const char *content_type,
                       const char *const *headers, size_t nheaders);
int cv_gw_stream_write(struct cv_gw_ctx *c, const void *p, size_t n);
void cv_gw_on_drain(struct cv_gw_ctx *c, void (*fn)(struct cv_gw_ctx *c, void *ud), void *ud);
int cv_gw_stream_end(struct cv_gw_ctx *c, bool truncate);

/* ---- Worker pools (§13) ---- */
enum cv_gw_worker_protocol { CV_GW_CWP1 = 0, CV_GW_RUNNER_IPC_V1 = 1, CV_GW_RUNNER_IPC_V2 = 2 };

struct cv_gateway_pool_opts {
    const char *const *argv;   /* command and arguments (argv[0] looked up in PATH) */
    unsigned workers;          /* default: number of CPUs */
    enum cv_gw_worker_protocol protocol;
    uint64_t queue_timeout_ms; /* default 5000 */
    unsigned queue_max;        /* default 1024 */
    uint64_t max_requests;     /* recycle a worker after this many (0: never) */
    unsigned max_inflight;     /* calls per worker at most (0: the worker's maxInFlight);
                                * the lower of this and the hello's applies */
    bool auth;                 /* delegated auth (§5.1): ask this pool's workers (cwp/1
                                * feature "auth", or runner-ipc-v2) when no token matched;
                                * workers without it reject (fail-closed) */
};
void cv_gateway_pool_opts_init(struct cv_gateway_pool_opts *o);
/* Adds a pool serving every allow-listed id no native handler serves (or
 * the ids its hello lists). Spawns the workers at once. Returns 0,
 * CV_EINVAL or a libuv error. */
int cv_gateway_add_pool(struct cv_gateway *gw, const struct cv_gateway_pool_opts *o);

#endif
