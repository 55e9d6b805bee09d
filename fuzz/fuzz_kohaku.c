/* Fuzzes the KohakuRiver message decoder: decode, re-encode, rewrite id. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/kohaku.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cv_kh_msg m;
    int rc = cv_kh_decode(data, size, &m);

    if (size < CV_KH_HDR_LEN) {
        if (rc != CV_EAGAIN)
            abort();
        return 0;
    }
    if (rc != 0 && rc != CV_EPROTO)
        abort();
    if (m.payload != data + CV_KH_HDR_LEN || m.len != size - CV_KH_HDR_LEN)
        abort();
    if ((rc == 0) != (m.type >= 1 && m.type <= 7 && m.proto <= 1))
        abort();
    (void)cv_kh_type_name(m.type);

    /* Encoding the decoded fields gives back the same header. */
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, m.type, m.proto, m.id, m.port);
    if (memcmp(hdr, data, CV_KH_HDR_LEN) != 0)
        abort();
    cv_kh_set_id(hdr, ~m.id);
    struct cv_kh_msg m2;
    cv_kh_decode(hdr, sizeof(hdr), &m2);
    if (m2.id != ~m.id || m2.type != m.type || m2.port != m.port)
        abort();
    return 0;
}
