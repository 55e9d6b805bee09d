/* Fuzzes the chunked decoder: whole input and one byte at a time must give
 * the same data, consumed count and result; slices stay inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/chunked.h"
#include "core/err.h"

/* Returns the bytes consumed through the end of the body, CV_EAGAIN if the
 * input ends first, or the error; data goes to out (at most n bytes). */
static int run(const char *p, size_t n, size_t step, char *out, size_t *out_len)
{
    struct cv_chunked c;
    size_t off = 0;

    cv_chunked_init(&c, 256);
    *out_len = 0;
    while (!cv_chunked_is_done(&c)) {
        if (off >= n)
            return CV_EAGAIN;
        size_t avail = n - off < step ? n - off : step;
        const char *d;
        size_t dl;
        int rc = cv_chunked_decode(&c, p + off, avail, &d, &dl);
        if (rc < 0)
            return rc;
        if ((size_t)rc > avail || (rc == 0 && !cv_chunked_is_done(&c)))
            abort(); /* must make progress */
        if (dl > 0) {
            if (d < p + off || d + dl > p + off + (size_t)rc)
                abort();
            memcpy(out + *out_len, d, dl);
            *out_len += dl;
        }
        off += (size_t)rc;
    }
    return (int)off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    char *a = malloc(size + 1), *b = malloc(size + 1);
    size_t al, bl;

    if (a == NULL || b == NULL)
        abort();
    int ra = run(p, size, size ? size : 1, a, &al);
    int rb = run(p, size, 1, b, &bl);
    if (ra != rb || (ra >= 0 && (al != bl || memcmp(a, b, al) != 0)))
        abort();
    if (ra >= 0 && (size_t)ra > size)
        abort();
    free(a);
    free(b);
    return 0;
}
