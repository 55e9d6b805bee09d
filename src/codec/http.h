/* HTTP/1.1 message heads, parsed with llhttp. Pure: no I/O.
 *
 * The caller accumulates bytes and calls the parser with everything received
 * so far; it answers "incomplete" until the head (request/status line and
 * headers, through the empty line) is there, then returns slices into the
 * caller's buffer. Bare CR anywhere in the head is rejected (request
 * smuggling guard), as are heads over the size limit. */
#ifndef CV_HTTP_H
#define CV_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_HTTP_MAX_HEADERS 64

struct cv_http_header {
    const char *name; /* borrowed */
    size_t name_len;
    const char *value; /* borrowed; surrounding whitespace trimmed */
    size_t value_len;
};

struct cv_http_head {
    bool is_request;
    const char *method; /* borrowed, requests only */
    size_t method_len;
    const char *target; /* borrowed request target, requests only */
    size_t target_len;
    int status;         /* responses only */
    int version_minor;  /* 1.x */
    int version_major;
    bool upgrade;       /* Connection: upgrade with an Upgrade header */
    bool keep_alive;
    bool chunked;
    int64_t content_length; /* -1 when absent */
    size_t nheaders;
    struct cv_http_header headers[CV_HTTP_MAX_HEADERS];
};

/* Parses a request head from p[0..n). max_head: largest head accepted.
 * Returns the head length (> 0; the body or upgraded bytes follow), CV_EAGAIN
 * if the head is incomplete, CV_ETOOBIG if it exceeds max_head or has more
 * than CV_HTTP_MAX_HEADERS headers, CV_EPROTO if it is malformed (including a
 * bare CR or LF, a NUL, a header name that is not a token, a control
 * character or obs-fold in a value). Garbage in the first bytes (a TLS
 * hello, say) is refused before the head is complete. */
int cv_http_parse_request(const char *p, size_t n, size_t max_head, struct cv_http_head *h);

/* Same for a response head. */
int cv_http_parse_response(const char *p, size_t n, size_t max_head, struct cv_http_head *h);

/* Finds the first header named name (case-insensitive). NULL if absent. */
const struct cv_http_header *cv_http_find(const struct cv_http_head *h, const char *name);

/* ASCII case-insensitive equality of a[0..n) and b[0..n) (header names,
 * tokens): no locale, and a short loop instead of a libc call for the few
 * bytes of a name. */
static inline bool cv_http_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x != y) {
            if ((unsigned char)(x - 'A') < 26)
                x = (unsigned char)(x + 32);
            if ((unsigned char)(y - 'A') < 26)
                y = (unsigned char)(y + 32);
            if (x != y)
                return false;
        }
    }
    return true;
}

/* True if the comma-separated header value contains token (case-insensitive). */
bool cv_http_has_token(const char *value, size_t len, const char *token);

/* Returns the standard reason phrase for status ("Unknown" if none). */
const char *cv_http_reason(int status);
/* Node's reason phrase (http.STATUS_CODES; "unknown" if none), for the
 * paths whose clients compare with a Node server. */
const char *cv_http_reason_node(int status);

#endif
