/*
 * layers.h - the short layer ids that prompts use ("3.q", "11.down") and
 * the lookup from an id or a full layer name back to the profile row.
 *
 * A 36-block model has 252 eligible layers; full HF names cost ~10 tokens
 * each, short ids ~3. Short ids are used when every row has a known kind and
 * no two rows share (block, kind); otherwise the ids are the full names.
 */
#ifndef AP_LLM_LAYERS_H
#define AP_LLM_LAYERS_H

#include <stddef.h>

#include "agentprune/v1/common.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const Agentprune__V1__ProfileTable *table; /* borrowed; must outlive the index */
  char **ids;                                /* ids[i] names table->layers[i] */
  size_t n;
  int short_ids;                             /* 1: "block.kind" ids, 0: ids are the names */
  struct ap_llm_name_ref *sorted;            /* ids and names, sorted for lookup */
  size_t n_sorted;
} ap_llm_layer_index;

/* "q", "k", "v", "o", "gate", "up", "down", or NULL for an unknown kind. */
const char *ap_llm_kind_name(Agentprune__V1__LayerKind kind);

/*
 * Builds the index of `table` (NULL or empty gives an empty index). Rows
 * with a NULL or empty name get the id "#<row>". Returns 0, or -1 when out
 * of memory (ix is then empty and safe to free).
 */
int ap_llm_layer_index_build(const Agentprune__V1__ProfileTable *table, ap_llm_layer_index *ix);

/* The row of the layer whose id or full name is `key`, or -1. */
long ap_llm_layer_lookup(const ap_llm_layer_index *ix, const char *key);

/* Frees what the index owns (not the table). */
void ap_llm_layer_index_free(ap_llm_layer_index *ix);

#ifdef __cplusplus
}
#endif
#endif
