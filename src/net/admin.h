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
/* Answers with j as compact JSON plus a newline (steals j; NULL: 500). */
void cv_admin_json(struct cv_http_req *req, int status, json_t *j);
/* Answers with the buffer as Prometheus text. */
void cv_admin_metrics(struct cv_http_req *req, const struct cv_buf *b);
/* Answers 405 unless the method is GET; returns true if it answered. */
bool cv_admin_refuse_non_get(struct cv_http_req *req);
/* Warns when an admin listener binds beyond loopback (it has no auth). */
void cv_admin_warn_exposed(const char *who, const char *host);

#endif
