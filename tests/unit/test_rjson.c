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
#include <math.h>

#include "codec/rjson.h"
#include "core/buf.h"
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

/* The string scanner reads eight bytes at a time: a bad byte at any
 * offset of a long string, in any lane, is still found. */
static void test_compact_string_lanes(void **state)
{
    static const unsigned char bad[] = {0x00, 0x01, 0x1f, 0x80, 0xbf, 0xc0, 0xff, '\\'};
    char s[48], out[64];
    size_t len;
    for (size_t pos = 1; pos < sizeof s - 1; pos++) {
        for (size_t b = 0; b < sizeof bad; b++) {
            memset(s, 'a', sizeof s);
            s[0] = '"';
            s[sizeof s - 1] = '"';
            s[pos] = (char)bad[b];
            if (bad[b] == '\\' && pos + 1 < sizeof s - 1)
                s[pos + 1] = 'x'; /* a bad escape */
            if (compact(s, sizeof s, out, &len) != CV_EPROTO)
                fail_msg("byte 0x%02x at %zu accepted", bad[b], pos);
        }
        /* A quote ends the string early: trailing data. */
        memset(s, 'a', sizeof s);
        s[0] = s[pos] = s[sizeof s - 1] = '"';
        assert_int_equal(compact(s, sizeof s, out, &len), CV_EPROTO);
        /* Valid escapes and UTF-8 at every offset are accepted unchanged. */
        memset(s, 'a', sizeof s);
        s[0] = s[sizeof s - 1] = '"';
        if (pos + 2 < sizeof s - 1) {
            memcpy(s + pos, "\xc3\xa9", 2);
            assert_int_equal(compact(s, sizeof s, out, &len), 0);
            memcpy(s + pos, "\\n", 2);
            assert_int_equal(compact(s, sizeof s, out, &len), 0);
            assert_int_equal(len, sizeof s);
            assert_memory_equal(out, s, len);
        }
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

/* --- decode and encode --------------------------------------------------- */

static char *encode(const json_t *v)
{
    struct cv_buf b;
    cv_buf_init(&b, 1 << 24);
    assert_int_equal(cv_rj_encode(v, &b), 0);
    char *s = malloc(b.len + 1);
    assert_non_null(s);
    memcpy(s, cv_buf_head(&b), b.len);
    s[b.len] = '\0';
    cv_buf_fini(&b);
    return s;
}

/* Decodes in, encodes the tree and compares with want (in itself if NULL);
 * decoding the output again gives the same output. */
static void rt(const char *in, const char *want)
{
    char why[128];
    json_t *v = cv_rj_decode(in, strlen(in), why, sizeof why);
    if (v == NULL)
        fail_msg("refused %s: %s", in, why);
    char *out = encode(v);
    if (strcmp(out, want ? want : in) != 0)
        fail_msg("%s -> %s, want %s", in, out, want ? want : in);
    json_t *v2 = cv_rj_decode(out, strlen(out), why, sizeof why);
    assert_non_null(v2);
    char *out2 = encode(v2);
    assert_string_equal(out, out2);
    /* The decoder for compact text (native inputs) builds the same tree. */
    char *c = malloc(strlen(in) + 1);
    size_t cl;
    assert_non_null(c);
    assert_int_equal(cv_rj_compact(in, strlen(in), c, &cl, NULL), 0);
    json_t *v3 = cv_rj_decode_compact(c, cl, why, sizeof why);
    assert_non_null(v3);
    char *out3 = encode(v3);
    assert_string_equal(out, out3);
    free(c);
    free(out3);
    json_decref(v3);
    free(out);
    free(out2);
    json_decref(v);
    json_decref(v2);
}

static void refused(const char *in, const char *why_part)
{
    char why[128];
    json_t *v = cv_rj_decode(in, strlen(in), why, sizeof why);
    if (v != NULL)
        fail_msg("accepted %s", in);
    if (why_part != NULL && strstr(why, why_part) == NULL)
        fail_msg("%s: reason '%s', want '%s'", in, why, why_part);
}

static void test_decode_records(void **state)
{
    rt("{\"input\":{\"a\":5,\"b\":3}}", NULL);
    rt(" { \"a\" : [ 1 , 2 ] } ", "{\"a\":[1,2]}");
    /* §7.2 examples. */
    rt("{\"__type\":\"Int16Array\",\"value\":[1,0,254,255]}", NULL);
    rt("{\"__type\":\"Float64Array\",\"value\":[0,0,0,0,0,0,248,63]}", NULL);
    rt("{\"__type\":\"Date\",\"value\":\"1970-01-01T00:00:00.005Z\"}", NULL);
    /* Dates are stored as Date#toISOString gives them. */
    rt("{\"__type\":\"Date\",\"value\":5}",
       "{\"__type\":\"Date\",\"value\":\"1970-01-01T00:00:00.005Z\"}");
    rt("{\"__type\":\"Date\",\"value\":\"2024-02-29T12:00:00.5Z\"}",
       "{\"__type\":\"Date\",\"value\":\"2024-02-29T12:00:00.500Z\"}");
    rt("{\"__type\":\"Date\",\"value\":\"2024-02-29T12:00:00Z\"}",
       "{\"__type\":\"Date\",\"value\":\"2024-02-29T12:00:00.000Z\"}");
    rt("{\"__type\":\"BigInt\",\"value\":\"12345678901234567890\"}", NULL);
    rt("{\"__type\":\"Undefined\",\"value\":null}", NULL);
    rt("{\"__type\":\"NonFiniteNumber\",\"value\":\"-Infinity\"}", NULL);
    rt("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"^a+$\",\"flags\":\"gi\"}}", NULL);
    rt("{\"__type\":\"Map\",\"value\":[[\"k\",1],[{\"__type\":\"Date\",\"value\":0},2]]}",
       "{\"__type\":\"Map\",\"value\":[[\"k\",1],[{\"__type\":\"Date\",\"value\":"
       "\"1970-01-01T00:00:00.000Z\"},2]]}");
    rt("{\"__type\":\"Set\",\"value\":[1,\"x\",{\"__type\":\"Undefined\",\"value\":null}]}", NULL);
    rt("{\"__type\":\"Symbol\",\"value\":{\"kind\":\"For\",\"key\":\"k\"}}", NULL);
    rt("{\"__type\":\"Symbol\",\"value\":{\"kind\":\"WellKnown\",\"key\":\"iterator\"}}", NULL);
    rt("{\"__type\":\"URL\",\"value\":\"https://x.test/a?b=1\"}", NULL);
    rt("{\"__type\":\"URLSearchParams\",\"value\":\"a=1&b=2\"}", NULL);
    rt("{\"__type\":\"Error\",\"value\":{\"name\":\"TypeError\",\"message\":\"boom\","
       "\"customFields\":{\"code\":1},\"stack\":\"at x\"}}",
       NULL);
    rt("{\"__type\":\"Buffer\",\"value\":[104,105]}", NULL);
    rt("{\"__type\":\"Uint8Array\",\"value\":[]}", NULL);
    rt("{\"__type\":\"BigUint64Array\",\"value\":[1,0,0,0,0,0,0,0]}", NULL);
    /* As Runner reads them: Undefined ignores its value, a Map entry
     * missing its value has undefined, extra entry items are ignored. */
    rt("{\"__type\":\"Undefined\",\"value\":1}", "{\"__type\":\"Undefined\",\"value\":null}");
    rt("{\"__type\":\"Map\",\"value\":[[1],[2,3,4],[]]}",
       "{\"__type\":\"Map\",\"value\":[[1,{\"__type\":\"Undefined\",\"value\":null}],[2,3],"
       "[{\"__type\":\"Undefined\",\"value\":null},{\"__type\":\"Undefined\",\"value\":null}]]}");
    rt("{\"__type\":\"URL\",\"value\":\" mailto:a@b\"}", NULL);
    /* RegExp syntax new RegExp accepts (Annex B) and refuses. */
    static const char *const re_ok[] = {
        "",    "a{",      "a{1",     "a{,2}",  "}",           "]",
        "()",  "()*",     "(?:a)+?", "(?=a)",  "(?<!a)b",     "(?<name>x)\\\\\\\\k<name>",
        "[(]", "[\\\\]]", "[]",      "a*?",    "a{2,}?",      "\\\\(",
        "x|",  "|",       "^$",      "a{3,3}", "\\\\b\\\\d+",
    };
    static const char *const re_bad[] = {
        "(",   ")",   "(a",   "a)",       "[",      "[a",   "\\\\",   "*",      "+a",
        "?",   "a**", "a*??", "(*)",      "|*",     "^*",   "$+",     "\\\\b*", "a{2,1}",
        "{1}", "(?",  "(?x)", "(?<1a>x)", "(?<>x)", "(?<a", "[\\\\]",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof re_ok / sizeof *re_ok; i++) {
        snprintf(buf, sizeof buf,
                 "{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"%s\",\"flags\":\"\"}}", re_ok[i]);
        rt(buf, NULL);
    }
    for (size_t i = 0; i < sizeof re_bad / sizeof *re_bad; i++) {
        snprintf(buf, sizeof buf,
                 "{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"%s\",\"flags\":\"\"}}",
                 re_bad[i]);
        refused(buf, "RegExp");
    }
    /* Extra keys are ignored (dropped); no value key: a plain object. */
    rt("{\"__type\":\"Date\",\"value\":0,\"x\":1}",
       "{\"__type\":\"Date\",\"value\":\"1970-01-01T00:00:00.000Z\"}");
    rt("{\"__type\":\"Date\"}", "{\"$runner.escape::__type\":\"Date\"}");
    rt("{\"__type\":5,\"value\":1}", "{\"$runner.escape::__type\":5,\"value\":1}");
    /* BigInt payloads are normalised like BigInt(s).toString(). */
    rt("{\"__type\":\"BigInt\",\"value\":\" +007 \"}", "{\"__type\":\"BigInt\",\"value\":\"7\"}");
    rt("{\"__type\":\"BigInt\",\"value\":\"-0\"}", "{\"__type\":\"BigInt\",\"value\":\"0\"}");

    refused("{\"__type\":\"Nope\",\"value\":1}", "unknown __type");
    refused("{\"a\":[{\"__type\":\"Function\",\"value\":\"x\"}]}", "unknown __type");
    refused("{\"__type\":\"NonFiniteNumber\",\"value\":\"nan\"}", NULL);
    refused("{\"__type\":\"BigInt\",\"value\":\"1.5\"}", "BigInt");
    refused("{\"__type\":\"BigInt\",\"value\":\"\"}", NULL);
    refused("{\"__type\":\"BigInt\",\"value\":\"0x10\"}", NULL);
    refused("{\"__type\":\"BigInt\",\"value\":12}", NULL);
    refused("{\"__type\":\"Date\",\"value\":\"not-a-date\"}", "Date");
    refused("{\"__type\":\"Date\",\"value\":\"2023-02-29T00:00:00.000Z\"}", NULL);
    refused("{\"__type\":\"Date\",\"value\":\"2024-01-01T00:00:60.000Z\"}", NULL);
    refused("{\"__type\":\"Date\",\"value\":\"2024-01-01T00:00:00.000\"}", NULL);
    refused("{\"__type\":\"Date\",\"value\":8640000000000001}", NULL);
    refused("{\"__type\":\"Date\",\"value\":null}", NULL);
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"(a+)+\",\"flags\":\"\"}}", "unsafe");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"(a|a)*\",\"flags\":\"\"}}", "unsafe");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"((ab)*c)*\",\"flags\":\"\"}}",
            "unsafe");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"(x{2,3}){4}\",\"flags\":\"\"}}",
            "unsafe");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"a\",\"flags\":\"gg\"}}", "flags");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"a\",\"flags\":\"x\"}}", "flags");
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"a\"}}", NULL);
    refused("{\"__type\":\"Map\",\"value\":[1]}", NULL);
    refused("{\"__type\":\"RegExp\",\"value\":{\"pattern\":\"a\",\"flags\":\"uv\"}}", "flags");
    refused("{\"__type\":\"URL\",\"value\":\"nope\"}", "URL");
    refused("{\"__type\":\"URL\",\"value\":\"1http://x\"}", "URL");
    refused("{\"__type\":\"Map\",\"value\":{}}", NULL);
    refused("{\"__type\":\"Set\",\"value\":1}", NULL);
    refused("{\"__type\":\"Symbol\",\"value\":{\"kind\":\"WellKnown\",\"key\":\"nope\"}}", NULL);
    refused("{\"__type\":\"Symbol\",\"value\":{\"kind\":\"Unique\",\"key\":\"k\"}}", NULL);
    refused("{\"__type\":\"URL\",\"value\":1}", NULL);
    refused("{\"__type\":\"Error\",\"value\":{\"name\":\"E\"}}", NULL);
    refused("{\"__type\":\"Error\",\"value\":{\"name\":\"E\",\"message\":\"m\",\"stack\":1}}",
            NULL);
    refused(
        "{\"__type\":\"Error\",\"value\":{\"name\":\"E\",\"message\":\"m\",\"customFields\":[]}}",
        NULL);
    refused("{\"__type\":\"Buffer\",\"value\":[256]}", NULL);
    refused("{\"__type\":\"Buffer\",\"value\":[-1]}", NULL);
    refused("{\"__type\":\"Buffer\",\"value\":[1.5]}", NULL);
    refused("{\"__type\":\"Buffer\",\"value\":[\"1\"]}", NULL);
    refused("{\"__type\":\"Int16Array\",\"value\":[1,0,254]}", NULL);
    refused("{\"__type\":\"Float64Array\",\"value\":[0,0,0,0]}", NULL);
    /* Syntax is checked strictly before jansson sees the text. */
    refused("[1,]", "unexpected");
    refused("01", "leading zero");
    refused("\"a\x01\"", "control");
    refused("\"\xff\"", "UTF-8");
    refused("", "empty");
    /* Not representable in jansson's UTF-8 strings (documented): */
    /* JSON.parse reads these as ±Infinity: records in the tree. */
    rt("[1e400,-1e400,{\"k\":\"1e400\",\"n\":1E+999},1e308,-0.1e-400]",
       "[{\"__type\":\"NonFiniteNumber\",\"value\":\"Infinity\"},"
       "{\"__type\":\"NonFiniteNumber\",\"value\":\"-Infinity\"},"
       "{\"k\":\"1e400\",\"n\":{\"__type\":\"NonFiniteNumber\",\"value\":\"Infinity\"}},1e+308,0]");
    refused("{\"__type\":\"Buffer\",\"value\":[1e400]}", "Buffer");
    refused("[\"\\ud800\"]", NULL);
}

