#include "codec/rjson_regexp.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* The pattern in UTF-8 bytes: at most 3 bytes per UTF-16 code unit. */
#define MAX_REGEXP_BYTES (CV_RJ_MAX_REGEXP * 3)

/* RegExp safety: Runner's isRegExpPatternSafe heuristic, ported to UTF-8
 * bytes (its syntax characters are all ASCII, and a byte prefix of whole
 * UTF-8 strings is a code-unit prefix). A quantified group whose body holds
 * a quantifier, or whose top-level alternatives overlap ("(a|a)*", an empty
 * branch), is refused. */

static bool bounded_quantifier(const char *p, size_t n, size_t i)
{
    bool digit = false, comma = false;
    for (i++; i < n; i++) {
        if (p[i] >= '0' && p[i] <= '9')
            digit = true;
        else if (p[i] == ',' && !comma)
            comma = true;
        else
            return p[i] == '}' && digit;
    }
    return false;
}

static bool quantifier_at(const char *p, size_t n, size_t i)
{
    if (i >= n)
        return false;
    if (p[i] == '*' || p[i] == '+' || p[i] == '?')
        return true;
    return p[i] == '{' && bounded_quantifier(p, n, i);
}

static bool quantifier_char(const char *p, size_t n, size_t i)
{
    if (p[i] == '*' || p[i] == '+')
        return true;
    if (p[i] == '?')
        return !(i > 0 && p[i - 1] == '(');
    return p[i] == '{' && bounded_quantifier(p, n, i);
}

static bool starts(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n >= l && memcmp(p, lit, l) == 0;
}

/* Does the group body p[0..n) have overlapping top-level alternatives? */
static bool overlapping_alternatives(const char *p, size_t n)
{
    /* Strip a group prefix: ?: ?= ?! ?> ?<= ?<! or a ?<name>. */
    if (starts(p, n, "?:") || starts(p, n, "?=") || starts(p, n, "?!") || starts(p, n, "?>")) {
        p += 2, n -= 2;
    } else if (starts(p, n, "?<=") || starts(p, n, "?<!")) {
        p += 3, n -= 3;
    } else if (starts(p, n, "?<") && n > 2 && p[2] != '>') {
        const char *gt = memchr(p + 2, '>', n - 2);
        if (gt != NULL) {
            n -= (size_t)(gt + 1 - p);
            p = gt + 1;
        }
    }
    /* Split on top-level '|' (outside escapes, classes and inner groups). */
    uint16_t starts_[MAX_REGEXP_BYTES + 2];
    size_t nb = 0;
    bool esc = false, cls = false;
    size_t depth = 0;
    starts_[nb++] = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (esc) {
            esc = false;
        } else if (c == '\\') {
            esc = true;
        } else if (cls) {
            cls = c != ']';
        } else if (c == '[') {
            cls = true;
        } else if (c == '(') {
            depth++;
        } else if (c == ')') {
            depth = depth ? depth - 1 : 0;
        } else if (c == '|' && depth == 0) {
            starts_[nb++] = (uint16_t)(i + 1);
        }
    }
    if (nb < 2)
        return false;
    starts_[nb] = (uint16_t)(n + 1); /* branch k is p[starts_[k] .. starts_[k+1]-1) */
    for (size_t i = 0; i < nb; i++) {
        for (size_t j = i + 1; j < nb; j++) {
            const char *a = p + starts_[i], *b = p + starts_[j];
            size_t al = starts_[i + 1] - 1 - starts_[i], bl = starts_[j + 1] - 1 - starts_[j];
            size_t m = al < bl ? al : bl;
            if (m == 0 || memcmp(a, b, m) == 0)
                return true;
        }
    }
    return false;
}

static bool regexp_safe(const char *p, size_t n)
{
    struct {
        bool quantified;
        uint16_t start;
    } stack[MAX_REGEXP_BYTES + 1];
    size_t top = 0;
    bool esc = false, cls = false;

    if (n > MAX_REGEXP_BYTES)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (esc) {
            esc = false;
            continue;
        }
        if (c == '\\') {
            esc = true;
            continue;
        }
        if (cls) {
            cls = c != ']';
            continue;
        }
        if (c == '[') {
            cls = true;
            continue;
        }
        if (c == '(') {
            stack[top].quantified = false;
            stack[top].start = (uint16_t)i;
            top++;
            continue;
        }
        if (c == ')') {
            if (top == 0)
                continue;
            top--;
            if (quantifier_at(p, n, i + 1)) {
                if (stack[top].quantified)
                    return false;
                if (overlapping_alternatives(p + stack[top].start + 1, i - stack[top].start - 1))
                    return false;
            }
            if (stack[top].quantified && top > 0)
                stack[top - 1].quantified = true;
            continue;
        }
        if (quantifier_char(p, n, i) && top > 0)
            stack[top - 1].quantified = true;
    }
    return true;
}

