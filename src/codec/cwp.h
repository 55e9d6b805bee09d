/* The worker line protocol (specs/runner-http.md §13): cwp/1 and the
 * legacy Runner IPC v1/v2 formats. Pure: no I/O.
 *
 * Parsing (worker -> gateway): cv_cwp_parse takes one line (without its
 * '\n'), checks it is exactly one JSON object (strict RFC 8259 syntax,
 * valid UTF-8, depth <= CV_CWP_MAX_DEPTH), writes its compact form (the
 * whitespace between tokens dropped, every other byte unchanged) and
 * classifies it. Values the gateway forwards (a reply's result and error,
 * a stream reply's headers, a frame's meta) are slices of that compact
 * text, so a result reaches the client byte for byte, numbers included.
 *
 * Building (gateway -> worker): the cv_cwp_put_* functions append one
 * complete line (with '\n') to a cv_buf. JSON texts they are given (input,
 * payload, body, context, meta, error) must already be compact JSON
 * (codec/rjson.h) and are copied verbatim; plain strings (ids, names) are
 * escaped. On CV_ETOOBIG or CV_ENOMEM the buffer is left as it was. */
#ifndef CV_CWP_H
#define CV_CWP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* Longest line either side accepts (§13.4: > 16 MiB restarts the worker). */
#define CV_CWP_MAX_LINE (16u * 1024 * 1024)
/* Nesting limit of worker lines (as the serializer's). */
#define CV_CWP_MAX_DEPTH 1000
/* Decoded bytes in one data frame. */
#define CV_CWP_MAX_DATA (64u * 1024)
/* Largest message id (2^53 - 1, a safe JS integer). */
#define CV_CWP_MAX_ID 9007199254740991ull

enum cv_cwp_proto { CV_CWP_PROTO_CWP1 = 0, CV_CWP_PROTO_V1 = 1, CV_CWP_PROTO_V2 = 2 };

enum cv_cwp_type {
    CV_CWP_REPLY = 0, /* {"id":N,"ok":...} with a valid shape */
    CV_CWP_BAD,       /* a reply (or frame) for id N with a bad shape: why says what */
    CV_CWP_WORKER,    /* id 0 or missing: a worker-level message (log it) */
    CV_CWP_HELLO,     /* {"type":"hello",...}: see cv_cwp_hello_parse */
    CV_CWP_DATA,      /* {"type":"data","id":N,"stream":S,"b64":B} */
    CV_CWP_END,       /* {"type":"end","id":N,"stream":S[,"error":E]} */
    CV_CWP_FILE,      /* {"type":"file","id":N,"stream":S,"meta":M} */
    CV_CWP_ACK,       /* {"type":"ack","id":N,"stream":S,"bytes":K} */
    CV_CWP_OTHER      /* an object with an unknown "type" (ignored) */
};

/* A slice of the compact text; len 0 and present false when absent. */
struct cv_cwp_slice {
    size_t off, len;
    bool present;
};

struct cv_cwp_msg {
    enum cv_cwp_type type;
    uint64_t id;     /* 0 for CV_CWP_WORKER and CV_CWP_HELLO */
    const char *why; /* CV_CWP_BAD: a short static reason */
    /* Replies. */
    bool ok;
    struct cv_cwp_slice result;       /* ok: the "result" value, if present */
    bool stream;                      /* ok with a "stream" object */
    int stream_status;                /* its "status" (200 if absent) */
    struct cv_cwp_slice content_type; /* its "contentType" string token (with quotes) */
    struct cv_cwp_slice headers;      /* its "headers" object */
    int status;                       /* !ok: the HTTP status (§13.4, legacy rules) */
    struct cv_cwp_slice error;        /* !ok: the "error" object */
    /* !ok with a legacy numeric code: the "codeName" string token (or absent);
     * cv_cwp_put_error writes the error with it as "code". */
    bool legacy_code;
    struct cv_cwp_slice code_name;
    /* Frames. */
    struct cv_cwp_slice stream_name; /* "stream" string token (with quotes) */
    struct cv_cwp_slice b64;         /* data: the base64 text (without quotes) */
    struct cv_cwp_slice meta;        /* file: the "meta" object */
    struct cv_cwp_slice frame_error; /* end: the "error" value, if present */
    uint64_t bytes;                  /* ack */
};

/* Parses line[0..len) (no '\n'). out (capacity >= len, may equal line)
 * receives the compact text; slices in *m point into it, and *out_len is
 * its length. proto selects the error rules (§13.2-13.4). Returns 0 (see
 * m->type), or CV_EPROTO when the line is not one JSON object (m->why
 * says why; log and drop it). */
int cv_cwp_parse(enum cv_cwp_proto proto, const char *line, size_t len, char *out, size_t *out_len,
                 struct cv_cwp_msg *m);

/* Copies in[0..len) to out with every invalid UTF-8 sequence replaced by
 * U+FFFD (EF BF BD), as Node decodes a worker's output; a line refused
 * by cv_cwp_parse for invalid UTF-8 parses after this. Returns 0 (nothing
 * to replace: out untouched), 1 (out holds the fixed text), CV_ETOOBIG or
 * CV_ENOMEM. */
