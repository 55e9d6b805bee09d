/* Relay credentials (docs/PROTOCOL.md §1): a presented token is either the
 * relay's shared secret itself or an HS256 JWT signed with it, carrying `exp`
 * (required) and `agents` (optional list of container ids, "*" = any).
 * Pure: no I/O, no logging; uses libcrypto for HMAC and jansson for JSON. */
#ifndef CV_AUTH_H
#define CV_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest token accepted, bytes; longer ones are CV_AUTH_BAD. The shared
 * secret is compared as a token, so a usable secret is no longer either. */
#define CV_AUTH_MAX_TOKEN 4096

enum cv_auth_result {
    CV_AUTH_OK = 0,
    CV_AUTH_MISSING,     /* no token presented */
    CV_AUTH_BAD,         /* not the secret, not a valid JWT, or a malformed claim */
    CV_AUTH_EXPIRED,     /* a valid JWT whose exp has passed */
    CV_AUTH_AGENT_DENIED /* a valid JWT that does not list this agent */
};

/* What a token proved, for the relay's log line. */
struct cv_auth_claims {
    bool is_jwt;    /* false: the token was the shared secret */
    int64_t exp;    /* JWT exp, rounded up to whole seconds; INT64_MAX for the secret */
    bool any_agent; /* the token may register any agent (the secret, or "*") */
};

/* Decides whether token[0..token_len) is acceptable to a relay whose shared
 * secret is `secret` (NUL-terminated; NULL or "" never accepts anything).
 *
 * Accepted are (a) the secret itself, compared in constant time over SHA-256
 * digests, so the timing does not depend on where or whether the lengths
 * differ; it allows any agent. (b) An HS256 JWT `header.payload.signature`
 * (base64url without padding) whose signature is HMAC-SHA256(secret,
 * "header.payload"), compared in constant time; its header is a JSON object
 * with "alg": "HS256" ("none" and every other alg is refused; "typ" is
 * ignored; a "crit" member is refused since no extension is understood); its
 * payload is a JSON object with a numeric `exp` (expired when now >= exp) and
 * an optional `agents` array of strings. Other claims are ignored. Duplicate
 * JSON keys, non-canonical base64url and tokens over CV_AUTH_MAX_TOKEN are
 * refused. The signature is checked before any JSON is parsed.
 *
 * agent_id: the container id being registered, or NULL for a /ws/forward
 * session, for which the agents claim is not consulted (but still validated).
 * An agent id is allowed when an entry equals it exactly or is "*"; without an
 * agents claim no agent is allowed.
 * now: seconds since the epoch.
 *
 * Returns CV_AUTH_MISSING (token NULL or token_len 0), CV_AUTH_BAD,
 * CV_AUTH_EXPIRED, CV_AUTH_AGENT_DENIED or CV_AUTH_OK. Expiry is judged before
 * the agent. */
enum cv_auth_result cv_auth_check(const char *secret, const char *token, size_t token_len,
                                  const char *agent_id, int64_t now);

/* cv_auth_check that also fills *claims (which may be NULL) whenever the
 * token was authentic: results OK, EXPIRED and AGENT_DENIED. Otherwise
 * *claims is zeroed. */
enum cv_auth_result cv_auth_check_claims(const char *secret, const char *token, size_t token_len,
                                         const char *agent_id, int64_t now,
                                         struct cv_auth_claims *claims);

/* Returns the one-line refusal reason for r: "ok", "missing token",
 * "bad token", "token expired", "token does not allow this agent"; "unknown"
 * for a value outside the enum. Static storage. */
const char *cv_auth_reason(enum cv_auth_result r);

/* Makes an HS256 JWT signed with secret, with header
 * {"alg":"HS256","typ":"JWT"} and payload {"exp":exp} or, when agents is not
 * NULL, {"exp":exp,"agents":[agents[0], ..., agents[nagents-1]]} (an empty
 * array when nagents is 0). Writes the NUL-terminated token into out[0..cap).
 * Returns its length (without the NUL), CV_EINVAL (secret NULL or empty, out
 * NULL, an agent NULL or not UTF-8), CV_ETOOBIG (does not fit in cap, or
 * longer than CV_AUTH_MAX_TOKEN) or CV_ENOMEM (jansson or libcrypto could not
 * allocate). Deterministic. */
int cv_auth_make_jwt(const char *secret, int64_t exp, const char *const *agents, size_t nagents,
                     char *out, size_t cap);

#endif
