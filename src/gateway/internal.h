/* Private glue between the gateway core (gateway.c), its helpers
 * (envelope.c, upload.c) and the native backend (native.c). */
#ifndef CV_GW_INTERNAL_H
#define CV_GW_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "culvert/gateway.h"
#include "gateway/backend.h"

/* ---- envelope.c: response bodies ---- */

/* Appends {"ok":false,"error":{"message":M,"code":C}} (M and C escaped). */
int cv_gwe_error(struct cv_buf *out, const char *code, const char *message);
/* Appends the §4.2-sanitised envelope for a backend error object
 * err[0..len) answered with *status (a bad object: the untyped 500).
 * May change *status (an invalid one becomes 500). */
int cv_gwe_sanitized(struct cv_buf *out, int *status, const char *err, size_t len);
/* Appends {"ok":true,"result":R} (R NULL: the Undefined record). */
int cv_gwe_result(struct cv_buf *out, const char *r, size_t len);

/* ---- native.c ---- */
struct cv_gw_native;
struct cv_gw_native *cv_gw_native_new(uv_loop_t *loop);
struct cv_gw_backend *cv_gw_native_backend(struct cv_gw_native *n);
void cv_gw_native_free(struct cv_gw_native *n); /* NULL-safe */
/* The id the auth handler is registered under (kind CV_GW_AUTH). */
#define CV_GW_NATIVE_AUTH_ID "auth"
int cv_gw_native_add(struct cv_gw_native *n, enum cv_gw_kind kind, const char *id, cv_gw_handler fn,
                     void *ud, bool parallel);

/* ---- gateway.c: what the native backend reads of a request ---- */

/* A request header by lowercase name: exactly one occurrence, copied into
 * a string the req owns (valid until it ends). NULL if absent or repeated. */
const char *cv_gw_req_header(struct cv_gw_req *req, const char *name);
/* The response queue is below its high mark (stream writes may go on). */
bool cv_gw_req_writable(const struct cv_gw_req *req);
struct cv_gateway *cv_gw_req_gateway(const struct cv_gw_req *req);

#endif
