/* Multipart mode (spec §8.3) on the streaming parser of codec/multipart.h.
 *
 * The call starts as soon as the __manifest field decodes; its input is
 * the manifest's "input" member, byte for byte, with the file sentinels
 * in place ({"$runnerFile":"File",...}, or "$ejson" as older clients wrote
 * it). File parts ("file:<id>") that come before the manifest are
 * spooled (gateway/spool.h: the first GW_SPOOL_MEM_MAX bytes of a request
 * in memory, the rest in unnamed temporary files under --spool-dir; each
 * part within the file-size limit) and replayed once the call has
 * started, in chunks and under the same flow control as live parts: the
 * replay stops while the backend holds GW_INFLIGHT_MAX unconsumed bytes
 * and goes on from the loop as it consumes them. Later parts are
 * streamed to the backend as they arrive. A spool that cannot be written
 * or read (ENOSPC, EIO...) fails the request with 500 INTERNAL_ERROR.
 * When the backend answers before the body has ended, the answer is held:
 * a multipart failure found later (bad framing, a limit, a sentinel whose
 * part never came) replaces it. */
#include <stdlib.h>
#include <string.h>

#include "codec/multipart.h"
#include "codec/rjson.h"
#include "core/err.h"
#include "core/log.h"
#include "gateway/gw.h"
#include "gateway/spool.h"

/* Files a manifest may name (each then needs its part). */
#define MAX_SENTINELS 1024

enum cur { CUR_NONE, CUR_MANIFEST, CUR_EARLY, CUR_LIVE };

struct sentinel {
    char *id;      /* owned */
    json_t *meta;  /* owned: the manifest's meta object (or NULL) */
    bool received; /* its part began (or an early part was matched to it) */
    bool opened;   /* the backend got file_open */
    bool ended;    /* ... and the end of the stream */
};

struct early {
    struct early *next;
    char *id, *filename, *mime; /* owned */
    struct sentinel *s;         /* borrowed: the sentinel it replays to, or NULL */
    struct cv_spool data;
};

struct gw_upload {
    struct cv_mp *mp;
    struct cv_mp_limits lim;
    struct cv_buf manifest;
    bool manifest_seen, started, done;
    bool failing; /* answers the backend gives while we fail are dropped */
    enum cur cur;
    struct sentinel *sent; /* owned array */
    size_t nsent;
    struct sentinel *live; /* the sentinel of the current live part */
    struct early *early, *cur_early;
    struct cv_spool_budget budget; /* memory of the early parts' spools */
    /* Replay of the early parts: the one being sent and its offset. */
    struct early *replay;
    uint64_t replay_off;
    bool pumping; /* inside pump (re-entry guard) */
    bool queued;  /* on gw->replayq */
    struct gw_upload *qprev, *qnext;
    struct cv_gw_req *r; /* borrowed: the request owning this */
    /* the failure to answer, set inside parser callbacks */
    int fail_status;
    const char *fail_code;
    char fail_msg[160];
};

static void set_fail(struct gw_upload *u, int status, const char *code, const char *msg)
{
    if (u->fail_status)
        return;
    u->fail_status = status;
    u->fail_code = code;
    snprintf(u->fail_msg, sizeof u->fail_msg, "%s", msg);
}

static struct sentinel *find_sentinel(struct gw_upload *u, const char *id)
{
    for (size_t i = 0; i < u->nsent; i++)
        if (strcmp(u->sent[i].id, id) == 0)
            return &u->sent[i];
    return NULL;
}

/* The file sentinel's tag: "$runnerFile", or "$ejson" as clients before
 * 2026 wrote it (spec §8.3: MAY accept; same shape otherwise). */
static const char *file_tag(const json_t *v)
{
    const char *t = json_string_value(json_object_get(v, "$runnerFile"));
    return t != NULL ? t : json_string_value(json_object_get(v, "$ejson"));
}

