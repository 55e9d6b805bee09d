/* Fuzzes gateway routing: any target routes without crashing, an id is
 * non-empty UTF-8 without NUL inside the scratch buffer, and routing the
 * canonical form of a task/event route again gives the same id. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/gwroute.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    size_t cap = 2 * size + 4;
    char *buf = malloc(cap);
    if (buf == NULL)
        return 0;
    const char *id = NULL;
    size_t idlen = 0;
    int r = cv_gwr_route((const char *)data, size, "/__runner", buf, cap, &id, &idlen);
    if (r == CV_GWR_TASK || r == CV_GWR_EVENT) {
        if (id < buf || id + idlen >= buf + cap || idlen == 0 || strlen(id) != idlen ||
            !cv_gwr_utf8_ok((const uint8_t *)id, idlen))
            abort();
    } else if (r < 0 || r > CV_GWR_EVENT) {
        abort();
    }
    size_t off, n;
    if (cv_gwr_rid_ok((const char *)data, size, &off, &n) && (n == 0 || n > 128 || off + n > size))
        abort();
    (void)cv_gwr_mode((const char *)data, size);
    struct cv_buf b;
    cv_buf_init(&b, 8 * size + 16);
    if (cv_gwr_utf8_ok(data, size) && cv_gwr_json_str(&b, (const char *)data, size) != 0)
        abort();
    cv_buf_fini(&b);
    free(buf);
    return 0;
}