static void test_decode_keys(void **state)
{
    char why[128];
    /* The §7.1 escaping example: a plain object whose real key __type is "Date". */
    const char *in = "{\"$runner.escape::__type\":\"Date\",\"value\":\"not-a-date\"}";
    json_t *v = cv_rj_decode(in, strlen(in), why, sizeof why);
    assert_non_null(v);
    assert_null(cv_rj_record_type(v));
    assert_string_equal(json_string_value(cv_rj_get(v, "__type")), "Date");
    assert_string_equal(json_string_value(cv_rj_get(v, "value")), "not-a-date");
    char *out = encode(v);
    assert_string_equal(out, in);
    free(out);
    /* cv_rj_set escapes: __type, __graph and already-prefixed keys. */
    assert_int_equal(cv_rj_set(v, "__graph", json_true()), 0);
    assert_int_equal(cv_rj_set(v, "$runner.escape::__type", json_real(1)), 0);
    assert_int_equal(cv_rj_set(v, "$runner.escape::x", json_real(2)), 0);
    assert_int_equal(cv_rj_set(v, "plain", json_real(3)), 0);
    assert_non_null(json_object_get(v, "$runner.escape::__graph"));
    assert_non_null(json_object_get(v, "$runner.escape::$runner.escape::__type"));
    assert_non_null(json_object_get(v, "$runner.escape::$runner.escape::x"));
    assert_non_null(json_object_get(v, "plain"));
    assert_true(json_is_true(cv_rj_get(v, "__graph")));
    assert_true(json_real_value(cv_rj_get(v, "$runner.escape::__type")) == 1);
    assert_true(json_real_value(cv_rj_get(v, "$runner.escape::x")) == 2);
    assert_null(cv_rj_get(v, "x"));
    assert_int_equal(cv_rj_set(v, NULL, json_true()), CV_EINVAL);
    json_t *arr = json_array();
    assert_int_equal(cv_rj_set(arr, "a", json_true()), CV_EINVAL);
    assert_int_equal(cv_rj_set(v, "a", NULL), CV_EINVAL);
    json_decref(arr);
    json_decref(v);

    /* Wire keys lose one prefix; the two spellings of a key merge as a JS
     * object assignment would (first position, last value). */
    rt("{\"$runner.escape::a\":1,\"b\":2,\"a\":3}", "{\"a\":3,\"b\":2}");
    rt("{\"$runner.escape::$runner.escape::__type\":1}", NULL);
    rt("{\"$runner.escape::__graph\":true}", NULL);
    rt("{\"a\":1,\"a\":2}", "{\"a\":2}");
    /* Prototype-polluting keys are dropped, escaped or not, at any depth. */
    rt("{\"__proto__\":{\"x\":1},\"constructor\":2,\"a\":{\"prototype\":3,"
       "\"$runner.escape::__proto__\":4,\"ok\":5}}",
       "{\"a\":{\"ok\":5}}");
    /* __ref outside a graph is a plain object. */
    rt("{\"__ref\":\"x\"}", NULL);
    /* Unicode survives: escapes decode, raw UTF-8 stays raw. */
    rt("[\"\\u00e9\\ud83d\\ude00\\u0000\\u001f\\/\"]",
       "[\"\xc3\xa9\xf0\x9f\x98\x80\\u0000\\u001f/\"]");
}

