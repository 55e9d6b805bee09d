/* Runner serializer JSON: compaction keeps every byte but the whitespace
 * between tokens and refuses what JSON.parse refuses (plus invalid UTF-8
 * and nesting past 1000); the top-level scan and the §8.2 input selection
 * pick the members JSON.parse + the Runner decoder would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/rjson.h"
#include "core/err.h"

#define S(lit) lit, sizeof(lit) - 1

/* Compacts p[0..n) into a copy and in place; both must agree. Returns the
 * result code; the compact text goes to out (NUL-terminated). */
static int compact(const char *p, size_t n, char *out, size_t *out_len)
{
    char *copy = malloc(n ? n : 1), *inplace = malloc(n ? n : 1);
    const char *why = NULL, *why2 = NULL;
    size_t l2 = 0;

    assert_non_null(copy);
    assert_non_null(inplace);
    memcpy(copy, p, n);
    memcpy(inplace, p, n);
    int rc = cv_rj_compact(copy, n, out, out_len, &why);
    int rc2 = cv_rj_compact(inplace, n, inplace, &l2, &why2);
    assert_int_equal(rc, rc2);
    if (rc == 0) {
        assert_int_equal(*out_len, l2);
        assert_memory_equal(out, inplace, l2);
        out[*out_len] = '\0';
    } else {
        assert_non_null(why);
        assert_string_equal(why, why2);
    }
    free(copy);
    free(inplace);
    return rc;
}

static void compact_ok(const char *in, const char *want)
{
    static char out[1 << 16];
    size_t len = 0;
    int rc = compact(in, strlen(in), out, &len);
    if (rc != 0)
        fail_msg("refused: %s", in);
    assert_string_equal(out, want);
}

static void compact_bad(const char *p, size_t n)
{
    static char out[1 << 16];
    size_t len;
    if (compact(p, n, out, &len) != CV_EPROTO)
        fail_msg("accepted: %.*s", (int)n, p);
}

#define BAD(lit) compact_bad(S(lit))

static void test_compact(void **state)
{
    compact_ok("{\"a\" : 1 ,\n\t\"b\":[ 1 , 2 ]\r\n}", "{\"a\":1,\"b\":[1,2]}");
    compact_ok("  5  ", "5");
    compact_ok("\"x\"", "\"x\"");
    compact_ok(" null", "null");
    compact_ok("true ", "true");
    compact_ok("false", "false");
    compact_ok("[ ]", "[]");
    compact_ok("{ }", "{}");
    compact_ok("[[[ ]] , { } ]", "[[[]],{}]");
    /* Numbers and strings are copied byte for byte, never rewritten. */
    compact_ok("[1.0E+2, -0, 0.5e-07, 1e400, 123456789012345678901234567890]",
               "[1.0E+2,-0,0.5e-07,1e400,123456789012345678901234567890]");
    compact_ok("\" a \\n \\u00e9 \\/ \"", "\" a \\n \\u00e9 \\/ \"");
    compact_ok("{\"k y\" : \"v  w\"}", "{\"k y\":\"v  w\"}");
    /* Lone surrogates are what JSON.parse accepts. */
    compact_ok("\"\\ud800\\udc00\\udfff\"", "\"\\ud800\\udc00\\udfff\"");
    /* Raw UTF-8: 2-, 3- and 4-byte forms, the extremes included. */
    compact_ok("\"\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf "
               "\xf0\x90\x80\x80 \xf4\x8f\xbf\xbf\"",
               "\"\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf "
               "\xf0\x90\x80\x80 \xf4\x8f\xbf\xbf\"");
    compact_ok("\"\x7f\"", "\"\x7f\""); /* DEL is not a control character to JSON */
}