/* Collects {"$runnerFile":"File","id":...,"meta":{...}} objects. */
static int collect(struct gw_upload *u, json_t *v, int depth)
{
    if (depth > CV_RJ_MAX_DEPTH)
        return 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int rc = collect(u, x, depth + 1);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    if (!json_is_object(v))
        return 0;
    const char *tag = file_tag(v);
    const char *id = json_string_value(json_object_get(v, "id"));
    if (tag != NULL && strcmp(tag, "File") == 0 && id != NULL) {
        if (find_sentinel(u, id) != NULL)
            return 0;
        if (u->nsent >= MAX_SENTINELS)
            return CV_ETOOBIG;
        struct sentinel *s = realloc(u->sent, (u->nsent + 1) * sizeof *s);
        if (s == NULL)
            return CV_ENOMEM;
        u->sent = s;
        json_t *meta = json_object_get(v, "meta");
        s[u->nsent] = (struct sentinel){strdup(id), json_is_object(meta) ? json_incref(meta) : NULL,
                                        false, false, false};
        if (s[u->nsent].id == NULL)
            return CV_ENOMEM;
        u->nsent++;
        return 0;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        int rc = collect(u, x, depth + 1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The metadata the backend gets: the manifest's, gaps filled from the
 * part headers (filename -> name, content type -> type). */
static char *merged_meta(const struct sentinel *s, const char *filename, const char *mime)
{
    json_t *m = s->meta ? json_deep_copy(s->meta) : json_object();
    if (m == NULL)
        return NULL;
    if (!json_is_string(json_object_get(m, "name")))
        json_object_set_new(m, "name", json_string(filename ? filename : "upload"));
    if (!json_is_string(json_object_get(m, "type")))
        json_object_set_new(m, "type", json_string(mime ? mime : "application/octet-stream"));
    char *txt = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(m);
    return txt;
}

static void open_file(struct cv_gw_req *r, struct sentinel *s, const char *filename,
                      const char *mime)
{
    s->received = true;
    if (r->finished)
        return;
    s->opened = true;
    char *meta = merged_meta(s, filename, mime);
    if (meta == NULL) {
        gw_fail_call(r, 500, "INTERNAL_ERROR", "Internal Error");
        return;
    }
    r->be->ops->file_open(r->be, r, s->id, meta, strlen(meta));
    free(meta);
}

/* ---- Replay of the early parts ---- */

static void on_replayq(uv_idle_t *h);

static void unqueue(struct gw_upload *u)
{
    if (!u->queued)
        return;
    struct cv_gateway *gw = u->r->gw;
    if (u->qprev)
        u->qprev->qnext = u->qnext;
    else
        gw->replayq = u->qnext;
    if (u->qnext)
        u->qnext->qprev = u->qprev;
    else
        gw->replayq_tail = u->qprev;
    u->qprev = u->qnext = NULL;
    u->queued = false;
}

/* The replay goes on from the loop: never inside the backend's call that
 * released the bytes (it may be in the middle of its own bookkeeping). */
static void enqueue(struct gw_upload *u)
{
    if (u->queued)
        return;
    struct cv_gateway *gw = u->r->gw;
    u->qnext = NULL;
    u->qprev = gw->replayq_tail;
    if (gw->replayq_tail)
        gw->replayq_tail->qnext = u;
    else
        gw->replayq = u;
    gw->replayq_tail = u;
    u->queued = true;
    uv_idle_start(&gw->replay_idle, on_replayq);
}

/* No more replay: the spools' descriptors and memory go now. */
static void drop_early(struct gw_upload *u)
{
    unqueue(u);
    u->replay = NULL;
    for (struct early *e = u->early; e; e = e->next)
        cv_spool_fini(&e->data);
}

static void spool_failed(struct cv_gw_req *r, const char *what, int rc)
{
    cv_log_info("gateway: %s: %s a spooled file part failed: %s (rid %s)", r->id, what,
                cv_strerror(rc), r->rid);
    set_fail(r->up, 500, "INTERNAL_ERROR", "Internal Error");
}

/* Sends the next chunk of the early part being replayed, or opens or
 * ends it. Returns 1 (more to do), 0 (stop: the backend holds enough, or
 * the turn's share is used up) or -1 (spool read failure, set). */
static int replay_step(struct cv_gw_req *r, uint8_t *chunk, size_t *turn)
{
    struct gw_upload *u = r->up;
    struct early *e = u->replay;
    if (e->s == NULL || e->s->ended) {
        u->replay = e->next;
        return 1;
    }
    if (!e->s->opened) {
        open_file(r, e->s, e->filename, e->mime);
        return 1;
    }
    if (u->replay_off == cv_spool_size(&e->data)) {
        e->s->ended = true;
        r->be->ops->stream_end(r->be, r, e->s->id, NULL);
        cv_spool_fini(&e->data); /* its memory and descriptor, now */
        u->replay = e->next;
        u->replay_off = 0;
        return 1;
    }
    if (r->inflight > GW_INFLIGHT_MAX)
        return 0; /* gw_upload_consumed brings us back */
    if (*turn >= GW_INFLIGHT_MAX) {
        enqueue(u);
        return 0;
    }
    size_t got;
    int rc = cv_spool_read(&e->data, u->replay_off, chunk, GW_SPOOL_CHUNK, &got);
    if (rc < 0) {
        spool_failed(r, "reading", rc);
        return -1;
    }
    u->replay_off += got;
    *turn += got;
    gw_stream_in(r, e->s->id, chunk, got);
    return 1;
}

/* Moves early parts to the backend while it has room, at most
 * GW_INFLIGHT_MAX bytes per loop turn so that a backend that consumes at
 * once (native handlers) does not keep the loop for a whole file. The
 * spool is read with plain blocking pread: a local temporary file, most
 * likely still in the page cache, one GW_SPOOL_CHUNK at a time. Returns 0,
 * or -1 with the failure set. */
static int pump(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u->pumping || u->replay == NULL)
        return 0;
    uint8_t *chunk = malloc(GW_SPOOL_CHUNK);
    if (chunk == NULL) {
        set_fail(u, 500, "INTERNAL_ERROR", "Internal Error");
        return -1;
    }
    u->pumping = true;
    size_t turn = 0;
    int rc = 1;
    while (rc > 0 && u->replay != NULL && !r->finished && !u->failing)
        rc = replay_step(r, chunk, &turn);
    u->pumping = false;
    free(chunk);
    if (r->finished || u->failing)
        drop_early(u); /* nobody wants the rest: descriptors go now */
    return rc < 0 ? -1 : 0;
}

static void fail_now(struct cv_gw_req *r);

static void on_replayq(uv_idle_t *h)
{
    struct cv_gateway *gw = h->data;
    struct gw_upload *u;
    /* One pass over the uploads queued so far: a pump that uses its turn
     * up queues its upload again, at the tail, for the next turn. */
    size_t n = 0;
    for (u = gw->replayq; u; u = u->qnext)
        n++;
    while (n-- > 0 && (u = gw->replayq) != NULL) {
        unqueue(u);
        if (pump(u->r) < 0)
            fail_now(u->r);
    }
    if (gw->replayq == NULL)
        uv_idle_stop(&gw->replay_idle);
}

void gw_upload_consumed(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u->replay != NULL && !u->pumping && r->inflight <= GW_INFLIGHT_MAX / 2)
        enqueue(u);
}

/* The manifest is complete: decode it and start the call. Returns 0, or
 * -1 with the failure set. */
static int manifest_ready(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    char *p = (char *)cv_buf_head(&u->manifest);
    size_t n = u->manifest.len;
    const char *why;
    struct cv_rj_top top;

    u->manifest_seen = true;
    if (n == 0 || cv_rj_compact(p, n, p, &n, &why) != 0) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid manifest");
        return -1;
    }
    if (cv_rj_top_scan(p, n, &top) != 0 || !top.is_object) {
        set_fail(u, 400, "MISSING_MANIFEST", "Missing manifest");
        return -1;
    }
    json_t *tree = json_loadb(p, n, 0, NULL);
    int rc = tree ? collect(u, json_object_get(tree, "input"), 0) : CV_EPROTO;
    json_decref(tree);
    if (rc == CV_ETOOBIG || (rc == 0 && u->nsent > u->lim.max_files)) {
        set_fail(u, 413, "PAYLOAD_TOO_LARGE", cv_mp_limit_message(CV_MP_LIMIT_FILES));
        return -1;
    }
    if (rc < 0) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid manifest");
        return -1;
    }
    if (top.input.present) {
        r->call.input = p + top.input.off;
        r->call.input_len = top.input.len;
    } else {
        r->call.input = CV_RJ_UNDEFINED;
        r->call.input_len = sizeof(CV_RJ_UNDEFINED) - 1;
    }
    u->started = true;
    /* The file parts that came first claim their sentinels now (a later
     * part with the same id is drained, and the end of the body does not
     * count them missing while their replay is still going on); the rest
     * are dropped at once. */
    for (struct early *e = u->early; e; e = e->next) {
        struct sentinel *s = find_sentinel(u, e->id);
        if (s == NULL || s->received) {
            cv_spool_fini(&e->data);
            continue;
        }
        s->received = true;
        e->s = s;
    }
    gw_start(r);
    u->replay = u->early;
    return pump(r);
}

