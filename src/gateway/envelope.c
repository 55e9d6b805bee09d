/* Response envelopes (spec §4) and the sanitisation of backend errors
 * (§4.2). Member values are copied byte for byte from the backend's JSON
 * (so numbers keep their JS spelling); jansson only checks the text and
 * reads the types that decide what is kept. */
#include <stdint.h>
#include <string.h>

#include "codec/gwroute.h"
#include "codec/rjson.h"
#include "core/err.h"
#include "gateway/internal.h"

#define APPEND(out, lit) cv_buf_append(out, lit, sizeof(lit) - 1)

int cv_gwe_error(struct cv_buf *out, const char *code, const char *message)
{
    int rc = APPEND(out, "{\"ok\":false,\"error\":{\"message\":");
    if (rc == 0)
        rc = cv_gwr_json_str(out, message, strlen(message));
    if (rc == 0)
        rc = APPEND(out, ",\"code\":");
    if (rc == 0)
        rc = cv_gwr_json_str(out, code, strlen(code));
    if (rc == 0)
        rc = APPEND(out, "}}");
    return rc;
}

int cv_gwe_result(struct cv_buf *out, const char *r, size_t len)
{
    if (r == NULL) {
        r = CV_RJ_UNDEFINED;
        len = sizeof(CV_RJ_UNDEFINED) - 1;
    }
    int rc = APPEND(out, "{\"ok\":true,\"result\":");
    if (rc == 0)
        rc = cv_buf_append(out, r, len);
    if (rc == 0)
        rc = APPEND(out, "}");
    return rc;
}

/* ---- A top-level member scanner over JSON jansson has validated ---- */

struct member {
    const char *key; /* raw, quotes excluded, escapes kept */
    size_t klen;
    const char *val; /* raw value text */
    size_t vlen;
};

static size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

static size_t skip_str(const char *p, size_t n, size_t i)
{
    for (i++; i < n && p[i] != '"'; i++)
        if (p[i] == '\\')
            i++;
    return i + 1;
}

static size_t skip_val(const char *p, size_t n, size_t i)
{
    if (i < n && p[i] == '"')
        return skip_str(p, n, i);
    if (i < n && (p[i] == '{' || p[i] == '[')) {
        int depth = 0;
        while (i < n) {
            char c = p[i];
            if (c == '"') {
                i = skip_str(p, n, i);
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']')
                if (--depth == 0)
                    return i + 1;
            i++;
        }
        return n;
    }
    while (i < n && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' && p[i] != '\t' &&
           p[i] != '\n' && p[i] != '\r')
        i++;
    return i;
}

/* Calls fn for each member of the object text p[0..n). */
static int each_member(const char *p, size_t n, int (*fn)(const struct member *m, void *arg),
                       void *arg)
{
    size_t i = skip_ws(p, n, 0);
    if (i >= n || p[i] != '{')
        return CV_EPROTO;
    i = skip_ws(p, n, i + 1);
    while (i < n && p[i] == '"') {
        struct member m;
        size_t ke = skip_str(p, n, i);
        m.key = p + i + 1;
        m.klen = ke - i - 2;
        i = skip_ws(p, n, ke);
        if (i >= n || p[i] != ':')
            return CV_EPROTO;
        i = skip_ws(p, n, i + 1);
        size_t ve = skip_val(p, n, i);
        m.val = p + i;
        m.vlen = ve - i;
        int rc = fn(&m, arg);
        if (rc < 0)
            return rc;
        i = skip_ws(p, n, ve);
        if (i < n && p[i] == ',')
            i = skip_ws(p, n, i + 1);
    }
    return 0;
}

static bool key_is(const struct member *m, const char *k)
{
    return m->klen == strlen(k) && memcmp(m->key, k, m->klen) == 0;
}

/* 500: the last message/code/id/data/httpCode members (JSON.parse keeps
 * the last duplicate). */
struct keep5 {
    struct member msg, code, id, data, http;
};

static int pick5(const struct member *m, void *arg)
{
    struct keep5 *k = arg;
    if (key_is(m, "message"))
        k->msg = *m;
    else if (key_is(m, "code"))
        k->code = *m;
    else if (key_is(m, "id"))
        k->id = *m;
    else if (key_is(m, "data"))
        k->data = *m;
    else if (key_is(m, "httpCode"))
        k->http = *m;
    return 0;
}

