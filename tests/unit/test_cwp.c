/* Worker line protocol codec (§13): worker lines are validated, compacted
 * and classified per the §13.4 failure table; results keep their bytes;
 * error statuses follow cwp/1, v1 and v2 rules; frames and the hello
 * parse; gateway lines are built byte for byte. Lines are whole units
 * (the pool splits on '\n' first), so there is no byte-at-a-time case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/cwp.h"
#include "core/err.h"

static char text[1 << 16];
static size_t text_len;

static int parse(enum cv_cwp_proto proto, const char *line, struct cv_cwp_msg *m)
{
    size_t n = strlen(line);
    assert_true(n < sizeof(text));
    return cv_cwp_parse(proto, line, n, text, &text_len, m);
}

static void assert_slice(struct cv_cwp_slice s, const char *want)
{
    assert_true(s.present);
    assert_true(s.off + s.len <= text_len);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(text + s.off, want, s.len);
}

static void test_reply_result_bytes(void **state)
{
    struct cv_cwp_msg m;
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"id\":7,\"ok\":true,\"result\":1.50e+3}", &m), 0);
    assert_int_equal(m.type, CV_CWP_REPLY);
    assert_int_equal(m.id, 7);
    assert_true(m.ok);
    assert_slice(m.result, "1.50e+3"); /* numbers are never rewritten */
    assert_false(m.stream);

    /* Whitespace between tokens goes, string contents stay. */
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           " { \"ok\" : true ,\t\"id\" : 9 , \"result\" : { \"a b\" : [ 1 , "
                           "\"x  y\\n\" , null ] } }\r",
                           &m),
                     0);
    assert_int_equal(m.id, 9);
    assert_slice(m.result, "{\"a b\":[1,\"x  y\\n\",null]}");
    assert_int_equal(text_len,
                     strlen("{\"ok\":true,\"id\":9,\"result\":{\"a b\":[1,\"x  y\\n\",null]}}"));

    /* No result: undefined. Repeated keys: the last wins (JSON.parse). */
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"id\":1,\"ok\":true}", &m), 0);
    assert_false(m.result.present);
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           "{\"id\":1,\"id\":2,\"ok\":false,\"ok\":true,\"result\":\"\u00e9\"}",
                           &m),
                     0);
    assert_int_equal(m.id, 2);
    assert_true(m.ok);
    assert_slice(m.result, "\"\u00e9\"");
}

static void test_not_objects(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "garbage",
        "[1,2,3]",
        "\"str\"",
        "5",
        "null",
        "{",
        "{\"id\":1,}",
        "{\"id\":1}x",
        "{\"id\":1} {}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":tru}",
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"\xc3\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xe0\x80\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{'a':1}",
        "{\"a\" 1}",
        "{\"a\":[1 2]}",
        "{\"a\":1e}",
        "{a:1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        struct cv_cwp_msg m;
        assert_int_equal(parse(CV_CWP_PROTO_CWP1, bad[i], &m), CV_EPROTO);
        assert_non_null(m.why);
    }
    /* Depth: 1000 levels (the object and 999 arrays) are fine, 1001 are not. */
    static char deep[2100];
    for (int arrays = 999; arrays <= 1000; arrays++) {
        size_t n = 5;
        memcpy(deep, "{\"a\":", 5);
        for (int i = 0; i < arrays; i++)
            deep[n++] = '[';
        for (int i = 0; i < arrays; i++)
            deep[n++] = ']';
        deep[n++] = '}';
        deep[n] = '\0';
        struct cv_cwp_msg m;
        assert_int_equal(parse(CV_CWP_PROTO_CWP1, deep, &m), arrays == 999 ? 0 : CV_EPROTO);
    }
}

static void test_worker_level(void **state)
{
    static const char *const lines[] = {
        "{\"id\":0,\"ok\":false,\"error\":{\"message\":\"x\"}}",
        "{\"ok\":true}",
        "{\"id\":\"7\",\"ok\":true}",
        "{\"id\":-1,\"ok\":true}",
        "{\"id\":1.5,\"ok\":true}",
        "{\"id\":9007199254740992,\"ok\":true}",
        "{}",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(*lines); i++) {
        struct cv_cwp_msg m;
        assert_int_equal(parse(CV_CWP_PROTO_CWP1, lines[i], &m), 0);
        assert_int_equal(m.type, CV_CWP_WORKER);
    }
    struct cv_cwp_msg m;
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"id\":9007199254740991,\"ok\":true}", &m), 0);
    assert_int_equal(m.type, CV_CWP_REPLY);
    assert_true(m.id == 9007199254740991ull);
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"id\":3,\"type\":\"weird\"}", &m), 0);
    assert_int_equal(m.type, CV_CWP_OTHER);
}