static int on_part(void *ud, const struct cv_mp_part *part)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;

    u->cur = CUR_NONE;
    if (!part->is_file && strcmp(part->name, "__manifest") == 0) {
        if (!u->manifest_seen)
            u->cur = CUR_MANIFEST;
        return 0;
    }
    if (!part->is_file || strncmp(part->name, "file:", 5) != 0)
        return 0; /* other fields and files: drained, counted by the limits */
    const char *id = part->name + 5;
    if (u->started) {
        struct sentinel *s = find_sentinel(u, id);
        if (s == NULL || s->received)
            return 0;
        open_file(r, s, part->filename, part->mime_type);
        u->live = s;
        u->cur = CUR_LIVE;
        return 0;
    }
    struct early **tail = &u->early; /* kept in arrival order, replayed in it */
    for (; *tail != NULL; tail = &(*tail)->next)
        if (strcmp((*tail)->id, id) == 0)
            return 0;
    struct early *e = calloc(1, sizeof *e);
    if (e == NULL)
        return -1;
    e->id = strdup(id);
    e->filename = strdup(part->filename ? part->filename : "upload");
    e->mime = strdup(part->mime_type);
    cv_spool_init(&e->data, r->gw->spool_dir, &u->budget);
    *tail = e;
    if (e->id == NULL || e->filename == NULL || e->mime == NULL)
        return -1;
    u->cur_early = e;
    u->cur = CUR_EARLY;
    return 0;
}

