/* ws:// and wss:// URLs. Pure: no I/O. */
#ifndef CV_URL_H
#define CV_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_URL_MAX_HOST 256
#define CV_URL_MAX_PATH 2048

struct cv_url {
    bool tls;                   /* wss:// */
    char host[CV_URL_MAX_HOST]; /* without brackets for IPv6 literals */
    uint16_t port;              /* explicit or default 80/443 */
    char authority[CV_URL_MAX_HOST + 8]; /* host[:port] as written, for Host: */
    char path[CV_URL_MAX_PATH]; /* path + query, at least "/"; no trailing '/' trimmed */
};

/* Parses a ws:// or wss:// URL (also accepts http:// and https:// as
 * synonyms). Returns 0, or CV_EINVAL for another scheme, a missing host, a
 * bad port, userinfo, a fragment, control characters or oversize parts. */
int cv_url_parse(const char *s, struct cv_url *u);

#endif
