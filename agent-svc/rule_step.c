/*
 * rule_step.c - history reading shared by the rule policy's schedules
 * (rule_step.h).
 */
#include "rule_step.h"

#include <math.h>

int ap_rule_entry_is_probe(const Agentprune__V1__HistoryEntry *e) {
  return e && e->decision && e->decision->n_probes > 0 && e->outcome && e->outcome->n_probe_results > 0;
}

void ap_rule_recent(const Agentprune__V1__History *h, uint32_t iteration, const Agentprune__V1__HistoryEntry **last,
                    const Agentprune__V1__HistoryEntry **last_ok) {
  *last = *last_ok = NULL;
  for (size_t e = 0; h && e < h->n_entries; e++) {
    const Agentprune__V1__HistoryEntry *he = h->entries[e];
    if (!he || he->iteration >= iteration || !he->outcome || ap_rule_entry_is_probe(he)) continue;
    *last = he;
    if (he->outcome->accepted && he->state) *last_ok = he;
  }
}

double ap_rule_slope_step(const Agentprune__V1__HistoryEntry *last_ok, double margin, double tau, double min_step) {
  if (!last_ok) return INFINITY;
  double s = last_ok->outcome->global_sparsity - last_ok->state->global_sparsity;
  double pb = last_ok->outcome->ppl_before, pa = last_ok->outcome->ppl_after;
  if (!(s > min_step && pb > 0 && pa > pb && isfinite(pa))) return INFINITY;
  return margin * tau / ((pa / pb - 1.0) / s);
}

double ap_rule_rolled_back_step(const Agentprune__V1__HistoryEntry *last, const Agentprune__V1__ProfileTable *t,
                                const ap_layer_index *ix) {
  if (!last || !last->outcome || last->outcome->accepted || !last->decision) return 0;
  double tried = 0, P = 0;
  for (size_t j = 0; j < last->decision->n_layers; j++) {
    long row = ap_layer_index_find(ix, last->decision->layers[j]->name);
    if (row < 0) continue;
    double d = last->decision->layers[j]->target_sparsity - t->layers[row]->rho;
    if (d > 0 && isfinite(d)) tried += (double)t->layers[row]->params * d;
  }
  for (size_t i = 0; i < t->n_layers; i++) P += (double)t->layers[i]->params;
  return P > 0 ? tried / P : 0;
}
