/* RegExp pattern checks for serializer RegExp records (rjson.h): the
 * checks Runner makes before new RegExp, and the syntax errors new RegExp
 * would throw. Internal to the rjson codec. Pure. */
#ifndef CV_RJSON_REGEXP_H
#define CV_RJSON_REGEXP_H

#include <stddef.h>

/* Runner's maxRegExpPatternLength default, in UTF-16 code units. */
#define CV_RJ_MAX_REGEXP 1024

/* Checks the UTF-8 pattern p[0..n): length <= CV_RJ_MAX_REGEXP UTF-16
 * code units, Runner's isRegExpPatternSafe heuristic (no quantified group
 * whose body holds a quantifier or whose top-level alternatives overlap),
 * and the syntax new RegExp accepts without the u/v flags (Annex B).
 * Returns NULL if acceptable, else a static reason. */
const char *cv_rj_regexp_check(const char *p, size_t n);

#endif
