/* Fuzzes the SNI parser: every prefix of the input answers CV_EAGAIN until
 * the first prefix that gives a result, and that result and name are then
 * final (more bytes never change them); a name is always a valid host name
 * of the announced length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/sni.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char full[CV_SNI_NAME_MAX + 1], name[CV_SNI_NAME_MAX + 1];
    size_t flen, len;
    if (size > 20000)
        size = 20000;
    int rf = cv_sni_parse(data, size, full, &flen);
    if (rf != 0 && rf != CV_EAGAIN && rf != CV_EPROTO && rf != CV_ETOOBIG)
        abort();
    if (flen != strlen(full) || flen > CV_SNI_NAME_MAX || (rf != 0 && flen != 0))
        abort();
    for (size_t i = 0; i < flen; i++) {
        char c = full[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            abort();
    }
    /* Prefixes, at a stride that keeps large inputs fast. */
    size_t step = size / 512 + 1;
    int settled = 0;
    for (size_t k = 0;; k += step) {
        if (k > size)
            k = size;
        int r = cv_sni_parse(data, k, name, &len);
        if (!settled && r != CV_EAGAIN)
            settled = 1;
        if (settled && (r != rf || len != flen || memcmp(name, full, len) != 0))
            abort();
        if (k == size)
            break;
    }
    return 0;
}