static void test_compact_refused(void **state)
{
    BAD("");
    BAD("   ");
    BAD("[1,]");
    BAD("{\"a\":1,}");
    BAD("[,1]");
    BAD("{,}");
    BAD("01");
    BAD("-01");
    BAD("[00]");
    BAD("1.");
    BAD(".5");
    BAD("1e");
    BAD("1e+");
    BAD("+1");
    BAD("-");
    BAD("0x10");
    BAD("NaN");
    BAD("Infinity");
    BAD("-Infinity");
    BAD("tru");
    BAD("nul");
    BAD("True");
    BAD("'x'");
    BAD("\"a\tb\""); /* bare control characters */
    BAD("\"a\nb\"");
    BAD("\"\x01\"");
    BAD("\"\x1f\"");
    BAD("\"\\x\"");
    BAD("\"\\u12\"");
    BAD("\"\\u12g4\"");
    BAD("\"\\U1234\"");
    BAD("\"\\'\"");
    BAD("\"abc");
    BAD("\"abc\\\"");
    BAD("[1 2]");
    BAD("{\"a\" 1}");
    BAD("{\"a\":}");
    BAD("{1:2}");
    BAD("{\"a\":1 \"b\":2}");
    BAD("[1}");
    BAD("{\"a\":1]");
    BAD("1 2");
    BAD("{} {}");
    BAD("[");
    BAD("]");
    BAD("{");
    BAD("\xef\xbb\xbf{}"); /* a BOM: JSON.parse refuses it */
    BAD("\f1");            /* only SP, HT, CR and LF are whitespace */
    BAD("1\v");
    BAD("\xc2\xa0\x31");      /* NBSP then 1 */
    compact_bad("[1,\0]", 5); /* NUL outside a string */
    compact_bad("\"\0\"", 3);
    /* Invalid UTF-8: stray continuation, overlong, surrogate, > U+10FFFF,
     * truncated sequences. */
    BAD("\"\x80\"");
    BAD("\"\xbf\"");
    BAD("\"\xc0\x80\"");
    BAD("\"\xc1\xbf\"");
    BAD("\"\xe0\x80\x80\"");
    BAD("\"\xe0\x9f\xbf\"");
    BAD("\"\xed\xa0\x80\"");
    BAD("\"\xed\xbf\xbf\"");
    BAD("\"\xf0\x80\x80\x80\"");
    BAD("\"\xf0\x8f\xbf\xbf\"");
    BAD("\"\xf4\x90\x80\x80\"");
    BAD("\"\xf5\x80\x80\x80\"");
    BAD("\"\xff\"");
    BAD("\"\xc2\"");
    BAD("\"\xe2\x82\"");
    BAD("\"\xf0\x9f\x98\"");
    BAD("\"\xe2\x28\xa1\"");
    /* Outside strings any byte >= 0x80 is a syntax error. */
    BAD("[\xc3\xa9]");
}

/* Every proper prefix of a valid document that is not itself a document is
 * refused, and so is every document with one byte flipped to '}' or '\\'
 * where that breaks it (checked only for no crash: the flips may be valid). */
static void test_compact_truncated(void **state)
{
    static const char doc[] = "{\"input\":{\"a\":[1,-2.5e+3,true,false,null,\"x\\u0041\\n\"],"
                              "\"b\":{\"c\":{}}},\"d\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}";
    char out[sizeof doc];
    size_t len;
    for (size_t i = 0; i < sizeof doc - 1; i++)
        assert_int_equal(compact(doc, i, out, &len), CV_EPROTO);
    assert_int_equal(compact(doc, sizeof doc - 1, out, &len), 0);
    assert_int_equal(len, sizeof doc - 1);
    for (size_t i = 0; i < sizeof doc - 1; i++) {
        char t[sizeof doc];
        memcpy(t, doc, sizeof doc);
        t[i] = '\\';
        compact(t, sizeof doc - 1, out, &len);
        t[i] = '\x01';
        assert_int_equal(compact(t, sizeof doc - 1, out, &len), CV_EPROTO);
    }
}