static void expect_bad(enum cv_cwp_proto proto, const char *line)
{
    struct cv_cwp_msg m;
    assert_int_equal(parse(proto, line, &m), 0);
    assert_int_equal(m.type, CV_CWP_BAD);
    assert_int_equal(m.id, 4);
    assert_non_null(m.why);
}

static void test_bad_shapes(void **state)
{
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":\"yes\"}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":1}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":false}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":false,\"error\":\"boom\"}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":false,\"error\":{\"code\":\"X\"}}");
    expect_bad(CV_CWP_PROTO_CWP1,
               "{\"id\":4,\"ok\":false,\"error\":{\"message\":1,\"code\":\"X\"}}");
    expect_bad(CV_CWP_PROTO_CWP1,
               "{\"id\":4,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":{}}}");
    expect_bad(CV_CWP_PROTO_CWP1,
               "{\"id\":4,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":null}}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":false,\"error\":{\"message\":\"m\"}}");
    expect_bad(CV_CWP_PROTO_V2, "{\"id\":4,\"ok\":false,\"error\":{\"message\":\"m\"}}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":true,\"stream\":5}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":true,\"stream\":{\"status\":99}}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":true,\"stream\":{\"contentType\":1}}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"ok\":true,\"stream\":{\"headers\":[]}}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"type\":\"data\",\"b64\":\"AA==\"}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"type\":\"data\",\"stream\":\"out\"}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"type\":\"ack\",\"stream\":\"body\",\"bytes\":-1}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"type\":\"file\",\"stream\":\"f\",\"meta\":1}");
    expect_bad(CV_CWP_PROTO_CWP1, "{\"id\":4,\"type\":7}");
    /* v1: the code is optional. */
    struct cv_cwp_msg m;
    assert_int_equal(
        parse(CV_CWP_PROTO_V1, "{\"id\":4,\"ok\":false,\"error\":{\"message\":\"m\"}}", &m), 0);
    assert_int_equal(m.type, CV_CWP_REPLY);
    assert_int_equal(m.status, 500);
}

static int status_of(enum cv_cwp_proto proto, const char *line)
{
    struct cv_cwp_msg m;
    assert_int_equal(parse(proto, line, &m), 0);
    assert_int_equal(m.type, CV_CWP_REPLY);
    assert_false(m.ok);
    return m.status;
}

static void test_error_status(void **state)
{
    const enum cv_cwp_proto C = CV_CWP_PROTO_CWP1;
    assert_int_equal(status_of(C, "{\"id\":1,\"ok\":false,\"status\":409,\"error\":{\"message\":"
                                  "\"m\",\"code\":\"X\",\"httpCode\":418}}"),
                     409);
    assert_int_equal(status_of(C, "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":"
                                  "\"X\",\"httpCode\":418}}"),
                     418);
    /* Only integers 400..599 count; the next candidate is used. */
    assert_int_equal(status_of(C, "{\"id\":1,\"ok\":false,\"status\":302,\"error\":{\"message\":"
                                  "\"m\",\"code\":\"X\",\"httpCode\":404}}"),
                     404);
    assert_int_equal(status_of(C, "{\"id\":1,\"ok\":false,\"status\":\"409\",\"error\":{"
                                  "\"message\":\"m\",\"code\":\"X\"}}"),
                     500);
    assert_int_equal(status_of(C, "{\"id\":1,\"ok\":false,\"status\":409.5,\"error\":{\"message\":"
                                  "\"m\",\"code\":\"X\",\"httpCode\":600}}"),
                     500);
    assert_int_equal(
        status_of(C, "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":\"X\"}}"), 500);
    /* v1: NOT_FOUND 404, INVALID_REQUEST 400, else 500. */
    assert_int_equal(status_of(CV_CWP_PROTO_V1, "{\"id\":1,\"ok\":false,\"error\":{\"message\":"
                                                "\"Task not found: x\",\"code\":\"NOT_FOUND\"}}"),
                     404);
    assert_int_equal(
        status_of(
            CV_CWP_PROTO_V1,
            "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":\"INVALID_REQUEST\"}}"),
        400);
    assert_int_equal(
        status_of(
            CV_CWP_PROTO_V1,
            "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":\"EXECUTION_ERROR\"}}"),
        500);
    /* v2: a numeric code 400..599 is the status. */
    assert_int_equal(
        status_of(CV_CWP_PROTO_V2, "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"m\",\"code\":"
                                   "401,\"codeName\":\"UNAUTHORIZED\"}}"),
        401);
    assert_int_equal(status_of(CV_CWP_PROTO_V2, "{\"id\":1,\"ok\":false,\"error\":{\"message\":"
                                                "\"m\",\"code\":200,\"codeName\":\"X\"}}"),
                     500);
}

