/* Helpers shared by the admin listeners of the relay and the agent:
 * Prometheus text exposition (format 0.0.4) into a capped buffer, and
 * JSON / text answers on a cv_http_server request. */
#ifndef CV_NET_ADMIN_H
#define CV_NET_ADMIN_H

#include <jansson.h>
#include <stdint.h>

#include "core/buf.h"
#include "net/http_server.h"

/* "# HELP name help\n# TYPE name type\n". */
void cv_prom_head(struct cv_buf *b, const char *name, const char *type, const char *help);
/* "name{labels} value\n"; labels may be NULL. */
void cv_prom_value(struct cv_buf *b, const char *name, const char *labels, uint64_t v);
/* A metric with a single unlabelled sample. */
void cv_prom_metric(struct cv_buf *b, const char *name, const char *type, const char *help,
                    uint64_t v);
/* One JSON endpoint of an admin listener. */
struct cv_admin_api {
    const char *path;
    json_t *(*get)(void *ud); /* new reference */
};

/* What an admin listener serves besides /healthz. */
struct cv_admin_site {
    /* NULL when ready (/readyz 200), else why not (503 with that text). */
    const char *(*not_ready)(void *ud);
    void (*metrics)(void *ud, struct cv_buf *b); /* /metrics */
    const struct cv_admin_api *apis;
    size_t napis;
};

/* Answers req from site: GET only (405), /healthz, /readyz, /metrics, the
 * JSON endpoints, and a 404 that lists them. */
void cv_admin_serve(struct cv_http_req *req, const struct cv_admin_site *site, void *ud);

/* Answers with j as compact JSON plus a newline (steals j; NULL: 500). */
void cv_admin_json(struct cv_http_req *req, int status, json_t *j);
/* Answers with the buffer as Prometheus text. */
void cv_admin_metrics(struct cv_http_req *req, const struct cv_buf *b);
/* Answers 405 unless the method is GET; returns true if it answered. */
bool cv_admin_refuse_non_get(struct cv_http_req *req);
/* Warns when an admin listener binds beyond loopback (it has no auth). */
void cv_admin_warn_exposed(const char *who, const char *host);

#endif