static char *nest(size_t depth, const char *open, const char *mid, const char *close)
{
    size_t lo = strlen(open), lm = strlen(mid), lc = strlen(close);
    char *p = malloc(depth * (lo + lc) + lm + 1), *w = p;
    assert_non_null(p);
    for (size_t i = 0; i < depth; i++, w += lo)
        memcpy(w, open, lo);
    memcpy(w, mid, lm);
    w += lm;
    for (size_t i = 0; i < depth; i++, w += lc)
        memcpy(w, close, lc);
    *w = '\0';
    return p;
}

static void test_compact_depth(void **state)
{
    static char out[1 << 16];
    size_t len;
    char *p = nest(CV_RJ_MAX_DEPTH, "[", "1", "]");
    assert_int_equal(compact(p, strlen(p), out, &len), 0);
    free(p);
    p = nest(CV_RJ_MAX_DEPTH + 1, "[", "1", "]");
    assert_int_equal(compact(p, strlen(p), out, &len), CV_EPROTO);
    free(p);
    p = nest(CV_RJ_MAX_DEPTH / 2, "{\"a\":[", "{}", "]}");
    assert_int_equal(compact(p, strlen(p), out, &len), CV_EPROTO); /* 1000 + the {} */
    free(p);
    p = nest(CV_RJ_MAX_DEPTH / 2, "{\"a\":[", "1", "]}");
    assert_int_equal(compact(p, strlen(p), out, &len), 0);
    free(p);
    /* Depth comes back down: many siblings at depth 1000 are fine. */
    p = nest(CV_RJ_MAX_DEPTH - 1, "[", "[],[],[]", "]");
    assert_int_equal(compact(p, strlen(p), out, &len), 0);
    free(p);
}

/* --- top-level scan and §8.2 ------------------------------------------- */

static char scratch[1 << 16];

static const char *compacted(const char *in, size_t *len)
{
    const char *why;
    if (cv_rj_compact(in, strlen(in), scratch, len, &why) != 0)
        fail_msg("refused: %s (%s)", in, why);
    scratch[*len] = '\0';
    return scratch;
}

/* want NULL: whole_body expected. */
static void select_is(const char *in, const char *want)
{
    size_t len, off, n;
    const char *c = compacted(in, &len), *text;
    bool whole;
    assert_int_equal(cv_rj_select_input(c, len, &text, &off, &n, &whole), 0);
    if (want == NULL) {
        assert_true(whole);
        assert_ptr_equal(text, c);
        assert_int_equal(off, 0);
        assert_int_equal(n, len);
        return;
    }
    assert_false(whole);
    if (n != strlen(want) || memcmp(text + off, want, n) != 0)
        fail_msg("%s: selected '%.*s', want '%s'", in, (int)n, text + off, want);
}

