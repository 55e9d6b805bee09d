#include "core/log.h"

#include <stdarg.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "core/err.h"

static enum cv_log_level level = CV_LOG_INFO;
static FILE *stream;

void cv_log_set_level(enum cv_log_level lvl) { level = lvl; }
enum cv_log_level cv_log_get_level(void) { return level; }
void cv_log_set_stream(FILE *f) { stream = f; }

int cv_log_parse_level(const char *s, enum cv_log_level *out)
{
    static const struct { const char *name; enum cv_log_level lvl; } names[] = {
        {"error", CV_LOG_ERROR}, {"warn", CV_LOG_WARN}, {"warning", CV_LOG_WARN},
        {"info", CV_LOG_INFO},   {"debug", CV_LOG_DEBUG}, {"trace", CV_LOG_TRACE},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].lvl;
            return 0;
        }
    }
    return CV_EINVAL;
}

void cv_log(enum cv_log_level lvl, const char *fmt, ...)
{
    static const char *tags[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};
    if (lvl > level)
        return;
    FILE *f = stream ? stream : stderr;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(f, "%s.%03dZ %-5s ", ts, (int)(tv.tv_usec / 1000), tags[lvl]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}
