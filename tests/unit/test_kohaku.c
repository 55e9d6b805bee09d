/* KohakuRiver tunnel messages: spec §10 vectors, byte-exact both ways. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "codec/kohaku.h"
#include "core/err.h"

struct vec {
    const char *hex;
    uint8_t type, proto;
    uint32_t id;
    uint16_t port;
    const char *payload;
};

/* specs/kohaku-tunnel.md §10, hex with the spec's grouping spaces. */
static const struct vec vectors[] = {
    {"01 00 00000001 1f90", 1, 0, 1, 8080, ""},
    {"02 00 00000001 0000", 2, 0, 1, 0, ""},
    {"03 00 0000002a 0000 68656c6c6f", 3, 0, 42, 0, "hello"},
    {"04 01 00000007 0000", 4, 1, 7, 0, ""},
    {"05 00 00000002 0000 436f6e6e656374696f6e207265667573656420286f73206572726f722031313129", 5, 0,
     2, 0, "Connection refused (os error 111)"},
    {"07 00 01020304 0000", 7, 0, 0x01020304, 0, ""},
    {"06 00 00000000 0000", 6, 0, 0, 0, ""},
    {"01 01 ffffffff ffff", 1, 1, 0xffffffff, 65535, ""},
    {"03 01 00000003 0000", 3, 1, 3, 0, ""},
    {"02 01 12345678 0000", 2, 1, 305419896, 0, ""},
    {"05 00 00000009 0000 54756e6e656c2073656e64206661696c6564", 5, 0, 9, 0, "Tunnel send failed"},
};

static size_t unhex(const char *s, uint8_t *out)
{
    size_t n = 0;
    while (*s != '\0') {
        if (*s == ' ') {
            s++;
            continue;
        }
        unsigned v;
        assert_int_equal(sscanf(s, "%2x", &v), 1);
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static void test_decode_vectors(void **state)
{
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        const struct vec *v = &vectors[i];
        uint8_t buf[128];
        size_t n = unhex(v->hex, buf);
        struct cv_kh_msg m;
        assert_int_equal(cv_kh_decode(buf, n, &m), 0);
        assert_int_equal(m.type, v->type);
        assert_int_equal(m.proto, v->proto);
        assert_int_equal(m.id, v->id);
        assert_int_equal(m.port, v->port);
        assert_int_equal(m.len, strlen(v->payload));
        assert_ptr_equal(m.payload, buf + 8);
        if (m.len > 0)
            assert_memory_equal(m.payload, v->payload, m.len);
    }
}

static void test_encode_vectors(void **state)
{
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        const struct vec *v = &vectors[i];
        uint8_t want[128], got[CV_KH_HDR_LEN];
        unhex(v->hex, want);
        cv_kh_encode(got, v->type, v->proto, v->id, v->port);
        assert_memory_equal(got, want, CV_KH_HDR_LEN);
    }
}

static void test_negative_vectors(void **state)
{
    uint8_t buf[16];
    struct cv_kh_msg m;
    size_t n;

    n = unhex("030000", buf);
    assert_int_equal(cv_kh_decode(buf, n, &m), CV_EAGAIN);
    assert_int_equal(cv_kh_decode(buf, 0, &m), CV_EAGAIN);
    assert_int_equal(cv_kh_decode(buf, 7, &m), CV_EAGAIN);

    /* Still filled, so the relay can pass type 8 on verbatim. */
    n = unhex("0800000000010000", buf);
    assert_int_equal(cv_kh_decode(buf, n, &m), CV_EPROTO);
    assert_int_equal(m.type, 8);
    assert_int_equal(m.id, 1);

    n = unhex("0102000000090050", buf);
    assert_int_equal(cv_kh_decode(buf, n, &m), CV_EPROTO);
    assert_int_equal(m.proto, 2);
    assert_int_equal(m.id, 9);
    assert_int_equal(m.port, 80);

    n = unhex("0000000000000000", buf);
    assert_int_equal(cv_kh_decode(buf, n, &m), CV_EPROTO);
}

static void test_set_id(void **state)
{
    uint8_t buf[32];
    size_t n = unhex("03 00 0000002a 0000 68656c6c6f", buf);
    uint8_t want[32];
    unhex("03 00 deadbeef 0000 68656c6c6f", want);
    cv_kh_set_id(buf, 0xdeadbeef);
    assert_memory_equal(buf, want, n);
}

static void test_round_trip(void **state)
{
    uint32_t ids[] = {0, 1, 0x7f, 0x80, 0xffff, 0x10000, 0x80000000u, 0xffffffffu};
    uint16_t ports[] = {0, 1, 80, 0x100, 0xffff};
    for (uint8_t t = 1; t <= 7; t++)
        for (uint8_t pr = 0; pr <= 1; pr++)
            for (size_t i = 0; i < 8; i++)
                for (size_t j = 0; j < 5; j++) {
                    uint8_t b[CV_KH_HDR_LEN];
                    struct cv_kh_msg m;
                    cv_kh_encode(b, t, pr, ids[i], ports[j]);
                    assert_int_equal(cv_kh_decode(b, sizeof(b), &m), 0);
                    assert_true(m.type == t && m.proto == pr && m.id == ids[i] &&
                                m.port == ports[j] && m.len == 0);
                }
}