static void test_select_input(void **state)
{
    size_t off, n;
    const char *text;
    bool whole;

    /* Empty body: the Undefined record. */
    assert_int_equal(cv_rj_select_input("", 0, &text, &off, &n, &whole), 0);
    assert_false(whole);
    assert_int_equal(n, strlen(CV_RJ_UNDEFINED));
    assert_memory_equal(text + off, CV_RJ_UNDEFINED, n);

    select_is("{\"input\":{\"a\":5,\"b\":3}}", "{\"a\":5,\"b\":3}");
    select_is("{ \"input\" : { \"a\" : 5 } , \"x\" : 1 }", "{\"a\":5}");
    select_is("{\"input\":null}", "null");
    select_is("{\"input\":{}}", "{}");
    select_is("{\"a\":1}", "{\"a\":1}");
    select_is("{}", "{}");
    select_is("5", "5");
    select_is("\"x\"", "\"x\"");
    select_is("null", "null");
    select_is("false", "false");
    select_is("[{\"input\":1}]", "[{\"input\":1}]");
    /* Repeated keys: the last one wins, as in JSON.parse. */
    select_is("{\"input\":1,\"input\":[2,{\"input\":3}]}", "[2,{\"input\":3}]");
    /* Keys compare after unescaping. */
    select_is("{\"in\\u0070ut\":\"yes\"}", "\"yes\"");
    select_is("{\"\\u0069\\u006e\\u0070\\u0075\\u0074\":7}", "7");
    select_is("{\"inputs\":1,\"inpu\":2,\"Input\":3}", "{\"inputs\":1,\"inpu\":2,\"Input\":3}");
    /* Nested "input" members are not the top level's. */
    select_is("{\"a\":{\"input\":1}}", "{\"a\":{\"input\":1}}");
    select_is("{\"a\":\"\\\"input\\\":2\",\"input\":3}", "3");
    /* The decoder strips one escape prefix from plain keys. */
    select_is("{\"$runner.escape::input\":4}", "4");
    select_is("{\"$runner.escape::$runner.escape::input\":4}",
              "{\"$runner.escape::$runner.escape::input\":4}");
    /* Both spellings: the one that first appears later wins, with its last
     * value (JSON.parse keeps a key's first position). */
    select_is("{\"input\":1,\"$runner.escape::input\":2}", "2");
    select_is("{\"$runner.escape::input\":2,\"input\":1}", "1");
    select_is("{\"input\":1,\"$runner.escape::input\":2,\"input\":3}", "2");
    /* A top-level typed record is the input itself. */
    select_is("{\"__type\":\"Date\",\"value\":\"1970-01-01T00:00:00.000Z\"}",
              "{\"__type\":\"Date\",\"value\":\"1970-01-01T00:00:00.000Z\"}");
    select_is("{\"__type\":\"Date\",\"value\":0,\"input\":1}",
              "{\"__type\":\"Date\",\"value\":0,\"input\":1}");
    /* Not records: no value key, a non-string type, an escaped type key. */
    select_is("{\"__type\":\"Date\",\"input\":1}", "1");
    select_is("{\"__type\":1,\"value\":2,\"input\":3}", "3");
    select_is("{\"__type\":\"X\",\"value\":2,\"__type\":null,\"input\":3}", "3");
    select_is("{\"$runner.escape::__type\":\"Date\",\"value\":1,\"input\":3}", "3");
    /* Graphs go whole; {"__graph":true} without root and nodes is plain. */
    select_is("{\"__graph\":true,\"version\":1,\"root\":{\"__ref\":\"obj_1\"},"
              "\"nodes\":{\"obj_1\":{\"kind\":\"object\",\"value\":{\"input\":1}}}}",
              NULL);
    select_is("{\"__graph\":true,\"input\":2}", "2");
    select_is("{\"__graph\":1,\"root\":1,\"nodes\":{},\"input\":2}", "2");
    select_is("{\"__graph\":true,\"root\":1,\"nodes\":null,\"input\":2}", "2");
    select_is("{\"__graph\":true,\"root\":null,\"nodes\":[],\"input\":2}", NULL);
}

static void top_is(const char *in, bool ret, const char *payload)
{
    size_t len;
    const char *c = compacted(in, &len);
    struct cv_rj_top top;
    assert_int_equal(cv_rj_top_scan(c, len, &top), 0);
    if (top.return_payload != ret)
        fail_msg("%s: returnPayload %d", in, top.return_payload);
    if (payload == NULL) {
        assert_false(top.payload.present);
    } else {
        assert_true(top.payload.present);
        if (top.payload.len != strlen(payload) ||
            memcmp(c + top.payload.off, payload, top.payload.len) != 0)
            fail_msg("%s: payload '%.*s'", in, (int)top.payload.len, c + top.payload.off);
    }
}

