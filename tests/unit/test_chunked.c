/* Chunked transfer coding: whole input and one byte at a time agree,
 * extensions and trailers are skipped, malformed framing and oversized
 * sizes or trailers are refused, the bytes after the body are left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "codec/chunked.h"
#include "core/err.h"

#define S(lit) lit, sizeof(lit) - 1

/* Decodes p[0..n) feeding at most step bytes per call. Collects the data
 * into out and returns the bytes consumed, or the first error. */
static int run(const char *p, size_t n, size_t step, char *out, size_t *out_len, size_t max_extra)
{
    struct cv_chunked c;
    size_t off = 0, avail = 0;

    cv_chunked_init(&c, max_extra);
    *out_len = 0;
    while (!cv_chunked_is_done(&c)) {
        if (avail == 0) {
            if (off >= n)
                return CV_EAGAIN;
            avail = n - off < step ? n - off : step;
        }
        const char *d;
        size_t dl;
        int rc = cv_chunked_decode(&c, p + off, avail, &d, &dl);
        if (rc < 0)
            return rc;
        if (dl > 0) {
            assert_true(d >= p + off && d + dl <= p + off + (size_t)rc);
            memcpy(out + *out_len, d, dl);
            *out_len += dl;
        }
        off += (size_t)rc;
        avail -= (size_t)rc;
    }
    return (int)off;
}

static void expect(const char *p, size_t n, int want_rc, const char *want_data)
{
    static char out[4096];
    size_t len;
    for (size_t step = 1; step <= n + 1; step++) {
        int rc = run(p, n, step, out, &len, 64);
        assert_int_equal(rc, want_rc);
        if (rc >= 0) {
            assert_int_equal(len, strlen(want_data));
            assert_memory_equal(out, want_data, len);
        }
    }
}

static void test_basic(void **state)
{
    expect(S("5\r\nhello\r\n0\r\n\r\n"), 15, "hello");
    expect(S("3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"), 28, "abc0123456789");
    expect(S("0\r\n\r\n"), 5, "");
    /* Leading zeros and upper-case hex. */
    expect(S("0000B\r\nhello world\r\n00\r\n\r\n"), 26, "hello world");
    /* Bytes after the body are not consumed: the next pipelined request. */
    expect(S("1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 11, "x");
}

static void test_ext_trailers(void **state)
{
    expect(S("5;name=val\r\nhello\r\n0;x\r\n\r\n"), 26, "hello");
    expect(S("5 ;a=\"b c\"\r\nhello\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n"), 38, "hello");
}

static void test_malformed(void **state)
{
    expect(S("\r\n"), CV_EPROTO, NULL);
    expect(S("g\r\n"), CV_EPROTO, NULL);
    expect(S(";x\r\n"), CV_EPROTO, NULL);
    expect(S("5\nhello\r\n0\r\n\r\n"), CV_EPROTO, NULL);    /* bare LF */
    expect(S("5\rhello\r\n0\r\n\r\n"), CV_EPROTO, NULL);    /* bare CR */
    expect(S("5\r\nhelloX\r\n0\r\n\r\n"), CV_EPROTO, NULL); /* data longer than size */
    expect(S("5\r\nhello\n0\r\n\r\n"), CV_EPROTO, NULL);
    expect(S("0\r\nX: 1\n\r\n"), CV_EPROTO, NULL);
    expect(S("0\r\n\n"), CV_EPROTO, NULL);
    expect(S("1;a\x01\r\nx\r\n0\r\n\r\n"), CV_EPROTO, NULL);
    expect(S("0\r\nX: \x7f\r\n\r\n"), CV_EPROTO, NULL);
    expect(S("-1\r\n"), CV_EPROTO, NULL);
    expect(S("0x5\r\n"), CV_EPROTO, NULL);
}

static void test_limits(void **state)
{
    expect(S("1000000000000000\r\n"), CV_ETOOBIG, NULL);
    expect(S("0FFFFFFFFFFFFFFF\r\n"), CV_EAGAIN, NULL); /* 2^60-1: accepted, data missing */
    static char big[200];
    memset(big, 'a', sizeof big);
    memcpy(big, "0\r\nX: ", 6);
    memcpy(big + sizeof big - 4, "\r\n\r\n", 4);
    expect(big, sizeof big, CV_ETOOBIG, NULL);
    /* Truncated anywhere: incomplete, never an error. */
    static const char ok[] = "5;e\r\nhello\r\n0\r\nT: v\r\n\r\n";
    for (size_t i = 0; i + 1 < sizeof ok; i++)
        expect(ok, i, CV_EAGAIN, NULL);
}

static void test_remaining(void **state)
{
    struct cv_chunked c;
    const char *d;
    size_t dl;
    cv_chunked_init(&c, 0);
    assert_int_equal(cv_chunked_decode(&c, S("400\r\n"), &d, &dl), 5);
    assert_int_equal(dl, 0);
    assert_int_equal(cv_chunked_remaining(&c), 1024);
    assert_int_equal(cv_chunked_decode(&c, S("ab"), &d, &dl), 2);
    assert_int_equal(dl, 2);
    assert_int_equal(cv_chunked_remaining(&c), 1022);
    assert_false(cv_chunked_is_done(&c));
    /* max_extra 0: any extension is too big. */
    cv_chunked_init(&c, 0);
    assert_int_equal(cv_chunked_decode(&c, S("1;x\r\n"), &d, &dl), CV_ETOOBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),     cmocka_unit_test(test_ext_trailers),
        cmocka_unit_test(test_malformed), cmocka_unit_test(test_limits),
        cmocka_unit_test(test_remaining),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
