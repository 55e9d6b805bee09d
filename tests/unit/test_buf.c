/* Capped byte buffers: the maximum is enforced, data survives growth and
 * compaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"

static void test_cap(void **state)
{
    struct cv_buf b;
    uint8_t data[100];

    memset(data, 'x', sizeof(data));
    cv_buf_init(&b, 100);
    assert_null(b.data);
    assert_int_equal(cv_buf_append(&b, data, 60), 0);
    assert_int_equal(cv_buf_append(&b, data, 41), CV_ETOOBIG);
    assert_int_equal(b.len, 60); /* unchanged by the failure */
    assert_int_equal(cv_buf_append(&b, data, 40), 0);
    assert_int_equal(b.len, 100);
    assert_true(b.cap <= 100);
    assert_int_equal(cv_buf_append(&b, data, 1), CV_ETOOBIG);
    assert_int_equal(cv_buf_reserve(&b, SIZE_MAX), CV_ETOOBIG);
    assert_int_equal(cv_buf_append(&b, data, 0), 0);
    cv_buf_fini(&b);

    cv_buf_init(&b, 0);
    assert_int_equal(cv_buf_append(&b, data, 1), CV_ETOOBIG);
    cv_buf_fini(&b);
    cv_buf_fini(NULL);
}

static void test_append_consume(void **state)
{
    struct cv_buf b;
    uint8_t src[10000];

    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 + 1);
    cv_buf_init(&b, 1 << 20);
    size_t in = 0, out = 0;
    /* A stream through the buffer in uneven pieces keeps its order. */
    while (out < sizeof(src)) {
        size_t n = (in * 3 + 17) % 701 + 1;
        if (n > sizeof(src) - in)
            n = sizeof(src) - in;
        assert_int_equal(cv_buf_append(&b, src + in, n), 0);
        in += n;
        size_t m = (out * 5 + 3) % 523 + 1;
        if (m > b.len)
            m = b.len;
        assert_memory_equal(cv_buf_head(&b), src + out, m);
        cv_buf_consume(&b, m);
        out += m;
        assert_int_equal(b.len, in - out);
    }
    assert_int_equal(b.len, 0);
    assert_int_equal(b.off, 0);
    cv_buf_fini(&b);
}

static void test_compaction(void **state)
{
    struct cv_buf b;
    uint8_t data[4096];

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    cv_buf_init(&b, 4096);
    assert_int_equal(cv_buf_append(&b, data, 4096), 0);
    uint8_t *store = b.data;
    cv_buf_consume(&b, 1000);
    assert_int_equal(b.off, 1000);
    /* Full at the tail but 1000 free at the head: moved, not reallocated,
     * and allowed because len + n stays within max. */
    assert_int_equal(cv_buf_append(&b, data, 1000), 0);
    assert_ptr_equal(b.data, store);
    assert_int_equal(b.off, 0);
    assert_memory_equal(cv_buf_head(&b), data + 1000, 3096);
    assert_memory_equal(cv_buf_head(&b) + 3096, data, 1000);
    assert_int_equal(cv_buf_append(&b, data, 1), CV_ETOOBIG);
    cv_buf_fini(&b);
}

static void test_reserve_commit_reset(void **state)
{
    struct cv_buf b;

    cv_buf_init(&b, 1 << 20);
    assert_int_equal(cv_buf_reserve(&b, 300), 0);
    assert_true(cv_buf_tailroom(&b) >= 300);
    memcpy(cv_buf_tail(&b), "abc", 3);
    cv_buf_commit(&b, 3);
    assert_int_equal(b.len, 3);
    assert_memory_equal(cv_buf_head(&b), "abc", 3);
    size_t cap = b.cap;
    cv_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap); /* storage kept */

    /* Emptying a large buffer releases its storage. */
    assert_int_equal(cv_buf_reserve(&b, 200000), 0);
    cv_buf_commit(&b, 200000);
    cv_buf_consume(&b, 200000);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(cv_buf_append(&b, "z", 1), 0); /* and is usable again */
    assert_memory_equal(cv_buf_head(&b), "z", 1);
    cv_buf_fini(&b);
}

/* cv_buf_drop keeps a large buffer's storage for the next round (a stream
 * that keeps flowing); cv_buf_trim frees it once it stays empty. */
static void test_drop_trim(void **state)
{
    (void)state;
    struct cv_buf b;
    cv_buf_init(&b, 1 << 20);
    assert_int_equal(cv_buf_reserve(&b, 200000), 0);
    memset(cv_buf_tail(&b), 'x', 200000);
    cv_buf_commit(&b, 200000);
    size_t cap = b.cap;
    uint8_t *data = b.data;
    cv_buf_drop(&b, 150000);
    assert_int_equal(b.len, 50000);
    assert_int_equal(b.off, 150000);
    cv_buf_trim(&b); /* not empty: nothing freed */
    assert_ptr_equal(b.data, data);
    cv_buf_drop(&b, 50000);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.off, 0); /* the next append starts at the front */
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(cv_buf_append(&b, "ab", 2), 0);
    assert_ptr_equal(b.data, data); /* reused, no new allocation */
    assert_memory_equal(cv_buf_head(&b), "ab", 2);
    cv_buf_drop(&b, 2);
    cv_buf_trim(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);

    /* Small storage is kept by trim, as by consume. */
    assert_int_equal(cv_buf_append(&b, "z", 1), 0);
    cv_buf_drop(&b, 1);
    cv_buf_trim(&b);
    assert_non_null(b.data);
    cv_buf_fini(&b);
}

/* Decimal formatting, and the inline append honouring max once storage
 * is already there (storage larger than max must not let bytes past it). */
static void test_u64_and_inline_max(void **state)
{
    (void)state;
    char d[20];
    assert_int_equal(cv_u64_dec(d, 0), 1);
    assert_memory_equal(d, "0", 1);
    assert_int_equal(cv_u64_dec(d, 1234567890), 10);
    assert_memory_equal(d, "1234567890", 10);
    assert_int_equal(cv_u64_dec(d, UINT64_MAX), 20);
    assert_memory_equal(d, "18446744073709551615", 20);

    struct cv_buf b;
    cv_buf_init(&b, 100);
    assert_int_equal(cv_buf_append_u64(&b, 42), 0);
    assert_int_equal(b.len, 2);
    assert_memory_equal(cv_buf_head(&b), "42", 2);
    b.max = 10; /* lowered below the storage already held */
    assert_int_equal(cv_buf_append(&b, "12345678", 8), 0);
    assert_int_equal(cv_buf_append(&b, "x", 1), CV_ETOOBIG);
    assert_int_equal(b.len, 10);
    cv_buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_append_consume),
        cmocka_unit_test(test_compaction),
        cmocka_unit_test(test_reserve_commit_reset),
        cmocka_unit_test(test_drop_trim),
        cmocka_unit_test(test_u64_and_inline_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