static void test_put_error(void **state)
{
    struct cv_cwp_msg m;
    struct cv_buf b;
    cv_buf_init(&b, 4096);
    /* A string code: the error object as sent (compacted). */
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           "{\"id\":1,\"ok\":false,\"error\":{ \"message\" : \"m\", "
                           "\"code\":\"E\",\"data\":{\"n\":1.0}}}",
                           &m),
                     0);
    assert_int_equal(cv_cwp_put_error(&b, text, &m), 0);
    assert_int_equal(b.len, strlen("{\"message\":\"m\",\"code\":\"E\",\"data\":{\"n\":1.0}}"));
    assert_memory_equal(cv_buf_head(&b), "{\"message\":\"m\",\"code\":\"E\",\"data\":{\"n\":1.0}}",
                        b.len);
    /* A legacy number: codeName becomes the code. */
    cv_buf_reset(&b);
    assert_int_equal(parse(CV_CWP_PROTO_V2,
                           "{\"id\":1,\"ok\":false,\"error\":{\"message\":\"nope\",\"code\":401,"
                           "\"codeName\":\"UNAUTHORIZED\"}}",
                           &m),
                     0);
    assert_true(m.legacy_code);
    assert_int_equal(cv_cwp_put_error(&b, text, &m), 0);
    const char *want = "{\"message\":\"nope\",\"code\":\"UNAUTHORIZED\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(cv_buf_head(&b), want, b.len);
    /* ... or INTERNAL_ERROR without one. */
    cv_buf_reset(&b);
    assert_int_equal(
        parse(CV_CWP_PROTO_CWP1,
              "{\"id\":1,\"ok\":false,\"error\":{\"code\":500,\"message\":\"x\",\"data\":[1]}}",
              &m),
        0);
    assert_int_equal(m.status, 500);
    assert_int_equal(cv_cwp_put_error(&b, text, &m), 0);
    want = "{\"message\":\"x\",\"data\":[1],\"code\":\"INTERNAL_ERROR\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(cv_buf_head(&b), want, b.len);
    cv_buf_fini(&b);
}

static void test_stream_reply(void **state)
{
    struct cv_cwp_msg m;
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           "{\"id\":7,\"ok\":true,\"stream\":{\"status\":201,\"contentType\":"
                           "\"text/csv\",\"headers\":{\"x-custom\":\"yes\"}}}",
                           &m),
                     0);
    assert_int_equal(m.type, CV_CWP_REPLY);
    assert_true(m.stream);
    assert_int_equal(m.stream_status, 201);
    assert_slice(m.content_type, "\"text/csv\"");
    assert_slice(m.headers, "{\"x-custom\":\"yes\"}");
    size_t pos = m.headers.off;
    struct cv_cwp_slice k, v;
    assert_true(cv_cwp_next_member(text, text_len, &pos, &k, &v));
    assert_true(cv_cwp_str_eq(text, k, "x-custom"));
    assert_true(cv_cwp_str_eq(text, v, "yes"));
    assert_false(cv_cwp_next_member(text, text_len, &pos, &k, &v));
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"id\":7,\"ok\":true,\"stream\":{}}", &m), 0);
    assert_true(m.stream);
    assert_int_equal(m.stream_status, 200);
    assert_false(m.content_type.present);
}

