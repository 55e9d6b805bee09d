/* A hash map from uint32 ids to pointers (open addressing, linear probing,
 * backward-shift deletion). Used for tunnel and session connection tables. */
#ifndef CV_IDMAP_H
#define CV_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct cv_idmap_slot {
    uint32_t key;
    void *val; /* borrowed; NULL marks an empty slot */
};

struct cv_idmap {
    struct cv_idmap_slot *slots; /* owned */
    size_t cap;                  /* power of two, or 0 */
    size_t count;
};

void cv_idmap_init(struct cv_idmap *m);
void cv_idmap_fini(struct cv_idmap *m);
/* Returns the value for key, or NULL. */
void *cv_idmap_get(const struct cv_idmap *m, uint32_t key);
/* Sets key to val (val != NULL), replacing any value. Returns 0 or CV_ENOMEM. */
int cv_idmap_put(struct cv_idmap *m, uint32_t key, void *val);
/* Removes key; returns its value or NULL. */
void *cv_idmap_del(struct cv_idmap *m, uint32_t key);
/* Iteration: for (size_t i = 0; i < m->cap; i++) if (m->slots[i].val) ...
 * Do not modify the map while iterating; collect first. */

#endif
