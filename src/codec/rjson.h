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

/* Decodes serializer JSON into a wire-form tree (see top). The text is
 * first checked by cv_rj_compact (so "" and "  " are refused: the caller
 * maps an empty body to cv_rj_make_undefined()), then parsed by jansson.
 * Validates every typed record as Runner's registry does: a known
 * built-in type (§7.2; anything else is "unknown __type") with a
 * well-formed value (Undefined: any, stored as null; NonFiniteNumber:
 * "NaN", "Infinity" or "-Infinity"; BigInt: /^[+-]?\d+$/ after trimming,
 * stored as BigInt#toString gives it; Date: YYYY-MM-DDTHH:MM:SS[.f]Z or
 * ±YYYYYY-… or epoch ms, within ±8.64e15 ms, stored as Date#toISOString
 * gives it; RegExp: {pattern <= 1024 UTF-16 units, passing Runner's
 * nested-quantifier/overlapping-alternation check and the syntax checks
 * new RegExp makes without u/v (groups, classes, quantifiers), flags a
 * unique subset of dgimsuvy, not both u and v}; Map: array of arrays,
 * stored as [k,v] pairs (a missing item is Undefined); Set: array;
 * Symbol: {kind For|WellKnown (a well-known name), key}; URL: string with
 * a scheme; URLSearchParams: string; Error: {name, message strings,
 * stack?, customFields?}; byte types: integers 0..255, a multiple of the
 * element size). Extra keys of a record are dropped. Plain objects: keys lose one "$runner.escape::"
 * prefix and are stored in their canonical wire spelling (so cv_rj_get
 * finds them; of two spellings of one key the later assignment wins, as
 * in JS), and __proto__/constructor/prototype keys are dropped. Depth is
 * counted as Runner does (root 0, > CV_RJ_MAX_DEPTH refused). The graph
 * format ({"__graph":true, "root", object "nodes"}) is resolved: a node
 * referenced twice is one shared json_t (as JS shares the object; copy it
 * with json_deep_copy before mutating one place), a cycle is refused, and
 * shared subtrees count toward the depth wherever they appear. Numbers
 * are all reals (JS numbers), -0 kept; a number beyond ±1.8e308 (±Infinity
 * to JSON.parse) becomes a NonFiniteNumber record. Not representable in
 * jansson's UTF-8 strings, so refused with a reason: lone surrogate
 * escapes ("\ud800", which JSON.parse accepts) and "\u0000" in keys.
 * Returns the tree (caller owns one reference) or NULL with a reason in
 * why[0..whylen) (why may be NULL). Not on the pass-through hot path. */
json_t *cv_rj_decode(const char *in, size_t len, char *why, size_t whylen);
/* The jansson tree of compact text p[0..n) that cv_rj_compact accepted (or
 * a whole value sliced out of one): what json_loadb(JSON_DECODE_ANY |
 * JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL) gives, except that a number
 * beyond the double range becomes a NonFiniteNumber record. NULL with a
 * reason in *why (may be NULL) for what jansson cannot hold: a lone
 * surrogate escape, NUL in a key. The raw tree: no record is checked, no
 * key unescaped (cv_rj_decode does that). */
json_t *cv_rj_build(const char *p, size_t n, const char **why);
/* cv_rj_decode of a text cv_rj_compact already checked and compacted (or
 * a whole value sliced out of one, as the gateway's call inputs are): the
 * check and the copy are skipped. */
json_t *cv_rj_decode_compact(const char *in, size_t len, char *why, size_t whylen);

/* Accessors (the unescaped view of a wire-form tree). All accept any
 * json_t (or NULL) and answer "no" for the wrong kind of node. */
bool cv_rj_is_undefined(const json_t *v);
/* The record's type name if v is a typed record (an object with a string
 * "__type" and a "value" key), else NULL. Borrowed. */
const char *cv_rj_record_type(const json_t *v);
/* A number: a JSON number, or a NonFiniteNumber record. Returns 0 or CV_EINVAL. */
int cv_rj_number(const json_t *v, double *out);
/* A Date record (ISO string or epoch ms) as epoch milliseconds. Returns 0
 * or CV_EINVAL. */
int cv_rj_date_ms(const json_t *v, int64_t *ms);
/* A BigInt record's decimal digits with an optional '-' (borrowed), else NULL. */
const char *cv_rj_bigint(const json_t *v);
/* Object member by its real (unescaped) key, e.g. "__type" finds the wire
 * key "$runner.escape::__type". Borrowed; NULL if absent. */
json_t *cv_rj_get(const json_t *obj, const char *key);
/* Sets a member by real key, stealing v (also on failure). The wire key
 * gets one "$runner.escape::" prefix when the real key is "__type" or
 * "__graph" or already starts with the prefix (Runner's
 * escapeReservedMarkerKey): "__type" -> "$runner.escape::__type",
 * "$runner.escape::x" -> "$runner.escape::$runner.escape::x". Returns 0,
 * CV_EINVAL (not an object, NULL key or v) or CV_ENOMEM. */
int cv_rj_set(json_t *obj, const char *key, json_t *v);

/* Constructors (new references; NULL on bad arguments or no memory). */
json_t *cv_rj_make_undefined(void);
json_t *cv_rj_make_number(double d); /* NaN/±Infinity become records; -0 becomes 0 */
json_t *cv_rj_make_int(int64_t i);   /* beyond ±2^53: a BigInt record */
/* A Date record with the ISO string Date#toISOString gives (±YYYYYY years
 * outside 0..9999); NULL outside ±8.64e15 ms. */
json_t *cv_rj_make_date(int64_t ms);
/* A BigInt record; digits as BigInt() accepts them (/^[+-]?\d+$/), stored
 * normalised ("+007" -> "7"); NULL otherwise. */
json_t *cv_rj_make_bigint(const char *digits);
/* A byte record: type is Buffer, ArrayBuffer, DataView, Uint8Array or
 * another typed array (raw little-endian bytes; n a multiple of the
 * element size); NULL for an unknown type or a bad length. */
json_t *cv_rj_make_bytes(const char *type, const uint8_t *p, size_t n);

/* Appends v in tree format to out, as JSON.stringify writes it: numbers
 * in JS's shortest round-trip form (8, 1.5, 1e+21, 1.5e-7, -0 as 0),
 * strings with JSON.stringify's escapes (\" \\ \b \f \n \r \t, other
 * controls as \u00xx, the rest raw UTF-8; an invalid UTF-8 byte planted
 * with a _nocheck string becomes U+FFFD), keys in tree order. A
 * json_integer beyond ±2^53 is written as a BigInt record. Returns 0,
 * CV_EINVAL (v NULL), CV_ETOOBIG (out's maximum, or nesting deeper than
 * 2 * CV_RJ_MAX_DEPTH) or CV_ENOMEM; on error out is left as it was. */
int cv_rj_encode(const json_t *v, struct cv_buf *out);

#endif
