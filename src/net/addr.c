#include "net/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"

int cv_port_parse(const char *s, uint16_t *out)
{
    uint32_t v = 0;
    size_t n = strlen(s);

    /* Strictly decimal: no sign, no spaces, no hex, at most 5 digits, so
     * "8080x" or " 80" are errors instead of atoi's silent guesses. */
    if (n == 0 || n > 5)
        return CV_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return CV_EINVAL;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > 65535)
        return CV_EINVAL;
    *out = (uint16_t)v;
    return 0;
}

/* Parses the numeric host h[0..n) (IPv4, or IPv6 without brackets). */
static int host_from(const char *h, size_t n, uint16_t port, struct sockaddr_storage *out)
{
    char buf[INET6_ADDRSTRLEN];

    if (n == 0 || n >= sizeof(buf))
        return CV_EINVAL;
    memcpy(buf, h, n);
    buf[n] = '\0';
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return 0;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return 0;
    }
    return CV_EINVAL;
}

int cv_addr_from(const char *host, uint16_t port, struct sockaddr_storage *out)
{
    size_t n = strlen(host);

    /* Accept "[v6]" too, as users copy it from URLs. */
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']')
        return host_from(host + 1, n - 2, port, out);
    return host_from(host, n, port, out);
}

int cv_addr_parse(const char *s, struct sockaddr_storage *out)
{
    const char *host = s, *colon;
    size_t hlen;
    uint16_t port;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return CV_EINVAL;
        host = s + 1;
        hlen = (size_t)(end - host);
        colon = end + 1;
    } else {
        /* A bare IPv6 literal is ambiguous ("::1:80"): brackets required. */
        colon = strchr(s, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return CV_EINVAL;
        hlen = (size_t)(colon - s);
    }
    if (cv_port_parse(colon + 1, &port) != 0)
        return CV_EINVAL;
    int rc = host_from(host, hlen, port, out);
    if (rc == 0 && s[0] == '[' && out->ss_family != AF_INET6)
        return CV_EINVAL; /* "[1.2.3.4]:80" */
    if (rc == 0 && s[0] != '[' && out->ss_family != AF_INET)
        return CV_EINVAL;
    return rc;
}

const char *cv_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (len == 0)
        return buf;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(v4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(v6->sin6_port));
    } else {
        snprintf(buf, len, "(family %d)", (int)sa->sa_family);
    }
    return buf;
}

uint16_t cv_addr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

int cv_addr_split(const char *s, char *host, size_t hostlen, uint16_t *port)
{
    struct sockaddr_storage ss;
    char buf[CV_ADDR_STRLEN];
    if (cv_addr_parse(s, &ss) != 0)
        return CV_EINVAL;
    cv_addr_str((struct sockaddr *)&ss, buf, sizeof buf);
    char *colon = strrchr(buf, ':');
    *colon = 0;
    const char *h = buf;
    if (buf[0] == '[') {
        h = buf + 1;
        colon[-1] = 0;
    }
    if (strlen(h) >= hostlen)
        return CV_EINVAL;
    memcpy(host, h, strlen(h) + 1);
    *port = cv_addr_port((struct sockaddr *)&ss);
    return 0;
}

int cv_tcp_listen(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *sa, int backlog,
                  uv_connection_cb cb, struct sockaddr_storage *bound)
{
    /* No socket is made before the bind (AF_UNSPEC), so this cannot fail and
     * the handle is always there to close. */
    uv_tcp_init(loop, tcp);
    int rc = uv_tcp_bind(tcp, sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)tcp, backlog, cb);
    if (rc == 0 && bound != NULL) {
        int len = sizeof *bound;
        rc = uv_tcp_getsockname(tcp, (struct sockaddr *)bound, &len);
    }
    return rc;
}
