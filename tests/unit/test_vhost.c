/* codec/vhost: routing a request by Host and the forwarded head. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "codec/http.h"
#include "codec/vhost.h"

static struct cv_http_head head;

static int parse(const char *req)
{
    return cv_http_parse_request(req, strlen(req), 16384, &head);
}

static enum cv_vhost_route route(const char *req, char *name)
{
    const char *n;
    size_t len;
    assert_true(parse(req) > 0);
    enum cv_vhost_route r = cv_vhost_route(&head, "example.com", &n, &len);
    memcpy(name, n, len);
    name[len] = 0;
    return r;
}

static void test_route(void **state)
{
    char name[256];
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n", name), CV_VHOST_NAME);
    assert_string_equal(name, "app");
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: App.EXAMPLE.com:8080\r\n\r\n", name),
                     CV_VHOST_NAME);
    assert_string_equal(name, "App");
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: app.example.com.\r\n\r\n", name), CV_VHOST_NAME);
    assert_string_equal(name, "app");
    /* Absolute form wins over Host (RFC 9112 §3.2.2). */
    assert_int_equal(route("GET http://b.example.com:81/x?y HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
                           name),
                     CV_VHOST_NAME);
    assert_string_equal(name, "b");
    assert_int_equal(route("GET http://u:p@c.example.com/ HTTP/1.1\r\n\r\n", name), CV_VHOST_NAME);
    assert_string_equal(name, "c");
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: other.org\r\n\r\n", name), CV_VHOST_UNKNOWN);
    assert_string_equal(name, "other.org");
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", name), CV_VHOST_UNKNOWN);
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: a.b.example.com\r\n\r\n", name), CV_VHOST_UNKNOWN);
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: xexample.com\r\n\r\n", name), CV_VHOST_UNKNOWN);
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", name), CV_VHOST_UNKNOWN);
    assert_string_equal(name, "[::1]");
    assert_int_equal(route("GET / HTTP/1.1\r\n\r\n", name), CV_VHOST_BAD);
    assert_int_equal(route("GET / HTTP/1.1\r\nHost:\r\n\r\n", name), CV_VHOST_BAD);
    assert_int_equal(route("GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n",
                           name),
                     CV_VHOST_BAD);
}

static const char *rewrite_as(const char *req, const char *ip, const char *proto)
{
    static char out[4096];
    int hl = parse(req);
    assert_true(hl > 0);
    size_t n = cv_vhost_rewrite(req, (size_t)hl, &head, ip, proto, out, sizeof out - 1);
    assert_true(n > 0);
    out[n] = 0;
    return out;
}

static const char *rewrite(const char *req, const char *ip)
{
    return rewrite_as(req, ip, "http");
}

static void test_rewrite(void **state)
{
    assert_string_equal(rewrite("GET /a HTTP/1.1\r\nHost: app.example.com:8080\r\nAccept: */*\r\n\r\n",
                                "10.0.0.1"),
                        "GET /a HTTP/1.1\r\nHost: app.example.com:8080\r\nAccept: */*\r\n"
                        "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                        "X-Forwarded-Host: app.example.com:8080\r\n\r\n");
    /* Appends to the last X-Forwarded-For; forged Proto/Host lines go. */
    assert_string_equal(
        rewrite("POST / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: a.example.com\r\n"
                "X-Forwarded-Proto: https\r\nX-Forwarded-For:  2.2.2.2 \r\nx-forwarded-host: evil\r\n"
                "Content-Length: 0\r\n\r\n",
                "::1"),
        "POST / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: a.example.com\r\n"
        "X-Forwarded-For:  2.2.2.2, ::1 \r\nContent-Length: 0\r\n"
        "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example.com\r\n\r\n");
    assert_string_equal(rewrite("GET / HTTP/1.1\r\nX-Forwarded-For:\r\nHost: a.example.com\r\n\r\n",
                                "1.2.3.4"),
                        "GET / HTTP/1.1\r\nX-Forwarded-For:1.2.3.4\r\nHost: a.example.com\r\n"
                        "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example.com\r\n\r\n");
    /* An HTTPS visitor: Proto says so, a forged one is still dropped. */
    assert_string_equal(rewrite_as("GET / HTTP/1.1\r\nHost: a.example.com\r\n"
                                   "X-Forwarded-Proto: http\r\n\r\n",
                                   "1.2.3.4", "https"),
                        "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Forwarded-For: 1.2.3.4\r\n"
                        "X-Forwarded-Proto: https\r\nX-Forwarded-Host: a.example.com\r\n\r\n");
    /* Too small a buffer: 0. */
    const char *req = "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n";
    char small[40];
    int hl = parse(req);
    assert_int_equal(
        cv_vhost_rewrite(req, (size_t)hl, &head, "1.2.3.4", "http", small, sizeof small), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_rewrite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
