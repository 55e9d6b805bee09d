/* Gateway routing (spec §2): dot segments (also %2e), backslashes, the
 * query, absolute-form targets, empty segments, the base check, percent-
 * decoded UTF-8 ids; the request-id rule (§5.2); mode selection (§8.1);
 * JSON string escapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "codec/gwroute.h"
#include "core/err.h"

static int route(const char *target, const char *base, const char **idp)
{
    static char buf[4096];
    size_t idlen = 0;
    *idp = NULL;
    int r = cv_gwr_route(target, strlen(target), base, buf, sizeof buf, idp, &idlen);
    if (*idp)
        assert_int_equal(strlen(*idp), idlen);
    return r;
}

static void expect(const char *target, int kind, const char *id)
{
    const char *got;
    int r = route(target, "/__runner", &got);
    if (r != kind)
        fail_msg("%s: route %d, want %d", target, r, kind);
    if (id != NULL) {
        assert_non_null(got);
        if (strcmp(got, id) != 0)
            fail_msg("%s: id '%s', want '%s'", target, got, id);
    }
}

static void test_routes(void **st)
{
    expect("/__runner/task/app.tasks.add", CV_GWR_TASK, "app.tasks.add");
    expect("/__runner/event/app.events.notify", CV_GWR_EVENT, "app.events.notify");
    expect("/__runner/discovery", CV_GWR_DISCOVERY, NULL);
    expect("/__runner/discovery?x=1", CV_GWR_DISCOVERY, NULL);
    expect("/__runner//task//x", CV_GWR_TASK, "x");
    expect("/__runner/task/x/", CV_GWR_TASK, "x");
    expect("/__runner/task/app%2Ftasks.add", CV_GWR_TASK, "app/tasks.add");
    expect("/__runner/task/app/tasks.add", CV_GWR_TASK, "app/tasks.add");
    expect("/__runner/task/a%20b?q=1#f", CV_GWR_TASK, "a b");
    expect("/__runner/task/caf%C3%A9", CV_GWR_TASK, "caf\xc3\xa9");
    expect("/__runner/task/x/../y", CV_GWR_TASK, "y");
    expect("/__runner/task/x/%2e%2E/y", CV_GWR_TASK, "y");
    expect("/__runner/task/x/.%2e/y", CV_GWR_TASK, "y");
    expect("/__runner/./task/./x", CV_GWR_TASK, "x");
    expect("/__runner/foo/../task/z", CV_GWR_TASK, "z");
    expect("/__runner\\task\\w", CV_GWR_TASK, "w");
    expect("http://h:1/__runner/task/abs?x", CV_GWR_TASK, "abs");
    expect("/x/../__runner/task/t", CV_GWR_TASK, "t");
    /* Not found under base. */
    expect("/__runner", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/foo", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task//", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/Task/x", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task/%zz", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task/%4", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task/%ff", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task/%00", CV_GWR_UNKNOWN, NULL);
    expect("/__runner/task/x/..", CV_GWR_UNKNOWN, NULL);
    /* Outside base. */
    expect("/", CV_GWR_OUTSIDE, NULL);
    expect("/__runnerx/task/a", CV_GWR_OUTSIDE, NULL);
    expect("/__runner/../task/a", CV_GWR_OUTSIDE, NULL);
    expect("/other", CV_GWR_OUTSIDE, NULL);
    expect("*", CV_GWR_OUTSIDE, NULL);
    expect("//__runner/task/a", CV_GWR_OUTSIDE, NULL);
    /* Root base. */
    const char *id;
    assert_int_equal(route("/task/a", "", &id), CV_GWR_TASK);
    assert_string_equal(id, "a");
    /* Scratch too small. */
    char small[8];
    size_t n;
    assert_int_equal(
        cv_gwr_route("/__runner/task/a", 16, "/__runner", small, sizeof small, &id, &n), CV_EINVAL);
}

