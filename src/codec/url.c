#include "codec/url.h"

#include <string.h>
#include <strings.h>

#include "core/err.h"

struct scheme {
    const char *prefix;
    bool tls;
    uint16_t port;
};

static const struct scheme schemes[] = {
    {"ws://", false, 80},
    {"wss://", true, 443},
    {"http://", false, 80},
    {"https://", true, 443},
};

/* Characters no URL may hold: controls, space, DEL and non-ASCII (which
 * would have to be percent-encoded), and '#' since a fragment never goes on
 * the wire and silently dropping it would hide a mistake. */
static bool url_char_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '#';
}

static bool reg_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static bool v6_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
           c == '.';
}

/* Parses a non-empty, strictly decimal port 1..65535 from s[0..n). */
static int parse_port(const char *s, size_t n, uint16_t *out)
{
    uint32_t v = 0;

    if (n == 0 || n > 5)
        return CV_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return CV_EINVAL;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return CV_EINVAL;
    *out = (uint16_t)v;
    return 0;
}

/* Splits the authority a[0..n) into host and port. */
static int parse_authority(const char *a, size_t n, struct cv_url *u)
{
    const char *host = a, *rest;
    size_t hlen;

    if (n > 0 && a[0] == '[') {
        const char *end = memchr(a, ']', n);
        if (end == NULL)
            return CV_EINVAL;
        host = a + 1;
        hlen = (size_t)(end - host);
        if (hlen == 0 || memchr(host, ':', hlen) == NULL)
            return CV_EINVAL;
        for (size_t i = 0; i < hlen; i++)
            if (!v6_char(host[i]))
                return CV_EINVAL;
        rest = end + 1;
    } else {
        const char *colon = memchr(a, ':', n);
        hlen = colon ? (size_t)(colon - a) : n;
        for (size_t i = 0; i < hlen; i++)
            if (!reg_name_char(a[i]))
                return CV_EINVAL;
        rest = a + hlen;
    }
    size_t rlen = n - (size_t)(rest - a);
    if (hlen == 0 || hlen >= sizeof(u->host))
        return CV_EINVAL;
    if (rlen > 0 && (rest[0] != ':' || parse_port(rest + 1, rlen - 1, &u->port) != 0))
        return CV_EINVAL;
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    return 0;
}

int cv_url_parse(const char *s, struct cv_url *u)
{
    const struct scheme *sc = NULL;

    memset(u, 0, sizeof(*u));
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        if (strncasecmp(s, schemes[i].prefix, strlen(schemes[i].prefix)) == 0) {
            sc = &schemes[i];
            break;
        }
    }
    if (sc == NULL)
        return CV_EINVAL;
    for (const char *c = s; *c != '\0'; c++)
        if (!url_char_ok((unsigned char)*c))
            return CV_EINVAL;

    const char *a = s + strlen(sc->prefix);
    size_t alen = strcspn(a, "/?");
    if (memchr(a, '@', alen) != NULL)
        return CV_EINVAL; /* userinfo: credentials do not belong in a URL */
    u->tls = sc->tls;
    u->port = sc->port;
    if (alen >= sizeof(u->authority) || parse_authority(a, alen, u) != 0)
        return CV_EINVAL;
    memcpy(u->authority, a, alen);
    u->authority[alen] = '\0';

    /* A bare "?q" query still needs the "/" path in the request line. */
    const char *path = a + alen;
    size_t plen = strlen(path);
    size_t pre = path[0] == '/' ? 0 : 1;
    if (plen + pre >= sizeof(u->path))
        return CV_EINVAL;
    u->path[0] = '/';
    memcpy(u->path + pre, path, plen);
    u->path[pre + plen] = '\0';
    return 0;
}
