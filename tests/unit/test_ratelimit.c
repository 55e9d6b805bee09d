/* Per-key token buckets: burst, refill at the rate, keys independent,
 * bounded table with eviction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/ratelimit.h"

static void key_of(uint32_t n, uint8_t k[16])
{
    memset(k, 0, 16);
    k[10] = k[11] = 0xff; /* an IPv4-mapped address */
    k[12] = (uint8_t)(n >> 24), k[13] = (uint8_t)(n >> 16), k[14] = (uint8_t)(n >> 8);
    k[15] = (uint8_t)n;
}

static void test_burst_then_refill(void **state)
{
    struct cv_ratelimit *rl = cv_ratelimit_new(10, 5, 64); /* 10/s, burst 5 */
    assert_non_null(rl);
    uint8_t k[16];
    key_of(0x7f000001, k);
    for (int i = 0; i < 5; i++)
        assert_int_equal(cv_ratelimit_take(rl, k, 1000), 0);
    /* Empty: one token comes back after 100 ms. */
    assert_int_equal(cv_ratelimit_take(rl, k, 1000), 100);
    assert_int_equal(cv_ratelimit_take(rl, k, 1050), 50);
    assert_int_equal(cv_ratelimit_take(rl, k, 1100), 0);
    assert_true(cv_ratelimit_take(rl, k, 1100) > 0);
    /* A long pause refills to the burst, never beyond. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(cv_ratelimit_take(rl, k, 100000), 0);
    assert_true(cv_ratelimit_take(rl, k, 100000) > 0);
    cv_ratelimit_free(rl);
}

static void test_keys_are_independent(void **state)
{
    struct cv_ratelimit *rl = cv_ratelimit_new(1, 2, 64);
    uint8_t a[16], b[16];
    key_of(1, a);
    key_of(2, b);
    assert_int_equal(cv_ratelimit_take(rl, a, 0), 0);
    assert_int_equal(cv_ratelimit_take(rl, a, 0), 0);
    assert_int_equal(cv_ratelimit_take(rl, a, 0), 1000);
    assert_int_equal(cv_ratelimit_take(rl, b, 0), 0); /* b has its own bucket */
    assert_int_equal(cv_ratelimit_take(rl, a, 0), 1000);
    cv_ratelimit_free(rl);
}

static void test_bounded_table_evicts_idle_keys(void **state)
{
    struct cv_ratelimit *rl = cv_ratelimit_new(1, 1, 4); /* a single set of 4 ways */
    uint8_t k[16];
    key_of(100, k);
    assert_int_equal(cv_ratelimit_take(rl, k, 0), 0);
    assert_true(cv_ratelimit_take(rl, k, 0) > 0);
    /* Four other keys, each newer, push key 100 out (it is idle longest)... */
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t o[16];
        key_of(i, o);
        assert_int_equal(cv_ratelimit_take(rl, o, 10 + i), 0);
    }
    /* ... so it comes back with a full bucket: memory stays bounded. */
    assert_int_equal(cv_ratelimit_take(rl, k, 20), 0);
    /* The most recent keys are still limited. */
    uint8_t o3[16];
    key_of(3, o3);
    assert_true(cv_ratelimit_take(rl, o3, 20) > 0);
    cv_ratelimit_free(rl);
}

static void test_bad_arguments(void **state)
{
    assert_null(cv_ratelimit_new(0, 5, 64));
    assert_null(cv_ratelimit_new(5, 0.5, 64));
    assert_null(cv_ratelimit_new(5, 5, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_keys_are_independent),
        cmocka_unit_test(test_bounded_table_evicts_idle_keys),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
