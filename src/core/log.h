/* Leveled logging to one stream (stderr unless changed). */
#ifndef CV_LOG_H
#define CV_LOG_H

#include <stdbool.h>
#include <stdio.h>

enum cv_log_level { CV_LOG_ERROR, CV_LOG_WARN, CV_LOG_INFO, CV_LOG_DEBUG, CV_LOG_TRACE };

/* Sets the most verbose level printed (default CV_LOG_INFO). */
void cv_log_set_level(enum cv_log_level lvl);
enum cv_log_level cv_log_get_level(void);
/* Sets the output stream (borrowed; default stderr). */
void cv_log_set_stream(FILE *f);
/* Parses trace/debug/info/warn/warning/error (any case). Returns 0 or CV_EINVAL. */
int cv_log_parse_level(const char *s, enum cv_log_level *out);
static inline bool cv_log_enabled(enum cv_log_level lvl) { return lvl <= cv_log_get_level(); }
/* Prints one line: timestamp, level, message. */
void cv_log(enum cv_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cv_log_error(...) cv_log(CV_LOG_ERROR, __VA_ARGS__)
#define cv_log_warn(...) cv_log(CV_LOG_WARN, __VA_ARGS__)
#define cv_log_info(...) cv_log(CV_LOG_INFO, __VA_ARGS__)
#define cv_log_debug(...) \
    do { if (cv_log_enabled(CV_LOG_DEBUG)) cv_log(CV_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
