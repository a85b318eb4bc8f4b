/*
 * layer_index.c - open-addressing hash (FNV-1a, linear probing) of layer
 * names, at most half full.
 */
#include "layer_index.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ap_layer_index {
  const Agentprune__V1__ProfileTable *table;
  size_t mask;  /* slots - 1 (a power of two) */
  long *slots;  /* row + 1; 0 = empty */
};

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

int ap_layer_index_build(const Agentprune__V1__ProfileTable *t, ap_layer_index **out, size_t *bad_pos) {
  *out = NULL;
  size_t n = t ? t->n_layers : 0;
  size_t slots = 16;
  while (slots < 2 * n) slots *= 2;
  ap_layer_index *ix = calloc(1, sizeof *ix);
  if (!ix) return -1;
  ix->slots = calloc(slots, sizeof *ix->slots);
  if (!ix->slots) {
    free(ix);
    return -1;
  }
  ix->table = t;
  ix->mask = slots - 1;
  for (size_t i = 0; i < n; i++) {
    const char *name = t->layers[i] ? t->layers[i]->name : NULL;
    if (!name || !name[0]) {
      if (bad_pos) *bad_pos = i;
      ap_layer_index_free(ix);
      return -2;
    }
    size_t h = (size_t)fnv1a(name) & ix->mask;
    while (ix->slots[h]) {
      if (strcmp(t->layers[ix->slots[h] - 1]->name, name) == 0) {
        if (bad_pos) *bad_pos = i;
        ap_layer_index_free(ix);
        return -3;
      }
      h = (h + 1) & ix->mask;
    }
    ix->slots[h] = (long)i + 1;
  }
  *out = ix;
  return 0;
}

long ap_layer_index_find(const ap_layer_index *ix, const char *name) {
  if (!ix || !name) return -1;
  size_t h = (size_t)fnv1a(name) & ix->mask;
  while (ix->slots[h]) {
    long row = ix->slots[h] - 1;
    if (strcmp(ix->table->layers[row]->name, name) == 0) return row;
    h = (h + 1) & ix->mask;
  }
  return -1;
}

void ap_layer_index_free(ap_layer_index *ix) {
  if (!ix) return;
  free(ix->slots);
  free(ix);
}
