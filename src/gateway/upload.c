/* Multipart mode (§8.3). Until the multipart codec (codec/multipart.c)
 * lands, multipart calls are refused with 415 UNSUPPORTED_MODE. */
#include "gateway/gw.h"

void gw_upload_begin(struct cv_gw_req *r, const char *ctype, size_t len)
{
    (void)ctype, (void)len;
    gw_fail_call(r, 415, "UNSUPPORTED_MODE", "Streaming mode not supported by this backend");
}

void gw_upload_data(struct cv_gw_req *r, const uint8_t *p, size_t n)
{
    (void)r, (void)p, (void)n;
}

void gw_upload_end(struct cv_gw_req *r)
{
    (void)r;
}

bool gw_upload_hold(struct cv_gw_req *r, int status, const void *body, size_t len)
{
    (void)r, (void)status, (void)body, (void)len;
    return false;
}

void gw_upload_abort(struct cv_gw_req *r)
{
    (void)r;
}

void gw_upload_free(struct cv_gw_req *r)
{
    (void)r;
}
