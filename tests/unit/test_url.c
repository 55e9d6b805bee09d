/* ws:// URLs, and the numeric address helpers of net/addr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "codec/url.h"
#include "core/err.h"
#include "net/addr.h"

/* addr.c lives in culvert_lib, which also holds libuv code that unit tests
 * do not link; it is small and self-contained, so it is compiled in here. */
#include "../../src/net/addr.c"

struct good {
    const char *in;
    bool tls;
    const char *host;
    uint16_t port;
    const char *authority;
    const char *path;
};

static const struct good goods[] = {
    {"ws://127.0.0.1:8001/ws/tunnel/abc", false, "127.0.0.1", 8001, "127.0.0.1:8001",
     "/ws/tunnel/abc"},
    {"wss://relay.example.com/ws/tunnel/x?token=1", true, "relay.example.com", 443,
     "relay.example.com", "/ws/tunnel/x?token=1"},
    {"ws://host", false, "host", 80, "host", "/"},
    {"wss://host", true, "host", 443, "host", "/"},
    {"ws://host/", false, "host", 80, "host", "/"},
    {"ws://host?q=1", false, "host", 80, "host", "/?q=1"},
    {"http://a.b:8080/p/", false, "a.b", 8080, "a.b:8080", "/p/"},
    {"https://a.b/", true, "a.b", 443, "a.b", "/"},
    {"WS://Host:1/", false, "Host", 1, "Host:1", "/"},
    {"ws://[::1]:9000/x", false, "::1", 9000, "[::1]:9000", "/x"},
    {"wss://[2001:db8::1]", true, "2001:db8::1", 443, "[2001:db8::1]", "/"},
    {"ws://[::ffff:1.2.3.4]/", false, "::ffff:1.2.3.4", 80, "[::ffff:1.2.3.4]", "/"},
    {"ws://h:65535", false, "h", 65535, "h:65535", "/"},
    {"ws://under_score-dash.tld~:80", false, "under_score-dash.tld~", 80,
     "under_score-dash.tld~:80", "/"},
    {"ws://h/a%20b?c=d&e=f", false, "h", 80, "h", "/a%20b?c=d&e=f"},
};

static const char *const bads[] = {
    "",
    "ftp://host/",
    "ws:/host",
    "ws//host",
    "host:80",
    "ws://",
    "ws:///path",
    "ws://:80/",
    "ws://host:/",
    "ws://host:0/",
    "ws://host:65536/",
    "ws://host:99999999999/",
    "ws://host:-1/",
    "ws://host:+80/",
    "ws://host:8a/",
    "ws://host:80:81/",
    "ws://user@host/",
    "ws://user:pass@host/",
    "ws://host/p#frag",
    "ws://host/p q",
    "ws://ho st/",
    "ws://host/\t",
    "ws://host/\x7f",
    "ws://host/\x01",
    "ws://h\xc3\xa9/",
    "ws://[::1/",
    "ws://[]/",
    "ws://[::1]x/",
    "ws://[::1]:/",
    "ws://[zz::1]/",
    "ws://[1.2.3.4]/",
    "ws://::1/",
    "ws://host%2f/",
    " ws://host/",
};

static void test_good(void **state)
{
    for (size_t i = 0; i < sizeof(goods) / sizeof(goods[0]); i++) {
        const struct good *g = &goods[i];
        struct cv_url u;
        print_message("%s\n", g->in);
        assert_int_equal(cv_url_parse(g->in, &u), 0);
        assert_int_equal(u.tls, g->tls);
        assert_string_equal(u.host, g->host);
        assert_int_equal(u.port, g->port);
        assert_string_equal(u.authority, g->authority);
        assert_string_equal(u.path, g->path);
    }
}

static void test_bad(void **state)
{
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        struct cv_url u;
        print_message("%s\n", bads[i]);
        assert_int_equal(cv_url_parse(bads[i], &u), CV_EINVAL);
    }
}

