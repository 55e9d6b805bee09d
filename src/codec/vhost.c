#include "codec/vhost.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

static bool name_is(const struct cv_http_header *hd, const char *name)
{
    size_t n = strlen(name);
    return hd->name_len == n && strncasecmp(hd->name, name, n) == 0;
}

/* Strips ":PORT" (and brackets-aware: "[v6]:PORT" stays "[v6]") and one
 * trailing dot. */
static void strip_port(const char *p, size_t *n)
{
    size_t len = *n;
    if (len > 0 && p[0] == '[') {
        const char *rb = memchr(p, ']', len);
        *n = rb ? (size_t)(rb - p) + 1 : len;
        return;
    }
    const char *colon = memchr(p, ':', len);
    if (colon)
        len = (size_t)(colon - p);
    if (len > 0 && p[len - 1] == '.')
        len--;
    *n = len;
}

/* The authority of an absolute-form target "scheme://authority/...", or
 * false if target is not absolute-form. */
static bool absolute_authority(const char *t, size_t n, const char **auth, size_t *alen)
{
    const char *sep = n >= 3 ? memchr(t, ':', n) : NULL;
    if (sep == NULL || t[0] == '/' || (size_t)(sep - t) + 3 > n || sep[1] != '/' || sep[2] != '/')
        return false;
    const char *a = sep + 3, *end = t + n;
    const char *e = a;
    while (e < end && *e != '/' && *e != '?' && *e != '#')
        e++;
    /* userinfo@ is not routing information. */
    for (const char *q = e; q > a; q--) {
        if (q[-1] == '@') {
            a = q;
            break;
        }
    }
    *auth = a;
    *alen = (size_t)(e - a);
    return true;
}

enum cv_vhost_route cv_vhost_route(const struct cv_http_head *h, const char *base,
                                   const char **name, size_t *len)
{
    const char *host = "";
    size_t hn = 0;
    int hosts = 0;
    *name = host;
    *len = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (name_is(&h->headers[i], "Host")) {
            host = h->headers[i].value;
            hn = h->headers[i].value_len;
            hosts++;
        }
    }
    const char *auth;
    size_t alen;
    if (absolute_authority(h->target, h->target_len, &auth, &alen)) {
        host = auth;
        hn = alen;
    } else if (hosts != 1) {
        return CV_VHOST_BAD;
    }
    if (hosts > 1)
        return CV_VHOST_BAD;
    strip_port(host, &hn);
    *name = host;
    *len = hn;
    if (hn == 0)
        return CV_VHOST_BAD;
    size_t bn = strlen(base);
    if (hn < bn + 2 || host[hn - bn - 1] != '.' || strncasecmp(host + hn - bn, base, bn) != 0)
        return CV_VHOST_UNKNOWN;
    size_t nn = hn - bn - 1;
    if (memchr(host, '.', nn) != NULL)
        return CV_VHOST_UNKNOWN;
    *len = nn;
    return CV_VHOST_NAME;
}

/* End of the header line that starts at hd->name: after its LF. The head
 * parser refuses bare CR and LF and obs-fold, so the first LF ends it. */
static const char *line_end(const struct cv_http_header *hd, const char *head_end)
{
    const char *lf = memchr(hd->name + hd->name_len, '\n',
                            (size_t)(head_end - (hd->name + hd->name_len)));
    return lf ? lf + 1 : head_end;
}

struct out {
    char *p;
    size_t len, cap;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

size_t cv_vhost_rewrite(const char *head, size_t head_len, const struct cv_http_head *h,
                        const char *client_ip, const char *proto, char *out, size_t cap)
{
    struct out o = {.p = out, .cap = cap};
    const char *end = head + head_len;
    if (head_len < 4)
        return 0;
    const struct cv_http_header *xff = NULL, *host = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (name_is(&h->headers[i], "X-Forwarded-For"))
            xff = &h->headers[i];
        else if (name_is(&h->headers[i], "Host") && host == NULL)
            host = &h->headers[i];
    }
    /* Copy runs of bytes between the lines that change. */
    const char *from = head;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct cv_http_header *hd = &h->headers[i];
        if (name_is(hd, "X-Forwarded-Proto") || name_is(hd, "X-Forwarded-Host")) {
            put(&o, from, (size_t)(hd->name - from));
            from = line_end(hd, end);
        } else if (hd == xff) {
            const char *vend = hd->value_len ? hd->value + hd->value_len : hd->name + hd->name_len + 1;
            put(&o, from, (size_t)(vend - from));
            if (hd->value_len)
                puts_(&o, ", ");
            puts_(&o, client_ip);
            from = vend;
        }
    }
    /* Everything up to the empty line that ends the head. */
    put(&o, from, (size_t)(end - 2 - from));
    if (xff == NULL) {
        puts_(&o, "X-Forwarded-For: ");
        puts_(&o, client_ip);
        puts_(&o, "\r\n");
    }
    puts_(&o, "X-Forwarded-Proto: ");
    puts_(&o, proto);
    puts_(&o, "\r\n");
    if (host) {
        puts_(&o, "X-Forwarded-Host: ");
        put(&o, host->value, host->value_len);
        puts_(&o, "\r\n");
    }
    puts_(&o, "\r\n");
    return o.full ? 0 : o.len;
}
