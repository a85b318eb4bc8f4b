#include "layers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ap_llm_name_ref {
  const char *key;
  size_t row;
};

static const char *const kind_names[] = {NULL, "q", "k", "v", "o", "gate", "up", "down"};

const char *ap_llm_kind_name(Agentprune__V1__LayerKind kind) {
  if ((int)kind < 1 || (int)kind > 7) return NULL;
  return kind_names[kind];
}

static int ref_cmp(const void *a, const void *b) {
  const struct ap_llm_name_ref *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  if (c) return c;
  return (x->row > y->row) - (x->row < y->row);
}

static const char *row_name(const Agentprune__V1__LayerProfile *l) {
  return (l && l->name && l->name[0]) ? l->name : NULL;
}

int ap_llm_layer_index_build(const Agentprune__V1__ProfileTable *table, ap_llm_layer_index *ix) {
  memset(ix, 0, sizeof *ix);
  ix->table = table;
  size_t n = table ? table->n_layers : 0;
  if (n == 0) return 0;
  ix->ids = calloc(n, sizeof *ix->ids);
  ix->sorted = calloc(2 * n, sizeof *ix->sorted);
  if (!ix->ids || !ix->sorted) goto fail;
  ix->n = n;

  int short_ok = 1;
  for (size_t i = 0; i < n; i++) {
    const Agentprune__V1__LayerProfile *l = table->layers[i];
    if (!l || !ap_llm_kind_name(l->kind)) short_ok = 0;
  }
  char buf[64];
  for (size_t i = 0; i < n; i++) {
    const Agentprune__V1__LayerProfile *l = table->layers[i];
    const char *name = row_name(l);
    if (short_ok) snprintf(buf, sizeof buf, "%u.%s", l->block, ap_llm_kind_name(l->kind));
    else if (!name) snprintf(buf, sizeof buf, "#%zu", i);
    ix->ids[i] = strdup(short_ok || !name ? buf : name);
    if (!ix->ids[i]) goto fail;
  }
  /* Short ids must be unique and must not be some other row's full name,
   * or a lookup could land on the wrong layer. */
  if (short_ok) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      ix->sorted[m++] = (struct ap_llm_name_ref){ix->ids[i], i};
      if (row_name(table->layers[i])) ix->sorted[m++] = (struct ap_llm_name_ref){table->layers[i]->name, i};
    }
    qsort(ix->sorted, m, sizeof *ix->sorted, ref_cmp);
    for (size_t i = 1; i < m && short_ok; i++)
      if (strcmp(ix->sorted[i].key, ix->sorted[i - 1].key) == 0 && ix->sorted[i].row != ix->sorted[i - 1].row)
        short_ok = 0;
    if (!short_ok) {
      for (size_t i = 0; i < n; i++) {
        const char *name = row_name(table->layers[i]);
        if (name) {
          free(ix->ids[i]);
          ix->ids[i] = strdup(name);
          if (!ix->ids[i]) goto fail;
        } else {
          free(ix->ids[i]);
          snprintf(buf, sizeof buf, "#%zu", i);
          ix->ids[i] = strdup(buf);
          if (!ix->ids[i]) goto fail;
        }
      }
    }
  }
  ix->short_ids = short_ok;
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    ix->sorted[m++] = (struct ap_llm_name_ref){ix->ids[i], i};
    const char *name = row_name(table->layers[i]);
    if (short_ok && name) ix->sorted[m++] = (struct ap_llm_name_ref){name, i};
  }
  qsort(ix->sorted, m, sizeof *ix->sorted, ref_cmp);
  ix->n_sorted = m;
  return 0;
fail:
  ap_llm_layer_index_free(ix);
  return -1;
}

long ap_llm_layer_lookup(const ap_llm_layer_index *ix, const char *key) {
  if (!key || !ix->n_sorted) return -1;
  size_t lo = 0, hi = ix->n_sorted;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(ix->sorted[mid].key, key);
    if (c == 0) return (long)ix->sorted[mid].row;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

void ap_llm_layer_index_free(ap_llm_layer_index *ix) {
  if (ix->ids)
    for (size_t i = 0; i < ix->n; i++) free(ix->ids[i]);
  free(ix->ids);
  free(ix->sorted);
  memset(ix, 0, sizeof *ix);
}