static void test_decode_graph(void **state)
{
    /* §7.2's graph: a self reference is a cycle, refused. */
    refused("{\"__graph\":true,\"version\":1,\"root\":{\"__ref\":\"obj_1\"},\"nodes\":{\"obj_1\":"
            "{\"kind\":\"object\",\"value\":{\"n\":1,\"self\":{\"__ref\":\"obj_1\"}}}}}",
            "cycle");
    /* Acyclic shared references are duplicated into the tree. */
    rt("{\"__graph\":true,\"version\":1,\"root\":{\"__ref\":\"a\"},\"nodes\":{"
       "\"a\":{\"kind\":\"array\",\"value\":[{\"__ref\":\"b\"},{\"__ref\":\"b\"},{\"__ref\":\"d\"}]"
       "},"
       "\"b\":{\"kind\":\"object\",\"value\":{\"n\":1,\"__type\":\"x\",\"value\":2,\"__proto__\":3}"
       "},"
       "\"d\":{\"kind\":\"type\",\"type\":\"Date\",\"value\":\"2020-01-01T00:00:00.000Z\"}}}",
       "[{\"n\":1,\"$runner.escape::__type\":\"x\",\"value\":2},"
       "{\"n\":1,\"$runner.escape::__type\":\"x\",\"value\":2},"
       "{\"__type\":\"Date\",\"value\":\"2020-01-01T00:00:00.000Z\"}]");
    /* A root that is not a reference; inline records inside a graph. */
    rt("{\"__graph\":true,\"version\":1,\"root\":{\"x\":{\"__type\":\"BigInt\",\"value\":\"5\"}},"
       "\"nodes\":{}}",
       "{\"x\":{\"__type\":\"BigInt\",\"value\":\"5\"}}");
    /* Not a graph without root or object nodes: a plain object. */
    rt("{\"__graph\":true,\"nodes\":{}}", "{\"$runner.escape::__graph\":true,\"nodes\":{}}");
    refused(
        "{\"__graph\":true,\"root\":{\"__ref\":\"a\"},\"nodes\":{\"a\":{\"kind\":\"array\","
        "\"value\":[{\"__ref\":\"b\"}]},\"b\":{\"kind\":\"array\",\"value\":[{\"__ref\":\"a\"}]}}}",
        "cycle");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"zz\"},\"nodes\":{}}", "unresolved");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"__proto__\"},\"nodes\":{}}", "unresolved");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"a\",\"x\":1},\"nodes\":{}}", "reference");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"a\"},\"nodes\":{\"a\":{\"kind\":\"map\","
            "\"value\":[]}}}",
            "kind");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"a\"},\"nodes\":{\"a\":{\"kind\":\"object\","
            "\"value\":[]}}}",
            "object node");
    refused("{\"__graph\":true,\"root\":{\"__ref\":\"a\"},\"nodes\":{\"a\":{\"kind\":\"type\","
            "\"type\":\"Nope\",\"value\":1}}}",
            "unknown __type");

    /* Doubling shared nodes: linear work, not 2^40 copies. */
    char *g = malloc(64 * 80), *w = g;
    assert_non_null(g);
    w += sprintf(w, "{\"__graph\":true,\"root\":{\"__ref\":\"n0\"},\"nodes\":{");
    for (int i = 0; i < 40; i++)
        w += sprintf(
            w, "\"n%d\":{\"kind\":\"array\",\"value\":[{\"__ref\":\"n%d\"},{\"__ref\":\"n%d\"}]},",
            i, i + 1, i + 1);
    w += sprintf(w, "\"n40\":{\"kind\":\"array\",\"value\":[]}}}");
    char why[128];
    json_t *v = cv_rj_decode(g, strlen(g), why, sizeof why);
    assert_non_null(v);
    json_decref(v);
    free(g);
}

