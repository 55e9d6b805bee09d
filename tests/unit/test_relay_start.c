/* cv_relay_start failures leave a loop that runs to the end cleanly: every
 * handle opened before the failure is closed and freed by its own callback
 * (a listener freed through the wrong pointer aborts here, in malloc's
 * checks or under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "core/err.h"
#include "relay/relay.h"

/* A listening socket on an ephemeral port, to make a bind fail. */
static uint16_t busy_port(uv_tcp_t *t, uv_loop_t *loop)
{
    struct sockaddr_in sa;
    struct sockaddr_storage got;
    int len = sizeof got;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_init(loop, t), 0);
    assert_int_equal(uv_tcp_bind(t, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)t, 8, NULL), 0);
    assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&got, &len), 0);
    return ntohs(((struct sockaddr_in *)&got)->sin_port);
}

static void test_vhost_listen_in_use(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_tcp_t busy;
    assert_int_equal(uv_loop_init(&loop), 0);
    uint16_t port = busy_port(&busy, &loop);

    struct cv_relay_opts o;
    cv_relay_opts_default(&o);
    o.port = 0;
    o.allow_anonymous = true;
    o.domain = "example.test";
    o.http_host = "127.0.0.1";
    o.http_port = port;
    struct cv_relay *r = NULL;
    assert_int_equal(cv_relay_start(&loop, &o, &r), UV_EADDRINUSE);

    uv_close((uv_handle_t *)&busy, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vhost_listen_in_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