static void test_base(void **st)
{
    char out[64];
    assert_int_equal(cv_gwr_base_norm("/__runner", out, sizeof out), 0);
    assert_string_equal(out, "/__runner");
    assert_int_equal(cv_gwr_base_norm("api/", out, sizeof out), 0);
    assert_string_equal(out, "/api");
    assert_int_equal(cv_gwr_base_norm("/", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(cv_gwr_base_norm("", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(cv_gwr_base_norm("/a b", out, sizeof out), CV_EINVAL);
    assert_int_equal(cv_gwr_base_norm("/a?b", out, sizeof out), CV_EINVAL);
}

static void test_rid(void **st)
{
    size_t off, n;
    assert_true(cv_gwr_rid_ok("  abc-1.2_3:4 ", 14, &off, &n));
    assert_int_equal(off, 2);
    assert_int_equal(n, 11);
    char long_ok[129], too_long[130];
    memset(long_ok, 'a', 128);
    memset(too_long, 'a', 129);
    assert_true(cv_gwr_rid_ok(long_ok, 128, &off, &n));
    assert_false(cv_gwr_rid_ok(too_long, 129, &off, &n));
    assert_false(cv_gwr_rid_ok("", 0, &off, &n));
    assert_false(cv_gwr_rid_ok("   ", 3, &off, &n));
    assert_false(cv_gwr_rid_ok("a b", 3, &off, &n));
    assert_false(cv_gwr_rid_ok("a/b", 3, &off, &n));
    assert_false(cv_gwr_rid_ok("a\xc3\xa9", 3, &off, &n));
}

static void test_mode(void **st)
{
#define M(s) cv_gwr_mode(s, strlen(s))
    assert_int_equal(cv_gwr_mode(NULL, 0), CV_GWR_MODE_JSON);
    assert_int_equal(M("application/json; charset=utf-8"), CV_GWR_MODE_JSON);
    assert_int_equal(M("text/plain"), CV_GWR_MODE_JSON);
    assert_int_equal(M("multipart/form-data; boundary=x"), CV_GWR_MODE_MULTIPART);
    assert_int_equal(M("x; MULTIPART/FORM-DATA"), CV_GWR_MODE_MULTIPART);
    assert_int_equal(M("application/octet-stream"), CV_GWR_MODE_OCTET);
    assert_int_equal(M("Application/Octet-Stream;x=1"), CV_GWR_MODE_OCTET);
    assert_int_equal(M("application/octet-streamx"), CV_GWR_MODE_JSON);
    assert_int_equal(M(" application/octet-stream"), CV_GWR_MODE_JSON);
}

static void test_utf8_json(void **st)
{
    assert_true(cv_gwr_utf8_ok((const uint8_t *)"a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10));
    assert_false(cv_gwr_utf8_ok((const uint8_t *)"\xc0\x80", 2));         /* overlong */
    assert_false(cv_gwr_utf8_ok((const uint8_t *)"\xed\xa0\x80", 3));     /* surrogate */
    assert_false(cv_gwr_utf8_ok((const uint8_t *)"\xe2\x82", 2));         /* truncated */
    assert_false(cv_gwr_utf8_ok((const uint8_t *)"\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    struct cv_buf b;
    cv_buf_init(&b, 1024);
    assert_int_equal(cv_gwr_json_str(&b, "a\"\\\n\x01\xc3\xa9", 7), 0);
    assert_int_equal(b.len, strlen("\"a\\\"\\\\\\n\\u0001\xc3\xa9\""));
    assert_memory_equal(cv_buf_head(&b), "\"a\\\"\\\\\\n\\u0001\xc3\xa9\"", b.len);
    cv_buf_fini(&b);
}

/* The straightforward escaper, to check the eight-bytes-at-a-time one. */
static size_t ref_json_str(char *o, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t w = 0;
    o[w++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            o[w++] = '\\';
            o[w++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
            o[w++] = '\\';
            o[w++] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : c == '\b' ? 'b' : 'f';
        } else if (c < 0x20) {
            memcpy(o + w, "\\u00", 4);
            w += 4;
            o[w++] = hex[c >> 4];
            o[w++] = hex[c & 15];
        } else {
            o[w++] = (char)c;
        }
    }
    o[w++] = '"';
    return w;
}

/* Every length up to 40 with one or two special bytes at every place
 * (and bytes >= 0x80, which are copied as they are). */
static void test_json_str_positions(void **state)
{
    (void)state;
    static const unsigned char specials[] = {'"', '\\', '\n', 0x01, 0x1f, '\t', 0x7f, 0xc3};
    unsigned char in[40];
    char want[40 * 6 + 2];
    struct cv_buf b;
    cv_buf_init(&b, 1 << 16);
    for (size_t n = 0; n <= sizeof in; n++) {
        for (size_t at = 0; at <= n; at++) {
            for (size_t k = 0; k < sizeof specials; k++) {
                for (size_t i = 0; i < n; i++)
                    in[i] = (unsigned char)('a' + i % 26);
                if (at < n)
                    in[at] = specials[k];
                if (n > 0)
                    in[n - 1 - at % n] = specials[(k + 3) % sizeof specials];
                cv_buf_reset(&b);
                assert_int_equal(cv_gwr_json_str(&b, (const char *)in, n), 0);
                size_t wl = ref_json_str(want, in, n);
                assert_int_equal(b.len, wl);
                assert_memory_equal(cv_buf_head(&b), want, wl);
            }
        }
    }
    cv_buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes), cmocka_unit_test(test_base),      cmocka_unit_test(test_rid),
        cmocka_unit_test(test_mode),   cmocka_unit_test(test_utf8_json),
        cmocka_unit_test(test_json_str_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
