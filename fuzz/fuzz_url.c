/* Fuzzes the URL parser on a NUL-terminated copy of the input. An accepted
 * URL must satisfy the header's promises and parse again to the same
 * result when rebuilt from its parts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/url.h"
#include "core/err.h"

static void check(const struct cv_url *u)
{
    size_t hl = strnlen(u->host, sizeof(u->host));
    if (hl == 0 || hl == sizeof(u->host) || u->port == 0)
        abort();
    if (u->path[0] != '/' || strnlen(u->path, sizeof(u->path)) == sizeof(u->path))
        abort();
    if (strnlen(u->authority, sizeof(u->authority)) == sizeof(u->authority))
        abort();
    if (strpbrk(u->path, " #\r\n\t") != NULL || strpbrk(u->authority, "@/?# ") != NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cv_url u, v;
    static char again[sizeof(u.authority) + sizeof(u.path) + 16];
    char *s = malloc(size + 1);

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    int rc = cv_url_parse(s, &u);
    free(s);
    if (rc != 0) {
        if (rc != CV_EINVAL)
            abort();
        return 0;
    }
    check(&u);
    snprintf(again, sizeof(again), "%s://%s%s", u.tls ? "wss" : "ws", u.authority, u.path);
    if (cv_url_parse(again, &v) != 0 || memcmp(&u, &v, sizeof(u)) != 0)
        abort();
    return 0;
}