static void test_decode_depth(void **state)
{
    char why[128];
    /* 1000 nested arrays: Runner's depth 1000 holds the innermost value. */
    char *p = nest(CV_RJ_MAX_DEPTH, "[", "1", "]");
    json_t *v = cv_rj_decode(p, strlen(p), why, sizeof why);
    assert_non_null(v);
    char *out = encode(v);
    assert_string_equal(out, p);
    free(out);
    json_decref(v);
    free(p);
    p = nest(CV_RJ_MAX_DEPTH + 1, "[", "", "]");
    assert_null(cv_rj_decode(p, strlen(p), why, sizeof why));
    free(p);
    /* A record's value is one level below it, as a member is. */
    p = nest(CV_RJ_MAX_DEPTH / 2, "{\"__type\":\"Set\",\"value\":[", "1", "]}");
    v = cv_rj_decode(p, strlen(p), why, sizeof why);
    if (v == NULL)
        fail_msg("refused: %s", why);
    json_decref(v);
    free(p);
    /* Shared graph nodes count at every place they appear: a 600-deep
     * node reached again under another 500 levels is too deep. */
    size_t cap = 64 * 1024;
    char *g = malloc(cap), *w = g;
    assert_non_null(g);
    w += sprintf(w, "{\"__graph\":true,\"root\":[{\"__ref\":\"a\"},{\"__ref\":\"b\"}],\"nodes\":{"
                    "\"a\":{\"kind\":\"array\",\"value\":");
    for (int i = 0; i < 600; i++)
        *w++ = '[';
    for (int i = 0; i < 600; i++)
        *w++ = ']';
    w += sprintf(w, "},\"b\":{\"kind\":\"array\",\"value\":");
    for (int i = 0; i < 500; i++)
        *w++ = '[';
    w += sprintf(w, "{\"__ref\":\"a\"}");
    for (int i = 0; i < 500; i++)
        *w++ = ']';
    w += sprintf(w, "}}}");
    v = cv_rj_decode(g, strlen(g), why, sizeof why);
    assert_null(v);
    assert_non_null(strstr(why, "deep"));
    free(g);
}