struct copy_ctx {
    struct cv_buf *out;
    bool first;
    bool code_ok; /* code is a string: copy it */
    bool msg_ok;  /* message is a string: copy it */
    int rc;
};

static int copy_member(const struct member *m, void *arg)
{
    struct copy_ctx *c = arg;
    if (key_is(m, "stack") || key_is(m, "cause") || key_is(m, "sql"))
        return 0;
    if ((key_is(m, "code") && !c->code_ok) || (key_is(m, "message") && !c->msg_ok))
        return 0; /* replaced */
    int rc = c->first ? 0 : APPEND(c->out, ",");
    c->first = false;
    if (rc == 0)
        rc = APPEND(c->out, "\"");
    if (rc == 0)
        rc = cv_buf_append(c->out, m->key, m->klen);
    if (rc == 0)
        rc = APPEND(c->out, "\":");
    if (rc == 0)
        rc = cv_buf_append(c->out, m->val, m->vlen);
    return rc;
}

static bool valid_http(const json_t *h)
{
    if (json_is_integer(h))
        return json_integer_value(h) >= 100 && json_integer_value(h) <= 599;
    if (json_is_real(h)) {
        double d = json_real_value(h);
        return d >= 100 && d <= 599 && d == (double)(int)d;
    }
    return false;
}

static int put_member(struct cv_buf *out, const char *key, const struct member *m)
{
    int rc = cv_buf_append(out, key, strlen(key));
    if (rc == 0)
        rc = cv_buf_append(out, m->val, m->vlen);
    return rc;
}

static int sanitize_500(struct cv_buf *out, json_t *obj, const char *err, size_t len)
{
    struct keep5 k;
    memset(&k, 0, sizeof k);
    if (each_member(err, len, pick5, &k) < 0)
        return cv_gwe_error(out, "INTERNAL_ERROR", "Internal Error");
    bool typed = json_is_string(json_object_get(obj, "id"));
    int rc = APPEND(out, "{\"ok\":false,\"error\":{\"message\":");
    if (rc == 0) {
        if (typed && json_is_string(json_object_get(obj, "message")))
            rc = cv_buf_append(out, k.msg.val, k.msg.vlen);
        else
            rc = APPEND(out, "\"Internal Error\"");
    }
    if (rc == 0) {
        if (json_is_string(json_object_get(obj, "code")))
            rc = put_member(out, ",\"code\":", &k.code);
        else
            rc = APPEND(out, ",\"code\":\"INTERNAL_ERROR\"");
    }
    if (rc == 0 && k.id.val)
        rc = put_member(out, ",\"id\":", &k.id);
    if (rc == 0 && k.data.val)
        rc = put_member(out, ",\"data\":", &k.data);
    if (rc == 0 && k.http.val && valid_http(json_object_get(obj, "httpCode")))
        rc = put_member(out, ",\"httpCode\":", &k.http);
    if (rc == 0)
        rc = APPEND(out, "}}");
    return rc;
}

int cv_gwe_sanitized(struct cv_buf *out, int *status, const char *err, size_t len)
{
    if (*status < 400 || *status > 599)
        *status = 500;
    json_t *obj = err ? json_loadb(err, len, JSON_DECODE_ANY, NULL) : NULL;
    size_t mark = out->len;
    int rc;
    if (!json_is_object(obj)) {
        *status = 500;
        rc = cv_gwe_error(out, "INTERNAL_ERROR", "Internal Error");
    } else if (*status == 500) {
        rc = sanitize_500(out, obj, err, len);
    } else {
        struct copy_ctx c = {out, true, json_is_string(json_object_get(obj, "code")),
                             json_is_string(json_object_get(obj, "message")), 0};
        rc = APPEND(out, "{\"ok\":false,\"error\":{");
        if (rc == 0 && !c.msg_ok) {
            rc = APPEND(out, "\"message\":\"Internal Error\"");
            c.first = false;
        }
        if (rc == 0)
            rc = each_member(err, len, copy_member, &c);
        if (rc == 0 && !c.code_ok)
            rc = c.first ? APPEND(out, "\"code\":\"INTERNAL_ERROR\"")
                         : APPEND(out, ",\"code\":\"INTERNAL_ERROR\"");
        if (rc == 0)
            rc = APPEND(out, "}}");
    }
    json_decref(obj);
    if (rc == CV_EPROTO) {
        out->len = mark;
        *status = 500;
        rc = cv_gwe_error(out, "INTERNAL_ERROR", "Internal Error");
    }
    return rc;
}