static void test_oversize(void **state)
{
    static char s[CV_URL_MAX_PATH + 600];
    struct cv_url u;

    /* Host of 255 characters fits; 256 does not. */
    for (size_t hl = 255; hl <= 256; hl++) {
        memcpy(s, "ws://", 5);
        memset(s + 5, 'a', hl);
        memcpy(s + 5 + hl, "/", 2);
        assert_int_equal(cv_url_parse(s, &u), hl == 255 ? 0 : CV_EINVAL);
    }
    assert_int_equal(strlen(u.host), 0); /* cleared on failure */
    /* Path of CV_URL_MAX_PATH - 1 characters fits. */
    for (size_t pl = CV_URL_MAX_PATH - 1; pl <= CV_URL_MAX_PATH; pl++) {
        memcpy(s, "ws://h/", 7);
        memset(s + 7, 'p', pl - 1);
        s[6 + pl] = '\0';
        assert_int_equal(cv_url_parse(s, &u), pl < CV_URL_MAX_PATH ? 0 : CV_EINVAL);
    }
    /* "?q" gains a "/": one shorter is the most that fits. */
    memcpy(s, "ws://h?", 7);
    memset(s + 7, 'q', CV_URL_MAX_PATH - 3);
    s[7 + CV_URL_MAX_PATH - 3] = '\0';
    assert_int_equal(cv_url_parse(s, &u), 0);
    assert_int_equal(strlen(u.path), CV_URL_MAX_PATH - 1);
    s[7 + CV_URL_MAX_PATH - 3] = 'q';
    s[7 + CV_URL_MAX_PATH - 2] = '\0';
    assert_int_equal(cv_url_parse(s, &u), CV_EINVAL);
}

static void test_port_parse(void **state)
{
    uint16_t p = 7;
    assert_int_equal(cv_port_parse("0", &p), 0);
    assert_int_equal(p, 0);
    assert_int_equal(cv_port_parse("80", &p), 0);
    assert_int_equal(p, 80);
    assert_int_equal(cv_port_parse("65535", &p), 0);
    assert_int_equal(p, 65535);
    assert_int_equal(cv_port_parse("00080", &p), 0);
    assert_int_equal(p, 80);
    const char *bad[] = {"", "65536", "100000", "-1", "+1", " 80", "80 ", "0x50", "8o", "1e3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p = 7;
        assert_int_equal(cv_port_parse(bad[i], &p), CV_EINVAL);
        assert_int_equal(p, 7);
    }
}

static void test_addr(void **state)
{
    struct sockaddr_storage ss;
    char buf[CV_ADDR_STRLEN];

    assert_int_equal(cv_addr_parse("127.0.0.1:8080", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(cv_addr_port((struct sockaddr *)&ss), 8080);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)), "127.0.0.1:8080");
    assert_int_equal(cv_addr_parse("[::1]:443", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)), "[::1]:443");
    assert_int_equal(cv_addr_parse("0.0.0.0:0", &ss), 0);
    assert_int_equal(cv_addr_parse("[2001:db8::a:b]:65535", &ss), 0);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)),
                        "[2001:db8::a:b]:65535");

    const char *bad[] = {"",           "127.0.0.1",      "127.0.0.1:",     ":80",
                         "localhost:80", "1.2.3:80",     "1.2.3.4:65536",  "::1:80",
                         "[::1]",      "[::1]80",        "[1.2.3.4]:80",   "[::1:80",
                         "1.2.3.4:8o", "1.2.3.4: 80",    "01.2.3.4.5:1",   "[::1]:-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("%s\n", bad[i]);
        assert_int_equal(cv_addr_parse(bad[i], &ss), CV_EINVAL);
    }

    assert_int_equal(cv_addr_from("10.1.2.3", 22, &ss), 0);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)), "10.1.2.3:22");
    assert_int_equal(cv_addr_from("::", 1, &ss), 0);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)), "[::]:1");
    assert_int_equal(cv_addr_from("[fe80::1]", 2, &ss), 0);
    assert_int_equal(cv_addr_port((struct sockaddr *)&ss), 2);
    assert_int_equal(cv_addr_from("example.com", 80, &ss), CV_EINVAL);
    assert_int_equal(cv_addr_from("", 80, &ss), CV_EINVAL);

    /* A short buffer truncates instead of overflowing. */
    char tiny[6];
    assert_int_equal(cv_addr_from("10.1.2.3", 22, &ss), 0);
    assert_string_equal(cv_addr_str((struct sockaddr *)&ss, tiny, sizeof(tiny)), "10.1.");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),       cmocka_unit_test(test_bad),
        cmocka_unit_test(test_oversize),   cmocka_unit_test(test_port_parse),
        cmocka_unit_test(test_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