static void test_frames(void **state)
{
    struct cv_cwp_msg m;
    uint8_t dec[16];
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           "{\"type\":\"data\",\"id\":3,\"stream\":\"out\",\"b64\":\"aGVsbG8=\"}",
                           &m),
                     0);
    assert_int_equal(m.type, CV_CWP_DATA);
    assert_int_equal(m.id, 3);
    assert_true(cv_cwp_str_eq(text, m.stream_name, "out"));
    assert_int_equal(cv_cwp_b64_decode(text + m.b64.off, m.b64.len, dec), 5);
    assert_memory_equal(dec, "hello", 5);
    assert_int_equal(
        parse(CV_CWP_PROTO_CWP1,
              "{\"type\":\"end\",\"id\":3,\"stream\":\"out\",\"error\":{\"message\":\"x\"}}", &m),
        0);
    assert_int_equal(m.type, CV_CWP_END);
    assert_slice(m.frame_error, "{\"message\":\"x\"}");
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, "{\"type\":\"end\",\"id\":3,\"stream\":\"out\"}", &m),
                     0);
    assert_false(m.frame_error.present);
    assert_int_equal(parse(CV_CWP_PROTO_CWP1,
                           "{\"type\":\"ack\",\"id\":3,\"stream\":\"f\\u0031\",\"bytes\":65536}",
                           &m),
                     0);
    assert_int_equal(m.type, CV_CWP_ACK);
    assert_int_equal(m.bytes, 65536);
    assert_true(cv_cwp_str_eq(text, m.stream_name, "f1"));
    assert_int_equal(
        parse(CV_CWP_PROTO_CWP1,
              "{\"type\":\"file\",\"id\":3,\"stream\":\"f1\",\"meta\":{\"name\":\"a.txt\"}}", &m),
        0);
    assert_int_equal(m.type, CV_CWP_FILE);
    assert_slice(m.meta, "{\"name\":\"a.txt\"}");
}

static void test_hello(void **state)
{
    struct cv_cwp_msg m;
    struct cv_cwp_hello h;
    const char *line =
        "{\"type\":\"hello\",\"protocol\":\"cwp/1\",\"pid\":4242,\"tasks\":[\"app.tasks.add\"],"
        "\"events\":[\"app.events.notify\"],\"parallelEvents\":[\"app.events.par\"],"
        "\"maxInFlight\":8,\"features\":[\"cancel\",\"auth\",\"streams\",\"future\"],\"window\":"
        "4096}";
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, line, &m), 0);
    assert_int_equal(m.type, CV_CWP_HELLO);
    assert_int_equal(cv_cwp_hello_parse(text, text_len, &h), 0);
    assert_string_equal(h.protocol, "cwp/1");
    assert_int_equal(h.pid, 4242);
    assert_true(h.has_tasks && h.ntasks == 1);
    assert_string_equal(h.tasks[0], "app.tasks.add");
    assert_true(h.has_events && h.nevents == 1);
    assert_true(h.has_parallel && h.nparallel == 1);
    assert_string_equal(h.parallel[0], "app.events.par");
    assert_int_equal(h.max_in_flight, 8);
    assert_int_equal(h.window, 4096);
    assert_true(h.f_cancel && h.f_auth && h.f_streams);
    cv_cwp_hello_fini(&h);

    /* Defaults; lists absent. */
    assert_int_equal(cv_cwp_hello_parse("{\"type\":\"hello\"}", 16, &h), 0);
    assert_int_equal(h.max_in_flight, 64);
    assert_int_equal(h.window, 1024 * 1024);
    assert_false(h.has_tasks || h.has_events || h.has_parallel);
    assert_false(h.f_cancel || h.f_streams);
    cv_cwp_hello_fini(&h);

    static const char *const bad[] = {
        "{\"type\":\"hello\",\"protocol\":\"cwp/2\"}",
        "{\"type\":\"hello\",\"tasks\":\"x\"}",
        "{\"type\":\"hello\",\"tasks\":[1]}",
        "{\"type\":\"hello\",\"maxInFlight\":0}",
        "{\"type\":\"hello\",\"window\":-1}",
        "{\"type\":\"hello\",\"features\":[1]}",
        "{\"type\":\"other\"}",
        "[]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        assert_int_equal(cv_cwp_hello_parse(bad[i], strlen(bad[i]), &h), CV_EPROTO);
}