static void test_type_names(void **state)
{
    assert_string_equal(cv_kh_type_name(CV_KH_CONNECT), "CONNECT");
    assert_string_equal(cv_kh_type_name(CV_KH_CONNECTED), "CONNECTED");
    assert_string_equal(cv_kh_type_name(CV_KH_DATA), "DATA");
    assert_string_equal(cv_kh_type_name(CV_KH_CLOSE), "CLOSE");
    assert_string_equal(cv_kh_type_name(CV_KH_ERROR), "ERROR");
    assert_string_equal(cv_kh_type_name(CV_KH_PING), "PING");
    assert_string_equal(cv_kh_type_name(CV_KH_PONG), "PONG");
    assert_string_equal(cv_kh_type_name(0), "UNKNOWN");
    assert_string_equal(cv_kh_type_name(CV_KH_WINDOW), "WINDOW");
    assert_string_equal(cv_kh_type_name(CV_KH_EXPOSED), "EXPOSED");
    assert_string_equal(cv_kh_type_name(CV_KH_UNEXPOSE), "UNEXPOSE");
    assert_string_equal(cv_kh_type_name(12), "UNKNOWN");
    assert_string_equal(cv_kh_type_name(255), "UNKNOWN");
}

/* Native types are valid only through the native decoder; the KohakuRiver
 * decoder still treats them as unknown (negative vector `08 ...`). */
static void test_native_types(void **state)
{
    static const uint8_t win[] = {0x08, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
                                  0x00, 0x04, 0x00, 0x00};
    struct cv_kh_msg m;
    assert_int_equal(cv_kh_decode(win, sizeof win, &m), CV_EPROTO);
    assert_int_equal(cv_kh_decode_native(win, sizeof win, &m), 0);
    assert_int_equal(m.type, CV_KH_WINDOW);
    assert_int_equal(m.id, 5);
    assert_int_equal(m.len, 4);
    static const uint8_t unexpose[] = {0x0b, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00};
    assert_int_equal(cv_kh_decode(unexpose, sizeof unexpose, &m), CV_EPROTO);
    assert_int_equal(cv_kh_decode_native(unexpose, sizeof unexpose, &m), 0);
    assert_int_equal(m.type, CV_KH_UNEXPOSE);
    assert_int_equal(m.id, 3);
    static const uint8_t bad[] = {0x0c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
    assert_int_equal(cv_kh_decode_native(bad, sizeof bad, &m), CV_EPROTO);
}

/* Named exposures (docs/PROTOCOL.md §6): proto 2 (http) and 3 (tls) only
 * in EXPOSE and EXPOSED, and only in native mode. */
static void test_named_exposures(void **state)
{
    static const uint8_t expose[] = {0x09, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
                                     0x1f, 0x90, 'a', 'p', 'p'};
    struct cv_kh_msg m;
    assert_int_equal(cv_kh_decode_native(expose, sizeof expose, &m), 0);
    assert_int_equal(m.proto, CV_KH_HTTP);
    assert_int_equal(m.len, 5);
    assert_int_equal(cv_kh_decode(expose, sizeof expose, &m), CV_EPROTO);
    uint8_t b[8];
    cv_kh_encode(b, CV_KH_EXPOSED, CV_KH_TLS, 1, 443);
    assert_int_equal(cv_kh_decode_native(b, sizeof b, &m), 0);
    cv_kh_encode(b, CV_KH_DATA, CV_KH_HTTP, 1, 0);
    assert_int_equal(cv_kh_decode_native(b, sizeof b, &m), CV_EPROTO);
    cv_kh_encode(b, CV_KH_CONNECT, CV_KH_TLS, 1, 80);
    assert_int_equal(cv_kh_decode_native(b, sizeof b, &m), CV_EPROTO);
    cv_kh_encode(b, CV_KH_EXPOSE, 4, 1, 0);
    assert_int_equal(cv_kh_decode_native(b, sizeof b, &m), CV_EPROTO);

    assert_true(cv_kh_name_valid("app", 3));
    assert_true(cv_kh_name_valid("a", 1));
    assert_true(cv_kh_name_valid("my-app-2", 8));
    assert_true(cv_kh_name_valid("0", 1));
    char label[64];
    memset(label, 'a', sizeof label);
    assert_true(cv_kh_name_valid(label, 63));
    assert_false(cv_kh_name_valid(label, 64));
    assert_false(cv_kh_name_valid("", 0));
    assert_false(cv_kh_name_valid("-app", 4));
    assert_false(cv_kh_name_valid("app-", 4));
    assert_false(cv_kh_name_valid("App", 3));
    assert_false(cv_kh_name_valid("a.b", 3));
    assert_false(cv_kh_name_valid("a_b", 3));
    assert_false(cv_kh_name_valid("a b", 3));
    assert_false(cv_kh_name_valid("a\0b", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_native_types), cmocka_unit_test(test_decode_vectors), cmocka_unit_test(test_encode_vectors),
        cmocka_unit_test(test_negative_vectors), cmocka_unit_test(test_set_id),
        cmocka_unit_test(test_round_trip), cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_named_exposures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