static void num_is(double d, const char *want)
{
    json_t *v = json_real(d);
    assert_non_null(v);
    char *out = encode(v);
    if (strcmp(out, want) != 0)
        fail_msg("%.17g -> %s, want %s", d, out, want);
    free(out);
    json_decref(v);
}

static void test_encode_numbers(void **state)
{
    /* What JS's Number#toString prints. */
    num_is(0.1, "0.1");
    num_is(1.0 / 3, "0.3333333333333333");
    num_is(2.0 / 3, "0.6666666666666666");
    num_is(1e21, "1e+21");
    num_is(1e20, "100000000000000000000");
    num_is(123456789012345680000.0, "123456789012345680000");
    num_is(5e-324, "5e-324");
    num_is(1.7976931348623157e308, "1.7976931348623157e+308");
    num_is(100, "100");
    num_is(8, "8");
    num_is(-1.5, "-1.5");
    num_is(-0.0, "0");
    num_is(0, "0");
    num_is(1.5e-7, "1.5e-7");
    num_is(1e-7, "1e-7");
    num_is(0.000001, "0.000001");
    num_is(0.0000015, "0.0000015");
    num_is(123e-20, "1.23e-18");
    num_is(1.5e300, "1.5e+300");
    num_is(-1e21, "-1e+21");
    num_is(9007199254740991.0, "9007199254740991");
    num_is(9007199254740992.0, "9007199254740992");
    num_is(9007199254740994.0, "9007199254740994");
    num_is(9007199254740992.0 * 10, "90071992547409920");
    num_is(0.1 + 0.2, "0.30000000000000004");
    num_is(1.7976931348623157e308 / 3, "5.992310449541053e+307");
    num_is(4.35, "4.35");
    num_is(0.000003, "0.000003");
    num_is(-5e-7, "-5e-7");
    num_is(2.2250738585072014e-308, "2.2250738585072014e-308");
    num_is(123.456, "123.456");
    num_is(1e16, "10000000000000000");
    num_is(1.2e16, "12000000000000000");

    /* Numbers in decoded text: JS numbers, whatever their spelling. */
    rt("[1.0E+2,-0,0.5e-07,1e-400,123456789012345678901234567890,10.50]",
       "[100,0,5e-8,0,1.2345678901234568e+29,10.5]");
}

