/* HTTP/1.1 heads via llhttp: typical messages, the spec §2 handshake,
 * resumability, smuggling guards, limits and garbage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/http.h"
#include "core/err.h"
#include "core/limits.h"

#define S(lit) lit, sizeof(lit) - 1
#define MAXH CV_LIMIT_HTTP_HEAD

static void assert_slice(const char *p, size_t n, const char *want)
{
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

static void assert_header(const struct cv_http_head *h, const char *name, const char *value)
{
    const struct cv_http_header *hd = cv_http_find(h, name);
    assert_non_null(hd);
    assert_slice(hd->value, hd->value_len, value);
}

typedef int (*parse_fn)(const char *, size_t, size_t, struct cv_http_head *);

/* Feeds growing prefixes: CV_EAGAIN for each, then the whole-input result. */
static int parse_bytewise(parse_fn fn, const char *p, size_t n, struct cv_http_head *h)
{
    int rc = CV_EAGAIN;
    size_t i;
    for (i = 0; i <= n && rc == CV_EAGAIN; i++)
        rc = fn(p, i, MAXH, h);
    return rc;
}

static const char handshake[] = "GET /ws/tunnel/abc123 HTTP/1.1\r\n"
                                "Host: 127.0.0.1:8001\r\n"
                                "Connection: Upgrade\r\n"
                                "Upgrade: websocket\r\n"
                                "Sec-WebSocket-Version: 13\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                "\r\n";

