/* Fuzzes the HTTP head parser as request and response, with the standard
 * and a small head limit. Checks that slices stay inside the head and that
 * every shorter prefix of an accepted head is "incomplete". */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/http.h"
#include "core/err.h"
#include "core/limits.h"

typedef int (*parse_fn)(const char *, size_t, size_t, struct cv_http_head *);

static void in_head(const char *s, size_t n, const char *p, int len)
{
    if (n > 0 && (s < p || s + n > p + len))
        abort();
}

static void check(parse_fn fn, const char *p, size_t size, size_t max)
{
    static struct cv_http_head h;
    int rc = fn(p, size, max, &h);

    if (rc == CV_EAGAIN || rc == CV_EPROTO)
        return;
    if (rc == CV_ETOOBIG) {
        if (size < max && h.nheaders < CV_HTTP_MAX_HEADERS)
            abort(); /* too big must mean the size or the header count */
        return;
    }
    if (rc <= 0 || (size_t)rc > size || (size_t)rc > max || h.nheaders > CV_HTTP_MAX_HEADERS)
        abort();
    if (memcmp(p + rc - 4, "\r\n\r\n", 4) != 0)
        abort();
    in_head(h.method, h.method_len, p, rc);
    in_head(h.target, h.target_len, p, rc);
    for (size_t i = 0; i < h.nheaders; i++) {
        const struct cv_http_header *hd = &h.headers[i];
        in_head(hd->name, hd->name_len, p, rc);
        in_head(hd->value, hd->value_len, p, rc);
        static char name[CV_LIMIT_HTTP_HEAD + 1];
        if (hd->name_len == 0 || hd->name_len > CV_LIMIT_HTTP_HEAD)
            abort();
        memcpy(name, hd->name, hd->name_len);
        name[hd->name_len] = '\0';
        const struct cv_http_header *f = cv_http_find(&h, name);
        if (f == NULL || f > hd || f->name_len != hd->name_len)
            abort();
        (void)cv_http_has_token(hd->value, hd->value_len, "upgrade");
    }
    (void)cv_http_reason(h.status);
    /* Prefixes: the quadratic check only for short heads. */
    if (rc <= 2048) {
        for (int n = 0; n < rc; n++)
            if (fn(p, (size_t)n, max, &h) != CV_EAGAIN)
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;

    check(cv_http_parse_request, p, size, CV_LIMIT_HTTP_HEAD);
    check(cv_http_parse_response, p, size, CV_LIMIT_HTTP_HEAD);
    check(cv_http_parse_request, p, size, 64);
    check(cv_http_parse_response, p, size, 64);
    return 0;
}
