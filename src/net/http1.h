/* An HTTP/1.1 server on libuv: persistent connections, pipelined requests
 * answered in order, request bodies (Content-Length or chunked) streamed to
 * the handler with pause/resume, Expect: 100-continue, streamed responses
 * (chunked when no Content-Length is given), limits and timeouts.
 *
 * One request per connection is active at a time: the next pipelined head
 * is parsed only once the current response has ended and its body has been
 * read. Heads are parsed with cv_http_parse_request (codec/http.h), chunked
 * bodies with codec/chunked.h.
 *
 * Errors the peer causes are answered by the server itself and close the
 * connection: malformed head or body framing 400, head too large or too
 * many headers 431, body over max_body 413, head not complete within
 * head_timeout_ms 408 (or a silent close, see silent_timeouts).
 *
 * A response that ends before the request body was read (an early reply):
 * at most CV_HTTP1_DISCARD_MAX bytes left are read and dropped and the
 * connection stays; more (or an Expect: 100-continue body never asked for)
 * makes the response say Connection: close, and the connection lingers
 * (shut down writing, drain for up to 2 s, close). */
#ifndef CV_HTTP1_H
#define CV_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec/http.h"

struct cv_http1_server;
struct cv_http1_req;

/* Tunables; cv_http1_opts_init fills the defaults given here. */
struct cv_http1_opts {
    uint64_t max_body;        /* request body bytes (64 MiB); 413 beyond */
    size_t max_head;          /* request head bytes (CV_LIMIT_HTTP_HEAD); 431 beyond */
    uint64_t head_timeout_ms; /* first byte to complete head (CV_LIMIT_HANDSHAKE_MS); 408 */
    uint64_t idle_timeout_ms; /* keep-alive wait for the next request, and the longest
                                 silence while a body is read (60 s) */
    size_t tx_high;           /* response bytes queued: not writable above (1 MiB) */
    size_t tx_low;            /* ... on_drain once back below (256 KiB) */
    size_t tx_max;            /* hard cap on queued response bytes (16 MiB) */
    uint64_t body_timeout_ms; /* longest silence while a body is read (0: idle_timeout_ms) */
    bool silent_timeouts;     /* head or body timeouts close without a 408 (as Node does) */
    bool bare_errors;         /* framing errors get an empty-bodied 400/431/413 (as Node) */
    bool eof_aborts;          /* EOF or half-close before the response ended aborts the
                                 request: on_done(CV_ECLOSED) at once (else the response is
                                 still sent to a half-closed peer) */
    unsigned keep_alive_s;    /* cv_http1_respond_head: "Keep-Alive: timeout=N" on kept
                                 connections (0: none) */
};

/* Body bytes an early reply may leave unread and still keep the connection. */
#define CV_HTTP1_DISCARD_MAX (64 * 1024)

/* Handler callbacks. Every callback gets the request; none runs
 * synchronously inside the API call that could trigger it, except where
 * noted. The handler must not free anything the server owns. */
struct cv_http1_cbs {
    /* A request head arrived (required). The body, if any, is delivered
     * through on_body once this returns, unless the handler paused. The
     * handler answers now or later with cv_http1_respond*. */
    void (*on_request)(struct cv_http1_req *req);
    /* A piece of the request body (borrowed, valid during the call). */
    void (*on_body)(struct cv_http1_req *req, const uint8_t *data, size_t len);
    /* The request body is complete (also called for requests without one). */
    void (*on_end)(struct cv_http1_req *req);
    /* The response queue fell below tx_low after having been above tx_high. */
    void (*on_drain)(struct cv_http1_req *req);
    /* Last call for req (required): status 0 once the response has ended
     * (queued whole; a request body left unread makes the connection close
     * after the response), else why the request was cut short
     * (CV_ECLOSED: peer gone or server closing, CV_ETOOBIG: body over the
     * limit, CV_EPROTO: bad body framing, CV_ETIMEDOUT: body stalled for
     * idle_timeout_ms). req is invalid after this returns. Called
     * synchronously from cv_http1_server_close for active requests. A
     * handler that never ends its response keeps the connection (no
     * deadline applies while the server waits for the handler). */
    void (*on_done)(struct cv_http1_req *req, int status);
};

/* One response header; name and value must not contain CR, LF or NUL. */
struct cv_http1_header {
    const char *name;  /* borrowed */
    const char *value; /* borrowed */
};

void cv_http1_opts_init(struct cv_http1_opts *o);

/* Listens on host:port (numeric host; port 0: ephemeral). cbs is copied;
 * data is borrowed and returned by cv_http1_server_data. Returns 0,
 * CV_EINVAL (bad host, missing callback), CV_ENOMEM or a libuv error (e.g.
 * UV_EADDRINUSE); on error nothing is left running. */
int cv_http1_server_start(uv_loop_t *loop, const char *host, uint16_t port,
                          const struct cv_http1_cbs *cbs, void *data, struct cv_http1_server **out);
/* Replaces the options (copied); applies to connections accepted later.
 * Returns 0 or CV_EINVAL (a zero limit or timeout, tx_low > tx_high). */