static void test_top_scan(void **state)
{
    struct cv_rj_top top;
    size_t len;
    const char *c;

    top_is("{\"payload\":{\"message\":\"hi2\"},\"returnPayload\":true}", true,
           "{\"message\":\"hi2\"}");
    top_is("{\"x\":1}", false, NULL);
    top_is("{\"payload\":null}", false, "null");
    /* JS truthiness after decoding. */
    static const char *const falsy[] = {
        "false",
        "0",
        "-0",
        "0.0",
        "0e5",
        "-0.000E-9",
        "\"\"",
        "null",
        "{\"__type\":\"Undefined\",\"value\":null}",
        "{\"__type\":\"NonFiniteNumber\",\"value\":\"NaN\"}",
        "{\"__type\":\"NonFiniteNumber\",\"value\":\"N\\u0061N\"}",
        "{\"__type\":\"BigInt\",\"value\":\"0\"}",
        "{\"__type\":\"BigInt\",\"value\":\"-0\"}",
        "{\"value\":1,\"__type\":\"Undefined\"}",
    };
    static const char *const truthy_[] = {
        "true",
        "1",
        "-1",
        "0.1",
        "1e-300",
        "\" \"",
        "\"0\"",
        "\"false\"",
        "[]",
        "{}",
        "{\"__type\":\"NonFiniteNumber\",\"value\":\"Infinity\"}",
        "{\"__type\":\"BigInt\",\"value\":\"10\"}",
        "{\"__type\":\"Date\",\"value\":0}",
        "{\"__type\":\"Undefined\"}",
        "{\"$runner.escape::__type\":\"Undefined\",\"value\":null}",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof falsy / sizeof *falsy; i++) {
        snprintf(buf, sizeof buf, "{\"returnPayload\":%s}", falsy[i]);
        top_is(buf, false, NULL);
    }
    for (size_t i = 0; i < sizeof truthy_ / sizeof *truthy_; i++) {
        snprintf(buf, sizeof buf, "{\"returnPayload\":%s}", truthy_[i]);
        top_is(buf, true, NULL);
    }
    /* The last one wins; escaped spellings count. */
    top_is("{\"returnPayload\":true,\"returnPayload\":0}", false, NULL);
    top_is("{\"returnPayload\":0,\"$runner.escape::returnPayload\":1}", true, NULL);
    top_is("{\"p\\u0061yload\":1,\"payload\":2}", false, "2");

    c = compacted("[1,2]", &len);
    assert_int_equal(cv_rj_top_scan(c, len, &top), 0);
    assert_false(top.is_object);
    assert_false(top.input.present);
    c = compacted("{\"__type\":\"Date\",\"value\":0,\"payload\":1,\"returnPayload\":true}", &len);
    assert_int_equal(cv_rj_top_scan(c, len, &top), 0);
    assert_true(top.is_object && top.is_record && !top.is_graph);
    assert_false(top.payload.present); /* a Date has no payload member */
    assert_false(top.return_payload);
    c = compacted("{\"__graph\":true,\"root\":1,\"nodes\":{}}", &len);
    assert_int_equal(cv_rj_top_scan(c, len, &top), 0);
    assert_true(top.is_object && top.is_graph && !top.is_record);
    /* Text that is not compact JSON is refused, never overrun. */
    assert_int_equal(cv_rj_top_scan(S("{\"a\" :1}"), &top), CV_EPROTO);
    assert_int_equal(cv_rj_top_scan(S("{\"a\":1"), &top), CV_EPROTO);
    assert_int_equal(cv_rj_top_scan(S("{\"a"), &top), CV_EPROTO);
    assert_int_equal(cv_rj_top_scan(S("{\"a\":[1"), &top), CV_EPROTO);
    assert_int_equal(cv_rj_top_scan("", 0, &top), CV_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compact),           cmocka_unit_test(test_compact_refused),
        cmocka_unit_test(test_compact_truncated), cmocka_unit_test(test_compact_depth),
        cmocka_unit_test(test_select_input),      cmocka_unit_test(test_top_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