static void test_encode_strings(void **state)
{
    json_t *v = json_stringn("\"\\\b\f\n\r\t\x01\x1f\x7f/\xc3\xa9\xe2\x80\xa8", 16);
    assert_non_null(v);
    char *out = encode(v);
    assert_string_equal(out, "\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\x7f/\xc3\xa9\xe2\x80\xa8\"");
    free(out);
    json_decref(v);
    /* A NUL inside a string. */
    v = json_stringn("a\0b", 3);
    out = encode(v);
    assert_string_equal(out, "\"a\\u0000b\"");
    free(out);
    json_decref(v);
    /* Invalid UTF-8 planted with _nocheck comes out as U+FFFD. */
    v = json_stringn_nocheck("a\xff\xc3", 3);
    out = encode(v);
    assert_string_equal(out, "\"a\xef\xbf\xbd\xef\xbf\xbd\"");
    free(out);
    json_decref(v);
    /* Keys keep their order and get the same escapes. */
    v = json_object();
    json_object_set_new(v, "z", json_true());
    json_object_set_new(v, "a\n", json_false());
    json_object_set_new(v, "m", json_null());
    out = encode(v);
    assert_string_equal(out, "{\"z\":true,\"a\\n\":false,\"m\":null}");
    free(out);
    json_decref(v);
}

