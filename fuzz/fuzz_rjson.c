/* Fuzzes the Runner serializer JSON codec. Compaction into a copy and in
 * place agree, is idempotent and never grows the text; the top-level scan
 * and the input selection accept every compact text and return slices
 * inside it that are themselves compact JSON values. Decoding accepts only
 * what compaction accepts; a decoded tree encodes to text that decodes
 * again to a tree that encodes to the same text (a fixed point), and the
 * compact-input decoder agrees with it; the builder under both gives the
 * tree json_loadb gives. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/rjson.h"
#include "core/buf.h"
#include "core/err.h"

static void check_value(const char *p, size_t n)
{
    char *t = malloc(n ? n : 1);
    size_t l;
    if (t == NULL)
        abort();
    /* A selected slice is one compact value: compaction leaves it alone. */
    if (cv_rj_compact(p, n, t, &l, NULL) != 0 || l != n || memcmp(t, p, n) != 0)
        abort();
    free(t);
}

static void check_slice(const char *c, size_t len, struct cv_rj_slice s)
{
    if (!s.present)
        return;
    if (s.off > len || s.len > len - s.off || s.len == 0)
        abort();
    check_value(c + s.off, s.len);
}

static void check_decode(const char *in, size_t size, bool valid)
{
    char why[128];
    json_t *v = cv_rj_decode(in, size, why, sizeof why);
    if (v == NULL) {
        if (why[0] == '\0')
            abort(); /* every refusal says why */
        return;
    }
    if (!valid)
        abort();
    struct cv_buf a, b;
    cv_buf_init(&a, 1u << 26);
    cv_buf_init(&b, 1u << 26);
    int rc = cv_rj_encode(v, &a);
    if (rc == 0) {
        /* Encoder output is compact, valid JSON that decodes again. */
        const char *w;
        char *t = malloc(a.len ? a.len : 1);
        size_t tl;
        if (t == NULL || cv_rj_compact((char *)cv_buf_head(&a), a.len, t, &tl, &w) != 0 ||
            tl != a.len)
            abort();
        free(t);
        json_t *v2 = cv_rj_decode((char *)cv_buf_head(&a), a.len, why, sizeof why);
        if (v2 == NULL || cv_rj_encode(v2, &b) != 0 || a.len != b.len ||
            memcmp(cv_buf_head(&a), cv_buf_head(&b), a.len) != 0)
            abort();
        json_decref(v2);
    } else if (rc != CV_ETOOBIG) {
        abort();
    }
    /* The accessors never crash on any node. */
    double d;
    int64_t ms;
    (void)cv_rj_number(v, &d);
    (void)cv_rj_date_ms(v, &ms);
    (void)cv_rj_bigint(v);
    (void)cv_rj_is_undefined(v);
    (void)cv_rj_get(v, "__type");
    (void)cv_rj_get(v, "input");
    cv_buf_fini(&a);
    cv_buf_fini(&b);
    json_decref(v);
}

/* The builder gives json_loadb's tree (numbers beyond the double range
 * aside: jansson refuses them, the builder makes records), and refuses
 * what json_loadb refuses. */
static void check_build(const char *c, size_t cl)
{
    const char *why = NULL;
    json_error_t err;
    json_t *ref = json_loadb(c, cl, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &err);
    json_t *got = cv_rj_build(c, cl, &why);
    if (ref == NULL) {
        if (strstr(err.text, "overflow") == NULL && got != NULL)
            abort(); /* accepted what jansson refuses (not an overflow) */
    } else {
        if (got == NULL)
            abort();
        char *a = json_dumps(ref, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
        char *b = json_dumps(got, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (a == NULL || b == NULL || strcmp(a, b) != 0 || !json_equal(ref, got))
            abort();
        free(a);
        free(b);
    }
    if (got == NULL && why == NULL)
        abort();
    json_decref(ref);
    json_decref(got);
}

/* Decoding the compacted text without the check (as native handlers are
 * given their inputs) gives the same answer and the same tree. */
static void check_same_decode(const char *in, size_t size, const char *c, size_t cl)
{
    char why[128], why2[128];
    json_t *v = cv_rj_decode(in, size, why, sizeof why);
    json_t *w = cv_rj_decode_compact(c, cl, why2, sizeof why2);
    if ((v == NULL) != (w == NULL))
        abort();
    if (v != NULL) {
        struct cv_buf a, b;
        cv_buf_init(&a, 1u << 26);
        cv_buf_init(&b, 1u << 26);
        int ra = cv_rj_encode(v, &a), rb = cv_rj_encode(w, &b);
        if (ra != rb || a.len != b.len || memcmp(cv_buf_head(&a), cv_buf_head(&b), a.len) != 0)
            abort();
        cv_buf_fini(&a);
        cv_buf_fini(&b);
    }
    json_decref(v);
    json_decref(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *a = malloc(size + 1), *b = malloc(size + 1), *c = malloc(size + 1);
    size_t al = 0, bl = 0, cl = 0;
    const char *why = NULL, *why2 = NULL;

    if (a == NULL || b == NULL || c == NULL)
        abort();
    memcpy(b, in, size);
    int ra = cv_rj_compact(in, size, a, &al, &why);
    int rb = cv_rj_compact(b, size, b, &bl, &why2);
    if (ra != rb || (ra != 0 && (ra != CV_EPROTO || why == NULL || why2 == NULL)))
        abort();
    if (ra == 0) {
        if (al != bl || memcmp(a, b, al) != 0 || al > size || al == 0)
            abort();
        /* Idempotent. */
        if (cv_rj_compact(a, al, c, &cl, NULL) != 0 || cl != al || memcmp(a, c, al) != 0)
            abort();

        struct cv_rj_top top;
        if (cv_rj_top_scan(a, al, &top) != 0)
            abort();
        if (top.is_object != (a[0] == '{'))
            abort();
        check_slice(a, al, top.input);
        check_slice(a, al, top.payload);

        const char *text;
        size_t off, n;
        bool whole;
        if (cv_rj_select_input(a, al, &text, &off, &n, &whole) != 0 || text != a)
            abort();
        if (whole != top.is_graph || off > al || n > al - off)
            abort();
        check_value(a + off, n);
        if (top.input.present && !whole && (off != top.input.off || n != top.input.len))
            abort();
    } else {
        /* Arbitrary bytes never crash the readers either. */
        struct cv_rj_top top;
        (void)cv_rj_top_scan(in, size, &top);
        if (top.input.present && (top.input.off > size || top.input.len > size - top.input.off))
            abort();
    }
    check_decode(in, size, ra == 0);
    if (ra == 0) {
        check_same_decode(in, size, a, al);
        check_build(a, al);
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
