/* Runner serializer JSON (specs/runner-http.md §7, §8.2, §10). Pure: no I/O.
 *
 * Two views of the same bytes:
 *  - pass-through (worker pools): cv_rj_compact checks syntax and drops the
 *    whitespace between tokens, leaving every other byte unchanged;
 *    cv_rj_top_scan then finds the top-level members the gateway needs
 *    (input, payload, returnPayload, __graph, a typed record) as slices of
 *    the compact text, so bodies reach workers byte for byte.
 *  - decoded (native handlers): cv_rj_decode builds a jansson tree in WIRE
 *    FORM: typed records stay {"__type":T,"value":V} objects (validated),
 *    escaped keys stay escaped ("$runner.escape::__type"), graphs are
 *    resolved into trees. Handlers read it through the accessors below,
 *    which give the unescaped view, and build results with the cv_rj_make_*
 *    constructors; cv_rj_encode writes a tree as JSON.stringify would
 *    (JS number formatting, same string escapes, key order kept). */
#ifndef CV_RJSON_H
#define CV_RJSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define CV_RJ_MAX_DEPTH 1000
#define CV_RJ_UNDEFINED "{\"__type\":\"Undefined\",\"value\":null}"

/* Checks in[0..len) is exactly one JSON value (RFC 8259, as JSON.parse
 * accepts it; surrounding whitespace allowed; nesting <= CV_RJ_MAX_DEPTH;
 * valid UTF-8, else refused) and writes its compact form to out (capacity
 * >= len; out may equal in). Returns 0 and *out_len, or CV_EPROTO with a
 * short static reason in *why (may be NULL). Single pass, no allocation.
 * An empty or whitespace-only input is refused ("empty"): Runner's server
 * treats only a zero-length body as undefined (check len == 0 first and
 * give cv_rj_select_input len 0); "  " is INVALID_JSON there as here. */
int cv_rj_compact(const char *in, size_t len, char *out, size_t *out_len, const char **why);

/* A slice of the compact text. */
struct cv_rj_slice {
    size_t off, len;
    bool present;
};

/* What cv_rj_top_scan found at the top level of a compact JSON text. Keys
 * are compared after unescaping ("in\u0070ut" is "input"); for repeated
 * keys the last one wins, as in JSON.parse. As Runner's decoder strips one
 * "$runner.escape::" prefix from plain keys, "$runner.escape::input" is an
 * "input" member too (of two spellings, the one first seen later wins).
 * input, payload and return_payload are set only for a plain object (not
 * for a graph or a record, whose decoded value has no such members). */
struct cv_rj_top {
    bool is_object;       /* a JSON object (arrays are not) */
    bool is_graph;        /* object with "__graph": true, a "root" and object "nodes" */
    bool is_record;       /* object with a string "__type" and a "value" key */
    struct cv_rj_slice input;   /* the "input" member's value */
    struct cv_rj_slice payload; /* the "payload" member's value */
    bool return_payload;  /* "returnPayload" is truthy in JS terms after
                             decoding (false, 0, -0, "", null, the Undefined
                             record, NaN and BigInt 0 are falsy) */
};

/* Scans compact text produced by cv_rj_compact (len > 0; anything else may
 * be refused but is never overrun). No allocation. Returns 0 or CV_EPROTO. */
int cv_rj_top_scan(const char *compact, size_t len, struct cv_rj_top *top);

/* The §8.2 task-input selection on compact text: sets *text = compact and
 * *off and *out_len to the bytes to send as input, or sets *whole_body for
 * a graph (*off and *out_len then span the body: send it as "body", the
 * receiver applies §8.2). len 0 (an empty body) gives CV_RJ_UNDEFINED
 * (static string returned through *text, off = 0). Returns 0 or CV_EPROTO. */
int cv_rj_select_input(const char *compact, size_t len, const char **text, size_t *off,
                       size_t *out_len, bool *whole_body);

/* Decodes serializer JSON into a wire-form tree (see top). Validates every
 * typed record: known built-in type (§7.2) with a well-formed value
 * (Date string or epoch ms, BigInt digits, NonFiniteNumber name, byte
 * arrays 0..255, RegExp flags and no nested quantifiers, ...); drops
 * __proto__/constructor/prototype keys; depth <= CV_RJ_MAX_DEPTH; resolves
 * the graph format (refs duplicated; a cycle is refused). Numbers are all
 * reals (JS numbers). Returns the tree (caller owns one reference) or NULL
 * with a reason in why[0..whylen). */
json_t *cv_rj_decode(const char *in, size_t len, char *why, size_t whylen);

/* Accessors (the unescaped view of a wire-form tree). */
bool cv_rj_is_undefined(const json_t *v);
/* The record's type name if v is a typed record, else NULL. */
const char *cv_rj_record_type(const json_t *v);
/* A number: a JSON number, or a NonFiniteNumber record. Returns 0 or CV_EINVAL. */
int cv_rj_number(const json_t *v, double *out);
/* A Date record as epoch milliseconds. Returns 0 or CV_EINVAL. */
int cv_rj_date_ms(const json_t *v, int64_t *ms);
/* A BigInt record's decimal digits (borrowed), else NULL. */
const char *cv_rj_bigint(const json_t *v);
/* Object member by its real (unescaped) key, e.g. "__type" finds the wire
 * key "$runner.escape::__type". Borrowed; NULL if absent. */
json_t *cv_rj_get(const json_t *obj, const char *key);
/* Sets a member by real key (escaping as needed); steals v. Returns 0 or CV_EINVAL. */
int cv_rj_set(json_t *obj, const char *key, json_t *v);

/* Constructors (new references). */
json_t *cv_rj_make_undefined(void);
json_t *cv_rj_make_number(double d);  /* NaN/±Infinity become records */
json_t *cv_rj_make_int(int64_t i);    /* beyond ±2^53: a BigInt record */
json_t *cv_rj_make_date(int64_t ms);
json_t *cv_rj_make_bigint(const char *digits);
json_t *cv_rj_make_bytes(const char *type, const uint8_t *p, size_t n); /* Uint8Array, Buffer, ... */

/* Appends v in tree format to out, as JSON.stringify writes it: numbers
 * in JS's shortest round-trip form (8, 1.5, 1e+21, -0 as 0), strings with
 * JSON.stringify's escapes, keys in tree order. Returns 0, CV_ETOOBIG or
 * CV_ENOMEM. */
int cv_rj_encode(const json_t *v, struct cv_buf *out);

#endif