static int on_data(void *ud, const uint8_t *p, size_t n)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;
    switch (u->cur) {
    case CUR_MANIFEST: return cv_buf_append(&u->manifest, p, n) < 0 ? -1 : 0;
    case CUR_EARLY: {
        int rc = cv_spool_append(&u->cur_early->data, p, n);
        if (rc < 0) {
            spool_failed(r, "writing", rc);
            return -1;
        }
        return 0;
    }
    case CUR_LIVE:
        if (!r->finished)
            gw_stream_in(r, u->live->id, p, n);
        return 0;
    default: return 0;
    }
}

static int on_part_end(void *ud)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;
    enum cur cur = u->cur;
    u->cur = CUR_NONE;
    if (cur == CUR_MANIFEST)
        return manifest_ready(r) < 0 ? -1 : 0;
    if (cur == CUR_LIVE) {
        u->live->ended = true;
        if (!r->finished)
            r->be->ops->stream_end(r->be, r, u->live->id, NULL);
    }
    return 0;
}

static const struct cv_mp_cbs g_cbs = {on_part, on_data, on_part_end};

/* Ends the upload with a failure: every open file stream is cut, the
 * backend cancelled, any held answer dropped, the error sent. */
static void fail_now(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    u->done = true;
    u->failing = true;
    r->holding = false;
    drop_early(u);
    cv_log_info("gateway: %s: multipart refused: %s (rid %s)", r->id, u->fail_msg, r->rid);
    if (r->started && !r->finished) {
        static const char err[] = "{\"message\":\"Internal Error\",\"code\":\"STREAM_ERROR\"}";
        for (size_t i = 0; i < u->nsent && !r->finished; i++) {
            struct sentinel *s = &u->sent[i];
            if (s->opened && !s->ended) {
                s->ended = true;
                r->be->ops->stream_end(r->be, r, s->id, err);
            }
        }
    }
    /* A backend that answered meanwhile was held: gw_fail_call cancels
     * what is left and sends the failure instead. */
    gw_fail_call(r, u->fail_status, u->fail_code, u->fail_msg);
}

