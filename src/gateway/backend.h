/* The gateway core <-> backend contract (private to src/gateway/).
 *
 * The core (gateway.c) owns the HTTP side: routing, the §3 check order,
 * auth, CORS, request ids, body framing and modes, envelopes and
 * sanitisation, deadlines. Once a call is admitted it hands a cv_gw_call
 * to a backend: the native handler table (native.c) or a worker pool
 * (pool.c). The backend answers through the cv_gw_req_* functions,
 * exactly once, unless the core cancels the call first.
 *
 * Ownership: a struct cv_gw_req lives from ops->start until either the
 * backend finishes it (cv_gw_req_result / _error / _stream_end) or the
 * core calls ops->cancel. After either, the backend must not touch it.
 * All calls happen on the gateway's loop; none of the cv_gw_req_*
 * functions calls back into the backend synchronously, except
 * cv_gw_req_stream_write may call ops->out_ack. */
#ifndef CV_GW_BACKEND_H
#define CV_GW_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cv_gw_req;
struct cv_gw_backend;

/* CV_GW_AUTH: delegated auth (§5.1, cwp/1 "auth"): the call carries the
 * request id, the context (auth header included) and, as id, the task or
 * event asked for ("" for discovery). The backend admits with
 * cv_gw_req_result and rejects with cv_gw_req_error / _fail (any status:
 * the client gets 401). */
enum cv_gw_kind { CV_GW_TASK = 0, CV_GW_EVENT = 1, CV_GW_AUTH = 2 };
enum cv_gw_mode { CV_GW_MODE_JSON = 0, CV_GW_MODE_MULTIPART = 1, CV_GW_MODE_OCTET = 2 };
enum cv_gw_cancel_reason {
    CV_GW_CANCEL_CLIENT = 0,  /* "client-closed" */
    CV_GW_CANCEL_TIMEOUT = 1, /* "timeout" (the core answers 504 TASK_TIMEOUT itself) */
    CV_GW_CANCEL_SHUTDOWN = 2 /* "shutdown" */
};
const char *cv_gw_cancel_name(enum cv_gw_cancel_reason r);

/* What the core tells a backend. Everything is borrowed and valid until
 * the req is finished or cancelled. JSON texts are compact (codec/rjson.h)
 * and never NULL. */
struct cv_gw_call {
    enum cv_gw_kind kind;
    enum cv_gw_mode mode;
    const char *id;        /* task or event id (decoded) */
    const char *rid;       /* request id */
    /* Task, JSON mode: the §8.2 selection, or CV_RJ_UNDEFINED; with
     * input_is_body the whole (graph) body, to go out as cwp "body".
     * Event: the payload member or CV_RJ_UNDEFINED. Multipart: the
     * manifest's input (sentinels in place). Octet: CV_RJ_UNDEFINED. */
    const char *input;
    size_t input_len;
    bool input_is_body;
    bool return_payload;   /* events */
    /* The cwp/1 context object (§13.4): {"method","path","query","headers",
     * "requestId","remote"[,"runnerContext"]}, auth header left out. */
    const char *context;
    size_t context_len;
    const char *runner_context; /* raw x-runner-context value, or NULL */
    uint64_t deadline_ms;  /* what is left of the deadline at start */
};

struct cv_gw_backend_ops {
    /* Step 7: does this backend serve kind/id? */
    bool (*has)(struct cv_gw_backend *b, enum cv_gw_kind kind, const char *id);
    /* Step 9: is id a parallel event (returnPayload refused)? */
    bool (*is_parallel)(struct cv_gw_backend *b, const char *id);
    /* Multipart and octet calls supported (else the core answers 415)? */
    bool (*streams)(struct cv_gw_backend *b);
    /* Starts a call. Returns 0 (the backend now owns answering req) or a
     * negative code; on failure the core answers 503 WORKER_UNAVAILABLE. */
    int (*start)(struct cv_gw_backend *b, struct cv_gw_req *req, const struct cv_gw_call *call);
    /* Request streams, after a successful start: stream is "body" (octet)
     * or a file id (multipart). file_open carries the merged metadata
     * object (§8.3) as compact JSON. The backend calls
     * cv_gw_req_consumed as it releases the bytes. error_json NULL: clean
     * end; else an error object: the stream is truncated. */
    void (*file_open)(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                      const char *meta_json, size_t meta_len);
    void (*stream_data)(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                        const uint8_t *p, size_t n);
    void (*stream_end)(struct cv_gw_backend *b, struct cv_gw_req *req, const char *stream,
                       const char *error_json);
    /* n bytes of the response stream reached the socket (flow control). */
    void (*out_ack)(struct cv_gw_backend *b, struct cv_gw_req *req, size_t n);
    /* The core ends the call without wanting a reply. req is invalid
     * after this returns. */
    void (*cancel)(struct cv_gw_backend *b, struct cv_gw_req *req, enum cv_gw_cancel_reason why);
    /* Graceful shutdown: stop taking calls, let in-flight ones finish
     * within grace_ms, stop the processes, then call done (never
     * synchronously). */
    void (*shutdown)(struct cv_gw_backend *b, uint64_t grace_ms,
                     void (*done)(struct cv_gw_backend *b, void *ud), void *ud);
    /* Frees the backend (after shutdown's done). */
    void (*free)(struct cv_gw_backend *b);
};

struct cv_gw_backend {
    const struct cv_gw_backend_ops *ops;
};

/* ---- Backend -> core ---- */

/* Success. json: the result (task) or final payload (event with
 * returnPayload) in tree format, copied; NULL: undefined. */
void cv_gw_req_result(struct cv_gw_req *req, const char *json, size_t len);
/* Failure with a status and an error object {"message","code",...}
 * (compact JSON, copied). The core applies §4.2 sanitisation. */
void cv_gw_req_error(struct cv_gw_req *req, int status, const char *error_json, size_t len);
/* Failure from a fixed code and message (e.g. 502 WORKER_EXITED). */
void cv_gw_req_fail(struct cv_gw_req *req, int status, const char *code, const char *message);
/* A streamed response (§8.5): headers are name/value pairs (blocked
 * names dropped by the core). Returns 0 or CV_EINVAL (not a task, or
 * already answered). */
int cv_gw_req_stream_start(struct cv_gw_req *req, int status, const char *content_type,
                           const char *const *headers, size_t nheaders);
/* Queues response bytes (copied); ops->out_ack follows once they are
 * written. Returns 0 or CV_ECLOSED. */
int cv_gw_req_stream_write(struct cv_gw_req *req, const uint8_t *p, size_t n);
/* Ends the streamed response; truncate: close without the last chunk. */
void cv_gw_req_stream_end(struct cv_gw_req *req, bool truncate);
/* The backend released n bytes of a request stream (the core may read more). */
void cv_gw_req_consumed(struct cv_gw_req *req, size_t n);
const char *cv_gw_req_rid(const struct cv_gw_req *req);
void cv_gw_req_set_data(struct cv_gw_req *req, void *data);
void *cv_gw_req_data(const struct cv_gw_req *req);

/* ---- Pools (pool.c) ---- */
struct cv_gateway_pool_opts;
struct uv_loop_s;
/* Creates a pool backend and spawns its workers. Returns 0 or a negative code. */
int cv_gw_pool_new(struct uv_loop_s *loop, const struct cv_gateway_pool_opts *o,
                   struct cv_gw_backend **out);

#endif