/* A {n}, {n,} or {n,m} quantifier at p[i] == '{': sets *end past the '}'.
 * Returns 1, 0 if it is not one (Annex B: then '{' is a literal), or -1 if
 * its numbers are out of order. */
static int brace_quantifier(const char *p, size_t n, size_t i, size_t *end)
{
    size_t j = i + 1, d0 = j;
    unsigned long long lo = 0, hi;
    while (j < n && p[j] >= '0' && p[j] <= '9')
        lo = lo < 1000000000ULL ? lo * 10 + (unsigned)(p[j++] - '0') : (j++, lo);
    if (j == d0)
        return 0;
    hi = lo;
    if (j < n && p[j] == ',') {
        size_t d1 = ++j;
        hi = 0;
        while (j < n && p[j] >= '0' && p[j] <= '9')
            hi = hi < 1000000000ULL ? hi * 10 + (unsigned)(p[j++] - '0') : (j++, hi);
        if (j == d1)
            hi = ~0ULL;
    }
    if (j >= n || p[j] != '}')
        return 0;
    *end = j + 1;
    return hi < lo ? -1 : 1;
}

/* The length of a group's "?..." prefix at p[i] (just after '('): 0 for a
 * capturing group, 2 for ?: ?= ?!, 3 for ?<= ?<!, the whole ?<name> for a
 * named group; SIZE_MAX for anything else after "(?". */
static size_t group_prefix(const char *p, size_t n, size_t i)
{
    if (i >= n || p[i] != '?')
        return 0;
    if (i + 1 < n && (p[i + 1] == ':' || p[i + 1] == '=' || p[i + 1] == '!'))
        return 2;
    if (i + 1 >= n || p[i + 1] != '<')
        return SIZE_MAX;
    if (i + 2 < n && (p[i + 2] == '=' || p[i + 2] == '!'))
        return 3;
    size_t j = i + 2;
    while (j < n &&
           ((unsigned char)p[j] >= 0x80 || p[j] == '_' || p[j] == '$' ||
            (p[j] >= '0' && p[j] <= '9') || ((p[j] | 0x20) >= 'a' && (p[j] | 0x20) <= 'z')))
        j++;
    if (j == i + 2 || j >= n || p[j] != '>' || (p[i + 2] >= '0' && p[i + 2] <= '9'))
        return SIZE_MAX;
    return j + 1 - i;
}

/* The syntax errors new RegExp(pattern) throws on without the u/v flags
 * (Annex B grammar), so that a pattern Runner would refuse is refused
 * here too: a trailing backslash, an unterminated class or group, an
 * unmatched ')', a bad "(?" group, a quantifier with nothing to repeat,
 * {n,m} out of order. Escapes and class contents are not checked further. */
static bool regexp_syntax_ok(const char *p, size_t n)
{
    size_t depth = 0, i = 0;
    bool atom = false; /* the previous token can take a quantifier */

    while (i < n) {
        char c = p[i];
        size_t end;
        switch (c) {
        case '\\':
            if (i + 1 >= n)
                return false;
            atom = p[i + 1] != 'b' && p[i + 1] != 'B'; /* \b and \B are assertions */
            i += 2;
            break;
        case '[':
            i++;
            if (i < n && p[i] == '^')
                i++;
            while (i < n && p[i] != ']')
                i += p[i] == '\\' ? 2 : 1;
            if (i >= n)
                return false;
            i++;
            atom = true;
            break;
        case '(': {
            size_t k = group_prefix(p, n, i + 1);
            if (k == SIZE_MAX)
                return false;
            i += 1 + k;
            depth++;
            atom = false;
            break;
        }
        case ')':
            if (depth == 0)
                return false;
            depth--;
            i++;
            atom = true;
            break;
        case '|':
        case '^':
        case '$':
            i++;
            atom = false;
            break;
        case '*':
        case '+':
        case '?': end = i + 1; goto quantifier;
        case '{': {
            int q = brace_quantifier(p, n, i, &end);
            if (q < 0)
                return false;
            if (q > 0)
                goto quantifier;
            i++; /* a literal '{' */
            atom = true;
            break;
        }
        default:
            i++;
            atom = true;
            break;
        }
        continue;
    quantifier:
        if (!atom)
            return false; /* nothing to repeat */
        i = end;
        if (i < n && p[i] == '?')
            i++; /* lazy */
        atom = false;
    }
    return depth == 0;
}

/* Length in UTF-16 code units of valid UTF-8 (JS String#length). */
static size_t utf16_len(const char *s, size_t n)
{
    size_t units = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xc0) != 0x80)
            units += c >= 0xf0 ? 2 : 1;
    }
    return units;
}

const char *cv_rj_regexp_check(const char *p, size_t n)
{
    if (utf16_len(p, n) > CV_RJ_MAX_REGEXP)
        return "RegExp pattern exceeds limit (1024)";
    if (!regexp_safe(p, n))
        return "unsafe RegExp pattern";
    if (!regexp_syntax_ok(p, n))
        return "invalid RegExp pattern";
    return NULL;
}