void gw_upload_begin(struct cv_gw_req *r, const char *ctype, size_t len)
{
    char boundary[CV_MP_MAX_BOUNDARY + 1];
    struct gw_upload *u = calloc(1, sizeof *u);
    if (u == NULL) {
        gw_fail_call(r, 500, "INTERNAL_ERROR", "Internal Error");
        return;
    }
    r->up = u;
    u->r = r;
    u->budget.max = GW_SPOOL_MEM_MAX;
    u->lim = r->gw->mp;
    cv_buf_init(&u->manifest, u->lim.max_field + 1);
    if (cv_mp_boundary(ctype, len, boundary) != 0 ||
        (u->mp = cv_mp_new(boundary, &u->lim, &g_cbs, r)) == NULL) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
        fail_now(r);
    }
}

void gw_upload_data(struct cv_gw_req *r, const uint8_t *p, size_t n)
{
    struct gw_upload *u = r->up;
    if (u == NULL || u->done)
        return;
    int rc = cv_mp_feed(u->mp, p, n);
    if (rc == 0)
        return;
    if (rc == CV_ETOOBIG)
        set_fail(u, 413, "PAYLOAD_TOO_LARGE", cv_mp_limit_message(cv_mp_limit_hit(u->mp)));
    else
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
    fail_now(r);
}

void gw_upload_end(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u == NULL || u->done)
        return;
    if (cv_mp_finish(u->mp) != 0)
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
    else if (!u->manifest_seen)
        set_fail(u, 400, "MISSING_MANIFEST", "Missing manifest");
    for (size_t i = 0; i < u->nsent && !u->fail_status; i++) {
        if (!u->sent[i].received) {
            /* §14.6: the client's fault, so a 400 with the same code. */
            char msg[160];
            snprintf(msg, sizeof msg, "Missing file part for id %s", u->sent[i].id);
            set_fail(u, 400, "MISSING_FILE_PART", msg);
        }
    }
    if (u->fail_status) {
        fail_now(r);
        return;
    }
    u->done = true;
    if (r->holding) {
        r->holding = false;
        gw_answer(r, r->held_status, cv_buf_head(&r->held), r->held.len);
    }
}

bool gw_upload_hold(struct cv_gw_req *r, int status, const void *body, size_t len)
{
    struct gw_upload *u = r->up;
    if (u != NULL && u->failing)
        return true; /* replaced by the failure being sent */
    if (u == NULL || u->done)
        return false;
    cv_buf_reset(&r->held);
    if (cv_buf_append(&r->held, body, len) < 0)
        return false;
    r->held_status = status;
    r->holding = true;
    return true;
}

void gw_upload_abort(struct cv_gw_req *r)
{
    if (r->up != NULL) {
        r->up->done = true;
        r->holding = false;
        drop_early(r->up);
    }
}

void gw_upload_free(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u == NULL)
        return;
    unqueue(u);
    cv_mp_free(u->mp);
    cv_buf_fini(&u->manifest);
    for (size_t i = 0; i < u->nsent; i++) {
        free(u->sent[i].id);
        json_decref(u->sent[i].meta);
    }
    free(u->sent);
    struct early *e = u->early;
    while (e) {
        struct early *next = e->next;
        free(e->id);
        free(e->filename);
        free(e->mime);
        cv_spool_fini(&e->data);
        free(e);
        e = next;
    }
    free(u);
    r->up = NULL;
}