static void assert_line(struct cv_buf *b, const char *want)
{
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(cv_buf_head(b), want, b->len);
    cv_buf_reset(b);
}

static void test_build_calls(void **state)
{
    struct cv_buf b;
    cv_buf_init(&b, 1 << 20);
    const char *ctx = "{\"method\":\"POST\",\"path\":\"/__runner/task/"
                      "app.tasks.add\",\"query\":{},\"headers\":{},\"requestId\":\"r1\",\"remote\":"
                      "\"127.0.0.1\"}";
    struct cv_cwp_call c = {.id = 1,
                            .name = "app.tasks.add",
                            .rid = "r1",
                            .mode = CV_CWP_MODE_JSON,
                            .input = "{\"a\":5,\"b\":3.0}",
                            .input_len = 15,
                            .context = ctx,
                            .context_len = strlen(ctx),
                            .deadline_ms = 30000};
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_CWP1, &c), 0);
    char want[1024];
    snprintf(
        want, sizeof(want),
        "{\"type\":\"task\",\"id\":1,\"taskId\":\"app.tasks.add\",\"rid\":\"r1\",\"mode\":\"json\","
        "\"input\":{\"a\":5,\"b\":3.0},\"context\":%s,\"deadlineMs\":30000}\n",
        ctx);
    assert_line(&b, want);
    /* v1: the Rust prototype's shape. */
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_V1, &c), 0);
    assert_line(&b, "{\"type\":\"task\",\"id\":1,\"taskId\":\"app.tasks.add\",\"input\":{\"a\":5,"
                    "\"b\":3.0}}\n");
    /* v2 adds the context. */
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_V2, &c), 0);
    snprintf(want, sizeof(want),
             "{\"type\":\"task\",\"id\":1,\"taskId\":\"app.tasks.add\",\"input\":{\"a\":5,\"b\":3."
             "0},\"context\":%s}\n",
             ctx);
    assert_line(&b, want);
    /* Octet: no input. Graph: "body". Escaped names. */
    c.mode = CV_CWP_MODE_OCTET;
    c.input = NULL;
    c.context = NULL;
    c.name = "we\"ird\x01";
    c.deadline_ms = 5;
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_CWP1, &c), 0);
    assert_line(&b, "{\"type\":\"task\",\"id\":1,\"taskId\":\"we\\\"ird\\u0001\",\"rid\":\"r1\","
                    "\"mode\":\"octet\",\"deadlineMs\":5}\n");
    c.mode = CV_CWP_MODE_JSON;
    c.name = "t";
    c.input = "{\"__graph\":true}";
    c.input_len = 16;
    c.is_body = true;
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_CWP1, &c), 0);
    assert_line(&b, "{\"type\":\"task\",\"id\":1,\"taskId\":\"t\",\"rid\":\"r1\",\"mode\":\"json\","
                    "\"body\":{\"__graph\":true},\"deadlineMs\":5}\n");
    /* JSON mode without input: the Undefined record. */
    c.input = NULL;
    c.is_body = false;
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_CWP1, &c), 0);
    assert_line(&b, "{\"type\":\"task\",\"id\":1,\"taskId\":\"t\",\"rid\":\"r1\",\"mode\":\"json\","
                    "\"input\":{\"__type\":\"Undefined\",\"value\":null},\"deadlineMs\":5}\n");
    /* Events. */
    struct cv_cwp_call e = {.event = true,
                            .id = 2,
                            .name = "app.events.notify",
                            .rid = "r2",
                            .input = "{\"msg\":\"hi\"}",
                            .input_len = 12,
                            .return_payload = true,
                            .deadline_ms = 100};
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_CWP1, &e), 0);
    assert_line(&b, "{\"type\":\"event\",\"id\":2,\"eventId\":\"app.events.notify\",\"rid\":\"r2\","
                    "\"payload\":{\"msg\":\"hi\"},\"returnPayload\":true,\"deadlineMs\":100}\n");
    assert_int_equal(cv_cwp_put_call(&b, CV_CWP_PROTO_V1, &e), 0);
    assert_line(&b, "{\"type\":\"event\",\"id\":2,\"eventId\":\"app.events.notify\",\"payload\":{"
                    "\"msg\":\"hi\"}}\n");
    cv_buf_fini(&b);
}

