#include "net/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

void cv_prom_head(struct cv_buf *b, const char *name, const char *type, const char *help)
{
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    if (n > 0 && (size_t)n < sizeof line)
        cv_buf_append(b, line, (size_t)n);
}

void cv_prom_value(struct cv_buf *b, const char *name, const char *labels, uint64_t v)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%s%s%s%s %llu\n", name, labels ? "{" : "",
                     labels ? labels : "", labels ? "}" : "", (unsigned long long)v);
    if (n > 0 && (size_t)n < sizeof line)
        cv_buf_append(b, line, (size_t)n);
}

void cv_prom_metric(struct cv_buf *b, const char *name, const char *type, const char *help,
                    uint64_t v)
{
    cv_prom_head(b, name, type, help);
    cv_prom_value(b, name, NULL, v);
}

void cv_admin_json(struct cv_http_req *req, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL) {
        cv_http_req_respond(req, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: the length is passed */
    cv_http_req_respond(req, status, "application/json", text, n + 1);
    free(text);
}

void cv_admin_metrics(struct cv_http_req *req, const struct cv_buf *b)
{
    cv_http_req_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", cv_buf_head(b),
                        b->len);
}

bool cv_admin_refuse_non_get(struct cv_http_req *req)
{
    const struct cv_http_head *h = cv_http_req_head(req);
    if (h->method_len == 3 && memcmp(h->method, "GET", 3) == 0)
        return false;
    cv_admin_json(req, 405, json_pack("{s:s}", "error", "method not allowed: use GET"));
    return true;
}

void cv_admin_warn_exposed(const char *who, const char *host)
{
    if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0)
        cv_log_warn("%s admin listener on %s has no authentication: anyone who reaches it can "
                    "read its state and counters",
                    who, host);
}

void cv_admin_serve(struct cv_http_req *req, const struct cv_admin_site *site, void *ud)
{
    const char *path = cv_http_req_path(req);
    if (cv_admin_refuse_non_get(req))
        return;
    if (strcmp(path, "/healthz") == 0) {
        cv_http_req_respond(req, 200, "text/plain", "ok\n", 3);
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        const char *why = site->not_ready(ud);
        char text[160];
        int n = snprintf(text, sizeof text, "%s\n", why ? why : "ready");
        cv_http_req_respond(req, why ? 503 : 200, "text/plain", text, (size_t)n);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        struct cv_buf b;
        cv_buf_init(&b, 1 << 20);
        site->metrics(ud, &b);
        cv_admin_metrics(req, &b);
        cv_buf_fini(&b);
        return;
    }
    for (size_t i = 0; i < site->napis; i++) {
        if (strcmp(path, site->apis[i].path) == 0) {
            cv_admin_json(req, 200, site->apis[i].get(ud));
            return;
        }
    }
    json_t *list = json_pack("[s,s,s]", "/healthz", "/readyz", "/metrics");
    for (size_t i = 0; i < site->napis; i++)
        json_array_append_new(list, json_string(site->apis[i].path));
    cv_admin_json(req, 404, json_pack("{s:s,s:o}", "error", "not found", "endpoints", list));
}
