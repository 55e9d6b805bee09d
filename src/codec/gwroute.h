/* Gateway request routing and small header rules of the Runner HTTP
 * protocol (specs/runner-http.md §2, §5.2, §8.1). Pure: no I/O.
 *
 * cv_gwr_route resolves a request target the way the reference server
 * does with WHATWG URL parsing (query ignored, "\" taken as "/", "." and
 * ".." segments resolved including their %2e spellings), checks the path
 * is under the base, drops empty segments and names the endpoint; a task
 * or event id is the remaining segments joined by "/", percent-decoded
 * and checked to be UTF-8. */
#ifndef CV_GWROUTE_H
#define CV_GWROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

enum cv_gwr_route {
    CV_GWR_OUTSIDE = 0, /* not under base (step 0) */
    CV_GWR_UNKNOWN,     /* under base but no endpoint (step 3) */
    CV_GWR_DISCOVERY,
    CV_GWR_TASK,
    CV_GWR_EVENT
};

/* Normalises a configured base path: a leading "/" is ensured and one
 * trailing "/" dropped ("/" becomes ""). out needs strlen(in) + 2 bytes.
 * Returns 0 or CV_EINVAL (NUL-free ASCII path characters only: no '?',
 * '#', '%', '\', whitespace or controls). */
int cv_gwr_base_norm(const char *in, char *out, size_t cap);

/* Routes target[0..len) (origin-form or absolute-form) against a
 * normalised base. buf is scratch of at least 2 * len + 4 bytes; for
 * TASK and EVENT *id points into it, NUL-terminated, with its length in
 * *idlen (never empty, never containing NUL). Returns the route, or
 * CV_EINVAL (as a negative int) if buf is too small. */
int cv_gwr_route(const char *target, size_t len, const char *base, char *buf, size_t cap,
                 const char **id, size_t *idlen);

/* The x-runner-request-id rule (§5.2): trims whitespace; valid if 1..128
 * characters of [A-Za-z0-9._:-]. On success sets *off and *n to the trimmed
 * slice of v. */
bool cv_gwr_rid_ok(const char *v, size_t len, size_t *off, size_t *n);

/* Mode from the first content-type value (§8.1); NULL: JSON. */
enum cv_gwr_mode { CV_GWR_MODE_JSON = 0, CV_GWR_MODE_MULTIPART = 1, CV_GWR_MODE_OCTET = 2 };
enum cv_gwr_mode cv_gwr_mode(const char *ct, size_t len);

/* True if p[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool cv_gwr_utf8_ok(const uint8_t *p, size_t n);

/* Appends s[0..n) as a JSON string literal (quotes included) with
 * JSON.stringify's escapes; s must be valid UTF-8. Returns 0, CV_ETOOBIG
 * or CV_ENOMEM. */
int cv_gwr_json_str(struct cv_buf *out, const char *s, size_t n);

#endif