static void test_build_control(void **state)
{
    struct cv_buf b;
    cv_buf_init(&b, 1 << 20);
    assert_int_equal(cv_cwp_put_cancel(&b, 7, "timeout"), 0);
    assert_line(&b, "{\"type\":\"cancel\",\"id\":7,\"reason\":\"timeout\"}\n");
    assert_int_equal(cv_cwp_put_ping(&b, 9007199254740991ull), 0);
    assert_line(&b, "{\"type\":\"ping\",\"id\":9007199254740991}\n");
    assert_int_equal(cv_cwp_put_shutdown(&b, CV_CWP_PROTO_CWP1, 3, 10000), 0);
    assert_line(&b, "{\"type\":\"shutdown\",\"id\":3,\"graceMs\":10000}\n");
    assert_int_equal(cv_cwp_put_shutdown(&b, CV_CWP_PROTO_V1, 3, 10000), 0);
    assert_line(&b, "{\"type\":\"shutdown\",\"id\":3}\n");
    assert_int_equal(cv_cwp_put_auth(&b, 4, "r", "{}", 2), 0);
    assert_line(&b, "{\"type\":\"auth\",\"id\":4,\"rid\":\"r\",\"context\":{}}\n");
    assert_int_equal(cv_cwp_put_data(&b, 5, "body", (const uint8_t *)"hello", 5), 0);
    assert_line(&b, "{\"type\":\"data\",\"id\":5,\"stream\":\"body\",\"b64\":\"aGVsbG8=\"}\n");
    assert_int_equal(cv_cwp_put_data(&b, 5, "body", (const uint8_t *)"", 0), 0);
    assert_line(&b, "{\"type\":\"data\",\"id\":5,\"stream\":\"body\",\"b64\":\"\"}\n");
    assert_int_equal(cv_cwp_put_end(&b, 5, "body", NULL, 0), 0);
    assert_line(&b, "{\"type\":\"end\",\"id\":5,\"stream\":\"body\"}\n");
    assert_int_equal(cv_cwp_put_end(&b, 5, "f1", "{\"message\":\"x\"}", 15), 0);
    assert_line(&b,
                "{\"type\":\"end\",\"id\":5,\"stream\":\"f1\",\"error\":{\"message\":\"x\"}}\n");
    assert_int_equal(cv_cwp_put_file(&b, 5, "f1", "{\"name\":\"a\"}", 12), 0);
    assert_line(&b, "{\"type\":\"file\",\"id\":5,\"stream\":\"f1\",\"meta\":{\"name\":\"a\"}}\n");
    assert_int_equal(cv_cwp_put_ack(&b, 5, "out", 65536), 0);
    assert_line(&b, "{\"type\":\"ack\",\"id\":5,\"stream\":\"out\",\"bytes\":65536}\n");
    cv_buf_fini(&b);
}

static void test_build_limits(void **state)
{
    struct cv_buf b;
    static uint8_t big[CV_CWP_MAX_DATA + 1];
    cv_buf_init(&b, 40);
    assert_int_equal(cv_cwp_put_data(&b, 1, "body", big, sizeof(big)), CV_ETOOBIG);
    assert_int_equal(cv_cwp_put_cancel(&b, 7, "timeout"), CV_ETOOBIG);
    assert_int_equal(b.len, 0); /* unchanged on failure */
    assert_int_equal(cv_cwp_put_ping(&b, 7), 0);
    size_t before = b.len;
    assert_int_equal(cv_cwp_put_ping(&b, 8), CV_ETOOBIG);
    assert_int_equal(b.len, before);
    cv_buf_fini(&b);
}