int cv_cwp_fix_utf8(const char *in, size_t len, struct cv_buf *out);

/* Unescapes a JSON string token (with its quotes) from compact text into
 * dst (capacity cap, NUL-terminated). Returns the length, or CV_ETOOBIG
 * if it does not fit. */
int cv_cwp_str(const char *text, struct cv_cwp_slice s, char *dst, size_t cap);

/* Iterates the members of an object in compact text: start with *pos at
 * its '{'; each call sets *key (string token) and *val and returns true,
 * until the closing '}' (false). end bounds the text. */
bool cv_cwp_next_member(const char *text, size_t end, size_t *pos, struct cv_cwp_slice *key,
                        struct cv_cwp_slice *val);

/* True if the string token s equals lit (after unescaping). */
bool cv_cwp_str_eq(const char *text, struct cv_cwp_slice s, const char *lit);

/* Decodes the base64 text of a data frame into dst (capacity >= 3 * (len
 * / 4)). Returns the decoded length, or CV_EPROTO (bad alphabet, length
 * or padding). */
int cv_cwp_b64_decode(const char *b64, size_t len, uint8_t *dst);

/* The hello (§13.4). Lists absent from the hello are marked absent (the
 * gateway then assumes every allow-listed id exists). */
struct cv_cwp_hello {
    char *protocol; /* owned; NULL if absent */
    int64_t pid;    /* 0 if absent */
    bool has_tasks, has_events, has_parallel;
    char **tasks, **events, **parallel; /* owned arrays of owned strings */
    size_t ntasks, nevents, nparallel;
    uint32_t max_in_flight; /* default 64 */
    uint64_t window;        /* default 1 MiB */
    bool f_cancel, f_auth, f_streams;
};

/* Parses a hello's compact text. Returns 0, CV_EPROTO (not a hello, wrong
 * protocol, bad field type) or CV_ENOMEM; on error nothing is allocated. */
int cv_cwp_hello_parse(const char *compact, size_t len, struct cv_cwp_hello *h);
void cv_cwp_hello_fini(struct cv_cwp_hello *h);

/* Writes a reply's error object: the error slice as is, or, for a legacy
 * numeric code, a copy whose "code" is the codeName string (default
 * "INTERNAL_ERROR") without "codeName". Returns 0, CV_ETOOBIG or CV_ENOMEM. */
int cv_cwp_put_error(struct cv_buf *b, const char *text, const struct cv_cwp_msg *m);

/* ---- Gateway -> worker ---- */

enum cv_cwp_mode { CV_CWP_MODE_JSON = 0, CV_CWP_MODE_MULTIPART = 1, CV_CWP_MODE_OCTET = 2 };

/* A task or an event. For a task, input is the §8.2 selection (sent as
 * "input"), or the whole graph body when is_body (sent as "body"); NULL
 * omits it (octet mode). For an event, input is the payload. context may
 * be NULL. rid, mode and deadline are sent in cwp/1 only, context in cwp/1
 * and v2. */
struct cv_cwp_call {
    bool event;
    uint64_t id;
    const char *name; /* task or event id */
    const char *rid;
    enum cv_cwp_mode mode;
    const char *input;
    size_t input_len;
    bool is_body;
    bool return_payload;
    const char *context;
    size_t context_len;
    uint64_t deadline_ms;
};
int cv_cwp_put_call(struct cv_buf *b, enum cv_cwp_proto proto, const struct cv_cwp_call *c);
/* {"type":"auth","id":N,"rid":R,"context":C} */
int cv_cwp_put_auth(struct cv_buf *b, uint64_t id, const char *rid, const char *context,
                    size_t context_len);
/* {"type":"cancel","id":N,"reason":R} (id: the request cancelled) */
int cv_cwp_put_cancel(struct cv_buf *b, uint64_t id, const char *reason);
/* {"type":"ping","id":N} */
int cv_cwp_put_ping(struct cv_buf *b, uint64_t id);
/* {"type":"shutdown","id":N[,"graceMs":G]} (graceMs in cwp/1 only) */
int cv_cwp_put_shutdown(struct cv_buf *b, enum cv_cwp_proto proto, uint64_t id, uint64_t grace_ms);
/* {"type":"data","id":N,"stream":S,"b64":...} of p[0..n), n <= CV_CWP_MAX_DATA. */
int cv_cwp_put_data(struct cv_buf *b, uint64_t id, const char *stream, const uint8_t *p, size_t n);
/* {"type":"end","id":N,"stream":S[,"error":E]} (error: compact JSON or NULL) */
int cv_cwp_put_end(struct cv_buf *b, uint64_t id, const char *stream, const char *error,
                   size_t error_len);
/* {"type":"file","id":N,"stream":S,"meta":M} */
int cv_cwp_put_file(struct cv_buf *b, uint64_t id, const char *stream, const char *meta,
                    size_t meta_len);
/* {"type":"ack","id":N,"stream":S,"bytes":K} */
int cv_cwp_put_ack(struct cv_buf *b, uint64_t id, const char *stream, uint64_t bytes);

#endif
