/* Gateway envelopes and the §4.2 sanitisation of backend errors: which
 * members survive a 500, typed errors keep their message, a non-string
 * code becomes INTERNAL_ERROR, httpCode only when an integer 100..599,
 * other statuses drop stack/cause/sql, values are copied byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/internal.h"

static void check(int status, const char *in, int want_status, const char *want)
{
    struct cv_buf b;
    cv_buf_init(&b, 1 << 20);
    int st = status;
    assert_int_equal(cv_gwe_sanitized(&b, &st, in, in ? strlen(in) : 0), 0);
    if (st != want_status || b.len != strlen(want) || memcmp(cv_buf_head(&b), want, b.len) != 0)
        fail_msg("in %d %s\n got %d %.*s\nwant %d %s", status, in, st, (int)b.len,
                 (const char *)cv_buf_head(&b), want_status, want);
    cv_buf_fini(&b);
}

static void test_500(void **st)
{
    check(500,
          "{\"message\":\"secret db text\",\"code\":\"DB\",\"stack\":\"x\",\"sql\":\"select\"}",
          500, "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"DB\"}}");
    check(500, "{\"message\":\"m\",\"code\":7}", 500,
          "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"INTERNAL_ERROR\"}}");
    /* typed: the message stays; members in a fixed order; numbers as sent */
    check(500,
          "{\"httpCode\":1e3,\"data\":{\"n\":1.50},\"id\":\"app.errors.E\",\"code\":\"INTERNAL_"
          "ERROR\","
          "\"message\":\"own\",\"cause\":{}}",
          500,
          "{\"ok\":false,\"error\":{\"message\":\"own\",\"code\":\"INTERNAL_ERROR\",\"id\":\"app."
          "errors.E\","
          "\"data\":{\"n\":1.50}}}");
    check(500, "{\"message\":\"m\",\"code\":\"C\",\"id\":5,\"httpCode\":503}", 500,
          "{\"ok\":false,\"error\":{\"message\":\"Internal "
          "Error\",\"code\":\"C\",\"id\":5,\"httpCode\":503}}");
    check(500, "{\"message\":\"m\",\"code\":\"C\",\"httpCode\":99}", 500,
          "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"C\"}}");
    check(500, "{\"message\":\"m\",\"code\":\"C\",\"httpCode\":\"404\"}", 500,
          "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"C\"}}");
}

static void test_untyped_and_bad(void **st)
{
    const char *untyped =
        "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"INTERNAL_ERROR\"}}";
    check(500, NULL, 500, untyped);
    check(409, "not json", 500, untyped);
    check(400, "[1]", 500, untyped);
    check(200, "{\"message\":\"x\",\"code\":\"Y\"}", 500,
          "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"Y\"}}");
}

static void test_other_statuses(void **st)
{
    check(
        409,
        "{\"message\":\"{\\\"a\\\":1}\",\"code\":\"INTERNAL_ERROR\",\"id\":\"app.errors.AppError\","
        "\"data\":{\"a\":1},\"httpCode\":409,\"stack\":\"at "
        "x\",\"cause\":1,\"sql\":\"q\",\"extra\":[1, 2]}",
        409,
        "{\"ok\":false,\"error\":{\"message\":\"{\\\"a\\\":1}\",\"code\":\"INTERNAL_ERROR\","
        "\"id\":\"app.errors.AppError\",\"data\":{\"a\":1},\"httpCode\":409,\"extra\":[1, 2]}}");
    check(404, "{\"message\":\"Task x not found\",\"code\":\"NOT_FOUND\"}", 404,
          "{\"ok\":false,\"error\":{\"message\":\"Task x not found\",\"code\":\"NOT_FOUND\"}}");
    check(400, "{\"code\":3,\"message\":\"m\"}", 400,
          "{\"ok\":false,\"error\":{\"message\":\"m\",\"code\":\"INTERNAL_ERROR\"}}");
    check(401, "{\"code\":\"UNAUTHORIZED\"}", 401,
          "{\"ok\":false,\"error\":{\"message\":\"Internal Error\",\"code\":\"UNAUTHORIZED\"}}");
    check(400, " { \"message\" : \"s p\" , \"code\" : \"X\" } ", 400,
          "{\"ok\":false,\"error\":{\"message\":\"s p\",\"code\":\"X\"}}");
}

static void test_builders(void **st)
{
    struct cv_buf b;
    cv_buf_init(&b, 1 << 20);
    assert_int_equal(cv_gwe_error(&b, "C\"", "m\n"), 0);
    assert_memory_equal(cv_buf_head(&b),
                        "{\"ok\":false,\"error\":{\"message\":\"m\\n\",\"code\":\"C\\\"\"}}",
                        b.len);
    cv_buf_reset(&b);
    assert_int_equal(cv_gwe_result(&b, NULL, 0), 0);
    const char *u = "{\"ok\":true,\"result\":{\"__type\":\"Undefined\",\"value\":null}}";
    assert_int_equal(b.len, strlen(u));
    assert_memory_equal(cv_buf_head(&b), u, b.len);
    cv_buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_500),
        cmocka_unit_test(test_untyped_and_bad),
        cmocka_unit_test(test_other_statuses),
        cmocka_unit_test(test_builders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
