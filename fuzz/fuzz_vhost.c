/* Fuzzes virtual-host routing and head rewriting: any head the parser
 * accepts is routed without reading outside it, and its rewritten form
 * parses again with the same method, target and Host routing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/http.h"
#include "codec/vhost.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cv_http_head h, h2;
    static char out[CV_VHOST_REWRITE_MAX(20000)];
    if (size > 20000)
        return 0;
    int hl = cv_http_parse_request((const char *)data, size, 16384, &h);
    if (hl <= 0)
        return 0;
    const char *name, *name2;
    size_t len, len2;
    enum cv_vhost_route r = cv_vhost_route(&h, "example.com", &name, &len);
    if (r != CV_VHOST_BAD && (name < (const char *)data || name + len > (const char *)data + hl))
        abort();
    const char *proto = (data[0] & 1) ? "https" : "http";
    size_t n = cv_vhost_rewrite((const char *)data, (size_t)hl, &h, "192.0.2.1", proto, out,
                                CV_VHOST_REWRITE_MAX((size_t)hl));
    if (n == 0)
        abort(); /* CV_VHOST_REWRITE_MAX is always enough */
    int hl2 = cv_http_parse_request(out, n, sizeof out, &h2);
    if (hl2 != (int)n && h.nheaders + 3 <= CV_HTTP_MAX_HEADERS)
        abort();
    if (hl2 > 0) {
        if (h2.method_len != h.method_len || memcmp(h2.method, h.method, h.method_len) != 0 ||
            h2.target_len != h.target_len || memcmp(h2.target, h.target, h.target_len) != 0)
            abort();
        enum cv_vhost_route r2 = cv_vhost_route(&h2, "example.com", &name2, &len2);
        if (r2 != r || (r != CV_VHOST_BAD && (len2 != len || memcmp(name, name2, len) != 0)))
            abort();
        if (h2.chunked != h.chunked || h2.content_length != h.content_length)
            abort();
    }
    return 0;
}
