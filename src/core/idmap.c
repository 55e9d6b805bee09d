#include "core/idmap.h"

#include <stdlib.h>

#include "core/err.h"

static size_t slot_of(uint32_t key, size_t cap)
{
    /* Fibonacci hashing spreads sequential ids across the table. */
    return (size_t)((key * 2654435769u) >> 7) & (cap - 1);
}

void cv_idmap_init(struct cv_idmap *m)
{
    m->slots = NULL;
    m->cap = m->count = 0;
}

void cv_idmap_fini(struct cv_idmap *m)
{
    if (m == NULL)
        return;
    free(m->slots);
    cv_idmap_init(m);
}

void *cv_idmap_get(const struct cv_idmap *m, uint32_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = slot_of(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key)
            return m->slots[i].val;
    }
}

static int grow(struct cv_idmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    struct cv_idmap_slot *ns = calloc(ncap, sizeof *ns);
    if (ns == NULL)
        return CV_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].val == NULL)
            continue;
        size_t j = slot_of(m->slots[i].key, ncap);
        while (ns[j].val != NULL)
            j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

int cv_idmap_put(struct cv_idmap *m, uint32_t key, void *val)
{
    if ((m->count + 1) * 4 > m->cap * 3) {
        int rc = grow(m);
        if (rc != 0)
            return rc;
    }
    size_t i = slot_of(key, m->cap);
    while (m->slots[i].val != NULL && m->slots[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (m->slots[i].val == NULL)
        m->count++;
    m->slots[i].key = key;
    m->slots[i].val = val;
    return 0;
}

void *cv_idmap_del(struct cv_idmap *m, uint32_t key)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1, i = slot_of(key, m->cap);
    while (m->slots[i].val != NULL && m->slots[i].key != key)
        i = (i + 1) & mask;
    void *val = m->slots[i].val;
    if (val == NULL)
        return NULL;
    m->count--;
    /* Backward-shift: move later members of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; m->slots[j].val != NULL; j = (j + 1) & mask) {
        size_t home = slot_of(m->slots[j].key, m->cap);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].val = NULL;
    return val;
}
