/* Error codes shared by every layer. Functions return 0 on success and a
 * negative value on failure: either -errno (as libuv does) or one of the
 * CV_E* codes below, which never collide with errno values. */
#ifndef CV_ERR_H
#define CV_ERR_H

enum {
    CV_EAGAIN = -20001,   /* not enough input yet; call again with more */
    CV_EPROTO = -20002,   /* peer violated the protocol */
    CV_ETOOBIG = -20003,  /* a capped quantity would exceed its limit */
    CV_ENOMEM = -20004,   /* allocation failed */
    CV_EINVAL = -20005,   /* bad argument or configuration */
    CV_ECLOSED = -20006,  /* object is closing or closed */
    CV_ETIMEDOUT = -20007 /* a deadline passed */
};

/* Returns a static, human-readable name for any code returned by culvert
 * functions, including -errno values. Never returns NULL. */
const char *cv_strerror(int err);

#endif
