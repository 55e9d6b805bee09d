#include "core/err.h"

#include <string.h>

const char *cv_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case CV_EAGAIN: return "incomplete input";
    case CV_EPROTO: return "protocol error";
    case CV_ETOOBIG: return "limit exceeded";
    case CV_ENOMEM: return "out of memory";
    case CV_EINVAL: return "invalid argument";
    case CV_ECLOSED: return "closed";
    case CV_ETIMEDOUT: return "timed out";
    default: break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