static void test_encode_limits(void **state)
{
    struct cv_buf b;
    json_t *v = json_pack("{s:[s,s]}", "key", "aaaaaaaaaa", "bbbbbbbbbb");
    cv_buf_init(&b, 16);
    assert_int_equal(cv_buf_append(&b, "xy", 2), 0);
    assert_int_equal(cv_rj_encode(v, &b), CV_ETOOBIG);
    assert_int_equal(b.len, 2); /* nothing partial left behind */
    cv_buf_fini(&b);
    json_decref(v);

    /* json_integer beyond 2^53 from a handler: a BigInt record. */
    v = json_integer(INT64_MAX);
    char *out = encode(v);
    assert_string_equal(out, "{\"__type\":\"BigInt\",\"value\":\"9223372036854775807\"}");
    free(out);
    json_decref(v);
    v = json_integer(-42);
    out = encode(v);
    assert_string_equal(out, "-42");
    free(out);
    json_decref(v);

    /* Too deep for the encoder. */
    v = json_array();
    json_t *cur = v;
    for (int i = 0; i < 2 * CV_RJ_MAX_DEPTH + 5; i++) {
        json_t *n = json_array();
        json_array_append_new(cur, n);
        cur = n;
    }
    cv_buf_init(&b, 1 << 20);
    assert_int_equal(cv_rj_encode(v, &b), CV_ETOOBIG);
    cv_buf_fini(&b);
    json_decref(v);
}

static void test_accessors(void **state)
{
    char why[128];
    double d;
    int64_t ms;
    json_t *v;
    char *out;

    v = cv_rj_make_number(NAN);
    assert_int_equal(cv_rj_number(v, &d), 0);
    assert_true(isnan(d));
    out = encode(v);
    assert_string_equal(out, "{\"__type\":\"NonFiniteNumber\",\"value\":\"NaN\"}");
    free(out);
    json_decref(v);
    v = cv_rj_make_number(-INFINITY);
    assert_int_equal(cv_rj_number(v, &d), 0);
    assert_true(isinf(d) && d < 0);
    json_decref(v);
    v = cv_rj_make_number(-0.0);
    assert_int_equal(cv_rj_number(v, &d), 0);
    assert_false(signbit(d));
    json_decref(v);
    v = json_string("1");
    assert_int_equal(cv_rj_number(v, &d), CV_EINVAL);
    json_decref(v);

    v = cv_rj_make_int(9007199254740992LL);
    assert_true(json_is_real(v));
    json_decref(v);
    v = cv_rj_make_int(-9007199254740993LL);
    assert_string_equal(cv_rj_bigint(v), "-9007199254740993");
    json_decref(v);
    v = cv_rj_make_bigint("+0012");
    assert_string_equal(cv_rj_bigint(v), "12");
    json_decref(v);
    assert_null(cv_rj_make_bigint("1e5"));

    v = cv_rj_make_undefined();
    assert_true(cv_rj_is_undefined(v));
    assert_string_equal(cv_rj_record_type(v), "Undefined");
    json_decref(v);

    /* Dates: make, read back, the extremes and the extended years. */
    static const struct {
        int64_t ms;
        const char *iso;
    } dates[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {5, "1970-01-01T00:00:00.005Z"},
        {-1, "1969-12-31T23:59:59.999Z"},
        {951782400000LL, "2000-02-29T00:00:00.000Z"},
        {1709251199999LL, "2024-02-29T23:59:59.999Z"},
        {253402300800000LL, "+010000-01-01T00:00:00.000Z"},
        {-62167219200000LL, "0000-01-01T00:00:00.000Z"},
        {-62167219200001LL, "-000001-12-31T23:59:59.999Z"},
        {8640000000000000LL, "+275760-09-13T00:00:00.000Z"},
        {-8640000000000000LL, "-271821-04-20T00:00:00.000Z"},
    };
    for (size_t i = 0; i < sizeof dates / sizeof *dates; i++) {
        v = cv_rj_make_date(dates[i].ms);
        assert_non_null(v);
        assert_string_equal(json_string_value(json_object_get(v, "value")), dates[i].iso);
        assert_int_equal(cv_rj_date_ms(v, &ms), 0);
        assert_int_equal(ms, dates[i].ms);
        json_decref(v);
    }
    assert_null(cv_rj_make_date(8640000000000001LL));
    const char *in = "{\"__type\":\"Date\",\"value\":\"2024-02-29T12:00:00.5Z\"}";
    v = cv_rj_decode(in, strlen(in), why, sizeof why);
    assert_int_equal(cv_rj_date_ms(v, &ms), 0);
    assert_int_equal(ms, 1709208000500LL);
    json_decref(v);
    in = "{\"__type\":\"Date\",\"value\":-1.9}";
    v = cv_rj_decode(in, strlen(in), why, sizeof why);
    assert_int_equal(cv_rj_date_ms(v, &ms), 0);
    assert_int_equal(ms, -1);
    json_decref(v);

    static const uint8_t bytes[] = {1, 0, 254, 255};
    v = cv_rj_make_bytes("Int16Array", bytes, 4);
    out = encode(v);
    assert_string_equal(out, "{\"__type\":\"Int16Array\",\"value\":[1,0,254,255]}");
    free(out);
    json_decref(v);
    assert_null(cv_rj_make_bytes("Int16Array", bytes, 3));
    assert_null(cv_rj_make_bytes("Nope", bytes, 4));
    v = cv_rj_make_bytes("Buffer", NULL, 0);
    out = encode(v);
    assert_string_equal(out, "{\"__type\":\"Buffer\",\"value\":[]}");
    free(out);
    json_decref(v);
}

