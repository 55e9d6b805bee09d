#include "core/ratelimit.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define WAYS 4

struct slot {
    uint8_t key[16];
    bool used;
    double tokens;
    uint64_t last_ms; /* when tokens was last brought up to date */
};

struct cv_ratelimit {
    double rate, burst;
    size_t sets; /* power of two */
    struct slot *slots; /* sets * WAYS */
};

struct cv_ratelimit *cv_ratelimit_new(double rate, double burst, size_t slots)
{
    if (!(rate > 0) || !(burst >= 1) || slots == 0)
        return NULL;
    size_t sets = 1;
    while (sets * WAYS < slots)
        sets *= 2;
    struct cv_ratelimit *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return NULL;
    /* calloc: untouched pages cost no memory until keys arrive. */
    rl->slots = calloc(sets * WAYS, sizeof *rl->slots);
    if (rl->slots == NULL) {
        free(rl);
        return NULL;
    }
    rl->rate = rate;
    rl->burst = burst;
    rl->sets = sets;
    return rl;
}

void cv_ratelimit_free(struct cv_ratelimit *rl)
{
    if (rl == NULL)
        return;
    free(rl->slots);
    free(rl);
}

void cv_ratelimit_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    } else if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    }
}

static uint32_t hash(const uint8_t key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h;
}

uint64_t cv_ratelimit_take(struct cv_ratelimit *rl, const uint8_t key[16], uint64_t now_ms)
{
    struct slot *set = rl->slots + (size_t)(hash(key) & (rl->sets - 1)) * WAYS;
    struct slot *s = NULL, *victim = &set[0];
    for (int i = 0; i < WAYS && s == NULL; i++) {
        if (set[i].used && memcmp(set[i].key, key, 16) == 0)
            s = &set[i];
        else if (!set[i].used || (victim->used && set[i].last_ms < victim->last_ms))
            victim = &set[i];
    }
    if (s == NULL) {
        s = victim;
        memcpy(s->key, key, 16);
        s->used = true;
        s->tokens = rl->burst;
        s->last_ms = now_ms;
    }
    if (now_ms > s->last_ms) {
        s->tokens += (double)(now_ms - s->last_ms) * rl->rate / 1000.0;
        if (s->tokens > rl->burst)
            s->tokens = rl->burst;
        s->last_ms = now_ms;
    }
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - s->tokens) * 1000.0 / rl->rate;
    uint64_t ms = (uint64_t)wait;
    return ms + ((double)ms < wait);
}
