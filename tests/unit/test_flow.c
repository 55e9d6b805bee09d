/* Flow-control bookkeeping: credit limits, half-window returns, growth
 * only while the consumer keeps up, and the session budget cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/err.h"
#include "tunnel/flow.h"

static void test_sender_cannot_exceed_window(void **state)
{
    struct cv_flow_budget b;
    struct cv_flow_rx rx;
    cv_flow_budget_init(&b, CV_FLOW_SESSION_CAP);
    cv_flow_rx_init(&rx, &b);
    assert_int_equal(cv_flow_rx_data(&rx, CV_FLOW_WINDOW0 - 1), 0);
    assert_int_equal(cv_flow_rx_data(&rx, 1), 0);
    assert_int_equal(cv_flow_rx_data(&rx, 1), CV_EPROTO);
    cv_flow_rx_fini(&rx, &b);
    assert_int_equal(b.granted, 0);
}

static void test_credit_returned_at_half_window(void **state)
{
    struct cv_flow_budget b;
    struct cv_flow_rx rx;
    cv_flow_budget_init(&b, CV_FLOW_SESSION_CAP);
    cv_flow_rx_init(&rx, &b);
    assert_int_equal(cv_flow_rx_data(&rx, CV_FLOW_WINDOW0), 0);
    /* Not idle: no growth, credit comes back only at half a window. */
    assert_int_equal(cv_flow_rx_consume(&rx, &b, CV_FLOW_WINDOW0 / 2 - 1, false), 0);
    assert_int_equal(cv_flow_rx_consume(&rx, &b, 1, false), CV_FLOW_WINDOW0 / 2);
    assert_int_equal(rx.window, CV_FLOW_WINDOW0);
    assert_int_equal(rx.outstanding, CV_FLOW_WINDOW0 / 2);
    cv_flow_rx_fini(&rx, &b);
}

static void test_window_grows_while_idle_up_to_max(void **state)
{
    struct cv_flow_budget b;
    struct cv_flow_rx rx;
    cv_flow_budget_init(&b, 1u << 30);
    cv_flow_rx_init(&rx, &b);
    for (int i = 0; i < 40; i++) {
        uint32_t give = rx.outstanding;
        assert_int_equal(cv_flow_rx_data(&rx, give), 0);
        uint32_t inc = cv_flow_rx_consume(&rx, &b, give, true);
        assert_true(inc >= give);
        /* Invariant: what the sender holds never exceeds the window. */
        assert_true(rx.outstanding <= rx.window);
    }
    assert_int_equal(rx.window, CV_FLOW_WINDOW_MAX);
    assert_int_equal(b.granted, CV_FLOW_WINDOW_MAX);
    cv_flow_rx_fini(&rx, &b);
    assert_int_equal(b.granted, 0);
}

static void test_budget_caps_growth(void **state)
{
    struct cv_flow_budget b;
    struct cv_flow_rx a, c;
    cv_flow_budget_init(&b, 3 * CV_FLOW_WINDOW0);
    cv_flow_rx_init(&a, &b);
    cv_flow_rx_init(&c, &b);
    assert_int_equal(cv_flow_rx_data(&a, CV_FLOW_WINDOW0), 0);
    /* 2 windows granted + 1 more fits the cap of 3: a grows once. */
    assert_int_equal(cv_flow_rx_consume(&a, &b, CV_FLOW_WINDOW0, true), 2 * CV_FLOW_WINDOW0);
    assert_int_equal(a.window, 2 * CV_FLOW_WINDOW0);
    assert_int_equal(cv_flow_rx_data(&a, 2 * CV_FLOW_WINDOW0), 0);
    /* Now at the cap: no more growth, plain credit return. */
    assert_int_equal(cv_flow_rx_consume(&a, &b, 2 * CV_FLOW_WINDOW0, true), 2 * CV_FLOW_WINDOW0);
    assert_int_equal(a.window, 2 * CV_FLOW_WINDOW0);
    assert_true(b.granted <= b.cap);
    cv_flow_rx_fini(&a, &b);
    cv_flow_rx_fini(&c, &b);
}

static void test_tx_window_overflow_refused(void **state)
{
    struct cv_flow_tx tx;
    cv_flow_tx_init(&tx);
    assert_int_equal(cv_flow_tx_window(&tx, 1000), 0);
    assert_int_equal(tx.credit, CV_FLOW_WINDOW0 + 1000);
    assert_int_equal(cv_flow_tx_window(&tx, UINT32_MAX), CV_EPROTO);
    assert_int_equal(tx.credit, CV_FLOW_WINDOW0 + 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sender_cannot_exceed_window),
        cmocka_unit_test(test_credit_returned_at_half_window),
        cmocka_unit_test(test_window_grows_while_idle_up_to_max),
        cmocka_unit_test(test_budget_caps_growth),
        cmocka_unit_test(test_tx_window_overflow_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