int cv_http1_server_set_opts(struct cv_http1_server *srv, const struct cv_http1_opts *o);
uint16_t cv_http1_server_port(const struct cv_http1_server *srv);
void *cv_http1_server_data(const struct cv_http1_server *srv);
/* Stops accepting; open connections carry on (graceful drain). A later
 * cv_http1_server_close still closes them and frees srv. */
void cv_http1_server_unlisten(struct cv_http1_server *srv);
/* Stops listening and closes every connection; active requests get on_done
 * with CV_ECLOSED synchronously. srv is freed asynchronously. NULL-safe. */
void cv_http1_server_close(struct cv_http1_server *srv);

/* The parsed head: slices stay valid until on_done. */
const struct cv_http_head *cv_http1_req_head(const struct cv_http1_req *req);
/* Path without the query, and the query after '?' ("" if none); both
 * borrowed, NUL-terminated, percent-escapes kept. */
const char *cv_http1_req_path(const struct cv_http1_req *req);
const char *cv_http1_req_query(const struct cv_http1_req *req);
const char *cv_http1_req_peer(const struct cv_http1_req *req);
bool cv_http1_req_is_method(const struct cv_http1_req *req, const char *method);
struct cv_http1_server *cv_http1_req_server(const struct cv_http1_req *req);
/* A per-request pointer for the handler (borrowed). */
void cv_http1_req_set_data(struct cv_http1_req *req, void *data);
void *cv_http1_req_data(const struct cv_http1_req *req);

/* Stops and restarts delivery of the body (backpressure). While paused the
 * connection is not read. Resume delivers buffered bytes from the next loop
 * iteration, not synchronously. A request with Expect: 100-continue gets its
 * "100 Continue" when body delivery first starts unpaused, unless a final
 * response has begun. */
void cv_http1_req_pause(struct cv_http1_req *req);
void cv_http1_req_resume(struct cv_http1_req *req);

/* Starts the response: status line and the given headers. With a
 * Content-Length header the body must be exactly that long; without one it
 * is sent chunked (HTTP/1.1) or delimited by closing the connection
 * (HTTP/1.0). Returns 0, CV_EINVAL (already started, bad status or header
 * text) or CV_ECLOSED (the connection is gone: on_done follows or ran). */
int cv_http1_respond_start(struct cv_http1_req *req, int status,
                           const struct cv_http1_header *headers, size_t nheaders);
/* Queues body bytes (copied). Nothing is sent for HEAD requests, 1xx, 204
 * and 304. Returns 0, CV_EINVAL (not started, ended, or beyond the declared
 * Content-Length), CV_ETOOBIG (over tx_max: the caller should have waited
 * for on_drain) or CV_ECLOSED. */
int cv_http1_respond_write(struct cv_http1_req *req, const void *data, size_t len);
/* Ends the response. Returns 0, CV_EINVAL (not started or already ended; or
 * fewer bytes than the declared Content-Length: the connection is then
 * closed after what was queued) or CV_ECLOSED. If the request body was not
 * read to its end, the early-reply rule (top of this file) applies. */
int cv_http1_respond_end(struct cv_http1_req *req);
/* Ends a response started without Content-Length early: no final chunk,
 * and the connection closes once what was queued is sent, so the client
 * sees a truncated body. Returns 0, CV_EINVAL (not started or ended) or
 * CV_ECLOSED. */
int cv_http1_respond_abort(struct cv_http1_req *req);
/* Starts a response from a preformatted header block, with the status text
 * Node would send (e.g. "Payload Too Large", "unknown" for unnamed codes).
 * Each line of the block is "Name: value\r\n", written as given (the
 * caller controls names, casing and order and must have validated them).
 * The server appends, in this
 * order, "Date" (cached per second), "Connection: keep-alive|close",
 * "Keep-Alive: timeout=N" (kept connections, opts.keep_alive_s) and, when
 * content_length < 0 on HTTP/1.1, "Transfer-Encoding: chunked". A
 * content_length >= 0 must also be in block (as content-length). With
 * content_length > 0 the head is held until the first body write, so both
 * go out in one write. Returns as cv_http1_respond_start. */
int cv_http1_respond_head(struct cv_http1_req *req, int status, const char *block, size_t len,
                          int64_t content_length);
/* The handler will not read the rest of the body: it is dropped as it
 * arrives (no more on_body/on_end) and the early-reply rule above applies
 * to the response. Call before starting the response so that its
 * Connection header tells the truth. */
void cv_http1_req_discard_body(struct cv_http1_req *req);
/* True once the whole request body has been received (or there is none). */
bool cv_http1_req_body_done(const struct cv_http1_req *req);

/* A whole response with Content-Type ctype (NULL: none) and
 * Content-Length. Returns as cv_http1_respond_start/_write/_end. */
int cv_http1_respond(struct cv_http1_req *req, int status, const char *ctype, const void *body,
                     size_t len);
/* False while the queued response is above tx_high (wait for on_drain). */
bool cv_http1_req_is_writable(const struct cv_http1_req *req);

#endif
