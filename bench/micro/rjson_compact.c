/* Micro benchmark: cv_rj_compact throughput (MB/s of input) on a ~1 KiB
 * request body and a ~1 MiB document, each compact and pretty-printed, and
 * the per-request cost of compact + cv_rj_select_input on the 1 KiB body.
 * Not built by CMake; from a build directory:
 *   cc -O2 -I../src ../bench/micro/rjson_compact.c libculvert_codec.a -ljansson -o rjson_compact
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/rjson.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: the box is shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Appends one record-ish item; pretty adds newlines and indentation. */
static size_t item(char *w, int i, int pretty)
{
    const char *nl = pretty ? "\n    " : "", *sp = pretty ? " " : "";
    return (size_t)sprintf(
        w,
        "{%s\"id\":%s%d,%s\"name\":%s\"user-%d \\u00e9t\\u00e9 caf\xc3\xa9\",%s"
        "\"score\":%s%d.%03d,%s\"tags\":%s[\"a\",%s\"bb\",%s\"ccc\"],%s"
        "\"when\":%s{\"__type\":\"Date\",\"value\":\"2024-01-01T00:00:00.000Z\"},%s"
        "\"ok\":%strue,%s\"none\":%snull}",
        nl, sp, i, nl, sp, i, nl, sp, i * 7, i % 1000, nl, sp, sp, sp, nl, sp, nl, sp, nl, sp);
}

static char *doc(size_t target, int pretty, size_t *len)
{
    char *p = malloc(target + 4096), *w = p;
    w += sprintf(w, "{\"input\":%s[", pretty ? " " : "");
    for (int i = 0; (size_t)(w - p) < target; i++) {
        if (i > 0)
            *w++ = ',';
        if (pretty)
            w += sprintf(w, "\n  ");
        w += item(w, i, pretty);
    }
    w += sprintf(w, "%s]}", pretty ? "\n" : "");
    *len = (size_t)(w - p);
    return p;
}

/* A body dominated by one long ASCII string (e.g. base64 data). */
static char *blob(size_t target, size_t *len)
{
    char *p = malloc(target + 64), *w = p;
    w += sprintf(w, "{\"input\":{\"data\":\"");
    while ((size_t)(w - p) < target)
        *w++ = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(w - p) % 64];
    w += sprintf(w, "\"}}");
    *len = (size_t)(w - p);
    return p;
}

static void run(const char *name, size_t target, int pretty)
{
    size_t len, out_len;
    char *in = pretty < 2 ? doc(target, pretty, &len) : blob(target, &len), *out = malloc(len);
    const char *why;
    long iters = (long)(200e6 / (double)len) + 1;
    double t0 = now();
    for (long i = 0; i < iters; i++) {
        if (cv_rj_compact(in, len, out, &out_len, &why) != 0) {
            fprintf(stderr, "refused: %s\n", why);
            exit(1);
        }
    }
    double dt = now() - t0;
    printf("%-28s %8zu B -> %8zu B  %8.0f MB/s  %8.2f us/op\n", name, len, out_len,
           (double)len * (double)iters / dt / 1e6, dt / (double)iters * 1e6);
    free(in);
    free(out);
}

int main(void)
{
    run("compact, 1 KiB compact", 1024, 0);
    run("compact, 1 KiB pretty", 1024, 1);
    run("compact, 1 MiB compact", 1 << 20, 0);
    run("compact, 1 MiB pretty", 1 << 20, 1);
    run("compact, 1 MiB one string", 1 << 20, 2);

    /* The worker hot path on a typical body: compact in place + select. */
    size_t len, out_len, off, n;
    char *in = doc(1024, 0, &len), *buf = malloc(len);
    const char *text;
    bool whole;
    long iters = 200000;
    double t0 = now();
    for (long i = 0; i < iters; i++) {
        memcpy(buf, in, len);
        if (cv_rj_compact(buf, len, buf, &out_len, NULL) != 0 ||
            cv_rj_select_input(buf, out_len, &text, &off, &n, &whole) != 0)
            return 1;
    }
    double dt = now() - t0;
    printf("%-28s %8zu B  %8.2f us/request (incl. memcpy)\n", "compact+select, 1 KiB", len,
           dt / (double)iters * 1e6);
    static const char add[] = "{\"input\":{\"a\":1,\"b\":2}}";
    t0 = now();
    iters = 5000000;
    for (long i = 0; i < iters; i++) {
        char b[sizeof add];
        memcpy(b, add, sizeof add - 1);
        if (cv_rj_compact(b, sizeof add - 1, b, &out_len, NULL) != 0 ||
            cv_rj_select_input(b, out_len, &text, &off, &n, &whole) != 0)
            return 1;
    }
    dt = now() - t0;
    printf("%-28s %8zu B  %8.0f ns/request\n", "compact+select, bench body", sizeof add - 1,
           dt / (double)iters * 1e9);
    free(in);
    free(buf);
    return 0;
}