/* cv_rj_build gives json_loadb's tree, and makes records of numbers
 * beyond the double range. */
static void build_same(const char *in)
{
    const char *why = NULL;
    json_error_t err;
    json_t *ref = json_loadb(in, strlen(in), JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &err);
    json_t *got = cv_rj_build(in, strlen(in), &why);
    if (ref == NULL)
        fail_msg("jansson refused %s: %s", in, err.text);
    if (got == NULL)
        fail_msg("builder refused %s: %s", in, why);
    char *a = json_dumps(ref, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
    char *b = json_dumps(got, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (strcmp(a, b) != 0 || !json_equal(ref, got))
        fail_msg("%s: jansson %s, builder %s", in, a, b);
    free(a);
    free(b);
    json_decref(ref);
    json_decref(got);
}

static void build_refused(const char *in, const char *why_part)
{
    const char *why = NULL;
    assert_null(cv_rj_build(in, strlen(in), &why));
    assert_non_null(why);
    assert_non_null(strstr(why, why_part));
}

static void test_build(void **state)
{
    (void)state;
    build_same("{\"a\":1,\"b\":2}");
    build_same("[0,-0,1,-1,123456789012345,1234567890123456,-999999999999999,9007199254740993]");
    build_same("[1.5,-2.25e-3,1E+2,1e308,4.9e-324,1e-400,0.1,123456789012345678901234567890]");
    build_same("{\"k\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000z\"}");
    build_same("{\"dup\":1,\"x\":2,\"dup\":3}");
    build_same("{\"\\u00e9t\\u00e9\":[true,false,null,{},[],\"\"]}");
    build_same("\"plain \xc3\xa9 text\"");
    build_same("[[[[{\"a\":[{}]}]]]]");

    const char *why = NULL;
    json_t *v = cv_rj_build("[1e400,-1e400]", 14, &why);
    assert_non_null(v);
    char *t = json_dumps(v, JSON_COMPACT);
    assert_string_equal(t, "[{\"__type\":\"NonFiniteNumber\",\"value\":\"Infinity\"},"
                           "{\"__type\":\"NonFiniteNumber\",\"value\":\"-Infinity\"}]");
    free(t);
    json_decref(v);
    double d;
    v = cv_rj_build("-0", 2, &why);
    assert_true(json_is_real(v));
    d = json_real_value(v);
    assert_true(d == 0 && signbit(d));
    json_decref(v);
    build_refused("[\"\\ud800\"]", "surrogate");
    build_refused("\"\\udc00x\"", "surrogate");
    build_refused("\"\\ud800\\u0041\"", "surrogate");
    build_refused("{\"a\\u0000\":1}", "NUL");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compact),
        cmocka_unit_test(test_compact_refused),
        cmocka_unit_test(test_compact_truncated),
        cmocka_unit_test(test_compact_depth),
        cmocka_unit_test(test_select_input),
        cmocka_unit_test(test_top_scan),
        cmocka_unit_test(test_compact_string_lanes),
        cmocka_unit_test(test_decode_records),
        cmocka_unit_test(test_decode_keys),
        cmocka_unit_test(test_decode_graph),
        cmocka_unit_test(test_decode_depth),
        cmocka_unit_test(test_encode_numbers),
        cmocka_unit_test(test_encode_strings),
        cmocka_unit_test(test_encode_limits),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
