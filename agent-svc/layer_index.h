/*
 * layer_index.h - name -> position lookup over a profile table, used to
 * check decisions and to map history entries back to layers in O(1).
 *
 * Ownership: the index borrows the table's name strings; the table must
 * outlive it. Free with ap_layer_index_free.
 */
#ifndef AP_LAYER_INDEX_H
#define AP_LAYER_INDEX_H

#include <stddef.h>

#include "agentprune/v1/common.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_layer_index ap_layer_index;

/*
 * Indexes the layers of `t` by name. Returns 0; -1 on allocation failure;
 * -2 when a name is NULL or empty, -3 when a name repeats (in both cases
 * *bad_pos, when not NULL, is the offending row).
 */
int ap_layer_index_build(const Agentprune__V1__ProfileTable *t, ap_layer_index **out, size_t *bad_pos);

/* Row of `name` in the table, or -1 when absent. */
long ap_layer_index_find(const ap_layer_index *ix, const char *name);

void ap_layer_index_free(ap_layer_index *ix);

#ifdef __cplusplus
}
#endif
#endif