static void test_base64(void **state)
{
    struct cv_buf b;
    uint8_t src[300], dec[400];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 + 3);
    cv_buf_init(&b, 1 << 20);
    for (size_t n = 0; n < sizeof(src); n++) {
        assert_int_equal(cv_cwp_put_data(&b, 1, "s", src, n), 0);
        struct cv_cwp_msg m;
        size_t len = b.len - 1; /* without '\n' */
        memcpy(text, cv_buf_head(&b), len);
        text[len] = '\0';
        assert_int_equal(cv_cwp_parse(CV_CWP_PROTO_CWP1, text, len, text, &text_len, &m), 0);
        assert_int_equal(m.type, CV_CWP_DATA);
        assert_int_equal(cv_cwp_b64_decode(text + m.b64.off, m.b64.len, dec), (int)n);
        assert_memory_equal(dec, src, n);
        cv_buf_reset(&b);
    }
    cv_buf_fini(&b);
    /* Unpadded is accepted; bad alphabet, length and trailing bits are not. */
    assert_int_equal(cv_cwp_b64_decode("aGVsbG8", 7, dec), 5);
    assert_int_equal(cv_cwp_b64_decode("aGk", 3, dec), 2);
    assert_int_equal(cv_cwp_b64_decode("aGVsbG8*", 8, dec), CV_EPROTO);
    assert_int_equal(cv_cwp_b64_decode("a", 1, dec), CV_EPROTO);
    assert_int_equal(cv_cwp_b64_decode("aGVsb", 5, dec), CV_EPROTO);
    assert_int_equal(cv_cwp_b64_decode("aGl=", 4, dec), CV_EPROTO);
    assert_int_equal(cv_cwp_b64_decode("a=b=", 4, dec), CV_EPROTO);
    assert_int_equal(cv_cwp_b64_decode("", 0, dec), 0);
}

static void test_strings(void **state)
{
    char out[64];
    struct cv_cwp_slice s;
    const char *t = "\"a\\\"b\\\\c\\/\\n\\u00e9\\ud83d\\ude00\\ud800x\"";
    s = (struct cv_cwp_slice){0, strlen(t), true};
    int n = cv_cwp_str(t, s, out, sizeof(out));
    const char *want = "a\"b\\c/\n\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbdx";
    assert_int_equal(n, (int)strlen(want));
    assert_memory_equal(out, want, (size_t)n);
    assert_int_equal(cv_cwp_str(t, s, out, 4), CV_ETOOBIG);
    assert_true(cv_cwp_str_eq("\"out\"", (struct cv_cwp_slice){0, 5, true}, "out"));
    assert_false(cv_cwp_str_eq("\"outx\"", (struct cv_cwp_slice){0, 6, true}, "out"));
    assert_true(cv_cwp_str_eq("\"\\u006fut\"", (struct cv_cwp_slice){0, 10, true}, "out"));
}

static void test_fix_utf8(void **state)
{
    struct cv_buf b;
    struct cv_cwp_msg m;
    cv_buf_init(&b, 1 << 16);
    const char *good = "{\"id\":1,\"ok\":true,\"result\":\"\xc3\xa9\"}";
    assert_int_equal(cv_cwp_fix_utf8(good, strlen(good), &b), 0);
    assert_int_equal(b.len, 0);
    /* A lone byte, a truncated sequence, a surrogate: each bad byte becomes U+FFFD. */
    const char *bad = "{\"id\":1,\"ok\":true,\"result\":\"a\xff"
                      "b\xc3\"}";
    assert_int_equal(parse(CV_CWP_PROTO_CWP1, bad, &m), CV_EPROTO);
    assert_string_equal(m.why, "invalid UTF-8");
    assert_int_equal(cv_cwp_fix_utf8(bad, strlen(bad), &b), 1);
    const char *want = "{\"id\":1,\"ok\":true,\"result\":\"a\xef\xbf\xbd"
                       "b\xef\xbf\xbd\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(cv_buf_head(&b), want, b.len);
    assert_int_equal(
        cv_cwp_parse(CV_CWP_PROTO_CWP1, (const char *)cv_buf_head(&b), b.len, text, &text_len, &m),
        0);
    assert_slice(m.result, "\"a\xef\xbf\xbd"
                           "b\xef\xbf\xbd\"");
    cv_buf_reset(&b);
    assert_int_equal(cv_cwp_fix_utf8("\xed\xa0\x80", 3, &b), 1);
    assert_int_equal(b.len, 9);
    cv_buf_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_result_bytes),
        cmocka_unit_test(test_not_objects),
        cmocka_unit_test(test_worker_level),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_error_status),
        cmocka_unit_test(test_put_error),
        cmocka_unit_test(test_stream_reply),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_build_calls),
        cmocka_unit_test(test_build_control),
        cmocka_unit_test(test_build_limits),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_fix_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