static void check_handshake(const struct cv_http_head *h)
{
    assert_true(h->is_request);
    assert_slice(h->method, h->method_len, "GET");
    assert_slice(h->target, h->target_len, "/ws/tunnel/abc123");
    assert_int_equal(h->version_major, 1);
    assert_int_equal(h->version_minor, 1);
    assert_true(h->upgrade);
    assert_int_equal(h->nheaders, 5);
    assert_slice(h->headers[0].name, h->headers[0].name_len, "Host");
    assert_header(h, "host", "127.0.0.1:8001");
    assert_header(h, "SEC-WEBSOCKET-KEY", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_header(h, "sec-websocket-version", "13");
    assert_null(cv_http_find(h, "Origin"));
    assert_int_equal(h->content_length, -1);
    assert_false(h->chunked);
}

static void test_handshake(void **state)
{
    struct cv_http_head h;
    size_t n = strlen(handshake);

    assert_int_equal(cv_http_parse_request(handshake, n, MAXH, &h), (int)n);
    check_handshake(&h);
    assert_int_equal(parse_bytewise(cv_http_parse_request, handshake, n, &h), (int)n);
    check_handshake(&h);

    /* Bytes after the head (the first WebSocket frame) are not consumed. */
    char buf[512];
    memcpy(buf, handshake, n);
    memcpy(buf + n, "\x82\x80\x01\x02\x03\x04", 6);
    assert_int_equal(cv_http_parse_request(buf, n + 6, MAXH, &h), (int)n);
    check_handshake(&h);
}

static void test_response_101(void **state)
{
    const char r[] = "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    struct cv_http_head h;
    size_t n = strlen(r);

    assert_int_equal(cv_http_parse_response(r, n, MAXH, &h), (int)n);
    assert_false(h.is_request);
    assert_int_equal(h.status, 101);
    assert_true(h.upgrade);
    assert_header(&h, "sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(parse_bytewise(cv_http_parse_response, r, n, &h), (int)n);
    assert_int_equal(h.status, 101);

    /* A 200 advertising Upgrade is not a switch. */
    const char r2[] = "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
                      "Content-Length: 0\r\n\r\n";
    assert_int_equal(cv_http_parse_response(S(r2), MAXH, &h), (int)strlen(r2));
    assert_false(h.upgrade);
    assert_int_equal(h.content_length, 0);
}

static void test_typical(void **state)
{
    const char q[] = "POST /api/v1/task?x=1 HTTP/1.1\r\n"
                     "Host: example.com\r\n"
                     "Content-Type:   application/json  \r\n"
                     "Content-Length: 13\r\n"
                     "X-Empty:\r\n"
                     "\r\n"
                     "{\"a\": \"body\"}";
    struct cv_http_head h;
    size_t head = strlen(q) - 13;

    assert_int_equal(cv_http_parse_request(S(q), MAXH, &h), (int)head);
    assert_slice(h.method, h.method_len, "POST");
    assert_slice(h.target, h.target_len, "/api/v1/task?x=1");
    assert_int_equal(h.content_length, 13);
    assert_false(h.chunked);
    assert_false(h.upgrade);
    assert_true(h.keep_alive);
    assert_header(&h, "content-type", "application/json");
    assert_header(&h, "x-empty", "");
    assert_int_equal(parse_bytewise(cv_http_parse_request, q, strlen(q), &h), (int)head);
    assert_int_equal(h.content_length, 13);

    const char c[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_int_equal(cv_http_parse_response(S(c), MAXH, &h), 47);
    assert_true(h.chunked);
    assert_int_equal(h.content_length, -1);
    assert_int_equal(h.status, 200);

    const char h10[] = "GET / HTTP/1.0\r\n\r\n";
    assert_int_equal(cv_http_parse_request(S(h10), MAXH, &h), (int)strlen(h10));
    assert_int_equal(h.version_minor, 0);
    assert_false(h.keep_alive);
    const char close[] = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_int_equal(cv_http_parse_request(S(close), MAXH, &h), (int)strlen(close));
    assert_false(h.keep_alive);
    assert_false(h.upgrade);

    const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";
    assert_int_equal(cv_http_parse_response(S(nf), MAXH, &h), (int)strlen(nf) - 9);
    assert_int_equal(h.status, 404);
    assert_int_equal(h.content_length, 9);

    /* CONNECT is not an upgrade in our sense. */
    const char co[] = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    assert_int_equal(cv_http_parse_request(S(co), MAXH, &h), (int)strlen(co));
    assert_false(h.upgrade);
    assert_slice(h.target, h.target_len, "example.com:443");
}

static void test_bare_cr_lf(void **state)
{
    struct cv_http_head h;
    const char *bad[] = {
        "GET / HTTP/1.1\rHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "GET / HTTP/1.1\r\nX: a\r\r\n\r\n",
        "\n",
        "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
    };
    const size_t lens[] = {0, 0, 0, 0, 0, 0, 0, 28};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = lens[i] ? lens[i] : strlen(bad[i]);
        assert_int_equal(cv_http_parse_request(bad[i], n, MAXH, &h), CV_EPROTO);
        assert_int_equal(parse_bytewise(cv_http_parse_request, bad[i], n, &h), CV_EPROTO);
    }
    /* A CR as the last byte received may still be followed by LF. */
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r"), MAXH, &h), CV_EAGAIN);
}

static void test_oversize(void **state)
{
    struct cv_http_head h;
    size_t n = 2 * MAXH;
    char *big = malloc(n);
    assert_non_null(big);

    memcpy(big, "GET / HTTP/1.1\r\n", 16);
    size_t off = 16;
    while (off + 12 < n) {
        memcpy(big + off, "X-Pad: yyyy\r\n", 13);
        off += 13;
    }
    /* Incomplete and under the limit: wait; at the limit: too big. */
    assert_int_equal(cv_http_parse_request(big, 1000, MAXH, &h), CV_EAGAIN);
    assert_int_equal(cv_http_parse_request(big, MAXH - 1, MAXH, &h), CV_EAGAIN);
    assert_int_equal(cv_http_parse_request(big, MAXH, MAXH, &h), CV_ETOOBIG);
    assert_int_equal(cv_http_parse_request(big, n, MAXH, &h), CV_ETOOBIG);

    /* A complete head one byte over a small limit, then exactly at it. */
    const char q[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t ql = strlen(q);
    assert_int_equal(cv_http_parse_request(q, ql, ql - 1, &h), CV_ETOOBIG);
    assert_int_equal(cv_http_parse_request(q, ql, ql, &h), (int)ql);
    free(big);
}

static void test_too_many_headers(void **state)
{
    struct cv_http_head h;
    char buf[4096];
    size_t off;

    for (size_t count = CV_HTTP_MAX_HEADERS; count <= CV_HTTP_MAX_HEADERS + 1; count++) {
        off = 0;
        memcpy(buf, "GET / HTTP/1.1\r\n", 16);
        off = 16;
        for (size_t i = 0; i < count; i++)
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, "H%zu: v\r\n", i);
        memcpy(buf + off, "\r\n", 2);
        off += 2;
        int rc = cv_http_parse_request(buf, off, MAXH, &h);
        if (count == CV_HTTP_MAX_HEADERS) {
            assert_int_equal(rc, (int)off);
            assert_int_equal(h.nheaders, CV_HTTP_MAX_HEADERS);
            assert_header(&h, "h63", "v");
        } else {
            assert_int_equal(rc, CV_ETOOBIG);
            assert_int_equal(parse_bytewise(cv_http_parse_request, buf, off, &h), CV_ETOOBIG);
        }
    }
}

static void test_garbage(void **state)
{
    struct cv_http_head h;
    const char tls[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    /* Early refusal: no need to wait for max_head bytes. */
    assert_int_equal(cv_http_parse_request(tls, sizeof(tls) - 1, MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_request("\x16\x03\x01", 3, MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET\r\n\r\n"), MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("SSH-2.0-OpenSSH_9.2\r\n"), MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), MAXH, &h),
                     CV_EPROTO); /* obs-fold */
    /* obs-fold after an empty value (llhttp folds it in without a trace). */
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\nX:\r\n b\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\n\tX: b\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_response(S("HTTP/1.1 200 OK\r\nX:\r\n\tb\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/1.1\r\nX : a\r\n\r\n"), MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("GET / HTTP/9.9\r\n\r\n"), MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_response(S("HTTP/1.1 abc OK\r\n\r\n"), MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_response(S("GET / HTTP/1.1\r\n\r\n"), MAXH, &h), CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("HTTP/1.1 200 OK\r\n\r\n"), MAXH, &h), CV_EPROTO);
    /* Smuggling: both Content-Length and chunked, or two lengths. */
    assert_int_equal(cv_http_parse_request(S("POST / HTTP/1.1\r\nContent-Length: 3\r\n"
                                             "Transfer-Encoding: chunked\r\n\r\n"),
                                           MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request(S("POST / HTTP/1.1\r\nContent-Length: 3\r\n"
                                             "Content-Length: 4\r\n\r\n"),
                                           MAXH, &h),
                     CV_EPROTO);
    assert_int_equal(cv_http_parse_request("", 0, MAXH, &h), CV_EAGAIN);
}

static void test_helpers(void **state)
{
    assert_true(cv_http_has_token(S("Upgrade"), "upgrade"));
    assert_true(cv_http_has_token(S("keep-alive, Upgrade"), "upgrade"));
    assert_true(cv_http_has_token(S("  keep-alive ,\tUPGRADE  "), "upgrade"));
    assert_true(cv_http_has_token(S(",,upgrade,,"), "upgrade"));
    assert_false(cv_http_has_token(S("upgrade2"), "upgrade"));
    assert_false(cv_http_has_token(S("no-upgrade"), "upgrade"));
    assert_false(cv_http_has_token(S(""), "upgrade"));
    assert_false(cv_http_has_token(S("upgr"), "upgrade"));
    assert_false(cv_http_has_token(S("up grade"), "upgrade"));
    assert_string_equal(cv_http_reason(101), "Switching Protocols");
    assert_string_equal(cv_http_reason(200), "OK");
    assert_string_equal(cv_http_reason(404), "Not Found");
    assert_string_equal(cv_http_reason(502), "Bad Gateway");
    assert_string_equal(cv_http_reason(999), "Unknown");
    assert_string_equal(cv_http_reason(-1), "Unknown");
    assert_string_equal(cv_http_reason(413), "Content Too Large");
    assert_string_equal(cv_http_reason_node(413), "Payload Too Large");
    assert_string_equal(cv_http_reason_node(418), "I'm a Teapot");
    assert_string_equal(cv_http_reason_node(999), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake),   cmocka_unit_test(test_response_101),
        cmocka_unit_test(test_typical),     cmocka_unit_test(test_bare_cr_lf),
        cmocka_unit_test(test_oversize),    cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_garbage),     cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
