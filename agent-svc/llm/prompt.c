#include "prompt.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "text.h"

/* Growable string; on allocation failure it stops growing and remembers,
 * so builders can append freely and check once at the end. */
typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_grow(sbuf *b, size_t extra) {
  if (b->oom || b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) { b->oom = 1; return; }
  b->p = p;
  b->cap = cap;
}

static void sb_put(sbuf *b, const char *s) {
  size_t n = strlen(s);
  sb_grow(b, n);
  if (b->oom) return;
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) { b->oom = 1; return; }
  sb_grow(b, (size_t)n);
  if (b->oom) return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static char *sb_finish(sbuf *b) {
  if (b->oom || !b->p) { free(b->p); return NULL; }
  return b->p;
}

/* Model-written text quoted in a prompt: sanitised, bounded, and with double
 * quotes turned into single ones so the quote cannot be closed early. */
static void sb_quote(sbuf *b, const char *s, size_t max_bytes) {
  char *clean = ap_llm_sanitize(s, s ? strlen(s) : 0, max_bytes);
  if (!clean) { b->oom = 1; return; }
  for (char *c = clean; *c; c++)
    if (*c == '"') *c = '\'';
  sb_put(b, "\"");
  sb_put(b, clean);
  sb_put(b, "\"");
  free(clean);
}

static const Agentprune__V1__Constraints *ctx_constraints(const ap_decide_ctx *ctx) {
  return ctx && ctx->session ? ctx->session->constraints : NULL;
}

static void ctx_limits(const ap_decide_ctx *ctx, ap_limits *lim) {
  Agentprune__V1__Constraints none = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  const Agentprune__V1__Constraints *c = ctx_constraints(ctx);
  ap_limits_from(c ? c : &none, lim);
}

static const Agentprune__V1__ProfileTable *ctx_table(const ap_decide_ctx *ctx) {
  return ctx && ctx->req ? ctx->req->profile : NULL;
}

static const char *ctx_structure(const ap_decide_ctx *ctx) {
  const Agentprune__V1__Constraints *c = ctx_constraints(ctx);
  return c && c->structure && c->structure[0] ? c->structure : "unstructured";
}

/* N and M of an "N:M" structure, or 0 when it is not one. */
static int parse_nm(const char *s, unsigned *n, unsigned *m) {
  char tail;
  if (sscanf(s, "%u:%u%c", n, m, &tail) != 2) return 0;
  return *m > 0 && *n <= *m;
}

char *ap_llm_build_system_prompt(const ap_decide_ctx *ctx) {
  ap_limits lim;
  ctx_limits(ctx, &lim);
  ap_llm_layer_index ix;
  if (ap_llm_layer_index_build(ctx_table(ctx), &ix) != 0) return NULL;
  int short_ids = ix.short_ids || ix.n == 0;
  ap_llm_layer_index_free(&ix);

  sbuf b = {0};
  sb_put(&b,
         "You are the pruning agent of agentprune. A language model is being pruned after training, one "
         "iteration at a time. At each iteration you choose new target sparsities for some of its linear "
         "layers. The pruner then zeroes, inside each output row of each chosen layer, the surviving weights "
         "with the lowest Wanda score |W|*||X|| until the layer reaches its target, and measures perplexity "
         "(ppl) on held-out text. If ppl rises by more than tau relative to the last accepted checkpoint, the "
         "iteration is rolled back and its work is lost. Reach the global target sparsity in few iterations "
         "while keeping ppl as low as possible: prune insensitive layers more and sensitive layers less, and "
         "learn from the outcomes in the history.\n\n");
  sb_put(&b, "Profile table, one line per layer:\n");
  if (short_ids)
    sb_put(&b, "  id      the layer id to use in your answer: <block>.<kind>; kinds q k v o are the attention "
               "projections, gate up down the MLP\n");
  else
    sb_put(&b, "  id      the layer name to use in your answer\n");
  sb_put(&b,
         "  params  number of weights in the layer\n"
         "  z_s     z-score over all layers of s, the 10th percentile of |W|*||X|| over the surviving weights; "
         "low = its weakest weights carry little signal\n"
         "  z_g     z-score over all layers of g, the mean |dLoss/dW| over the surviving weights; low = the loss "
         "is less sensitive to the layer\n"
         "  rho     current sparsity of the layer (fraction of its weights already zero)\n"
         "  dppl    relative ppl change of the latest earlier iterations that pruned the layer, newest last "
         "(\"-\" = none)\n"
         "Low z_s and z_g together mean a layer is safer to prune; (z_s + z_g)/2 is a good first ranking.\n\n");
  sb_put(&b, "Constraints (hard; an answer that breaks one is rejected):\n");
  sb_put(&b, "  1. List only layers you prune further, each at most once, by id.\n");
  sb_printf(&b,
            "  2. A layer's target_sparsity lies in (rho, min(rho + %.4f, %.4f)]: it grows by at most %.4f per "
            "iteration and never exceeds %.4f.\n",
            lim.step_cap, lim.ceiling, lim.step_cap, lim.ceiling);
  sb_put(&b, "  3. Make progress: at least one layer grows.\n");
  sb_printf(&b,
            "  4. Do not overshoot: the global sparsity after your decision (the params-weighted mean of all "
            "layers' sparsities) stays at or below %.4f + %.4f.\n",
            lim.target, lim.tolerance);
  const char *structure = ctx_structure(ctx);
  unsigned n = 0, m = 0;
  if (parse_nm(structure, &n, &m))
    sb_printf(&b,
              "  5. Structure %u:%u: at least %u of every %u consecutive input weights survive, so no layer can "
              "exceed sparsity %.4f.\n",
              n, m, n, m, 1.0 - (double)n / m);
  else {
    sb_put(&b, "  5. Structure: ");
    char *clean = ap_llm_sanitize(structure, strlen(structure), 32);
    sb_put(&b, clean ? clean : "");
    if (!clean) b.oom = 1;
    free(clean);
    sb_put(&b, " (any weight may be removed).\n");
  }
  sb_put(&b,
         "\nAnswer with one JSON object and nothing else, no markdown:\n"
         "{\"layers\":[{\"name\":\"<id>\",\"target_sparsity\":<number>}],\"rationale\":\"<one or two sentences "
         "on why>\"}\n");
  return sb_finish(&b);
}

/* The id of a layer named in a stored decision: the current table's id, or
 * the sanitised name when the table no longer has it. */
static void sb_layer_ref(sbuf *b, const ap_llm_layer_index *ix, const char *name) {
  long row = ap_llm_layer_lookup(ix, name);
  if (row >= 0) { sb_put(b, ix->ids[row]); return; }
  char *clean = ap_llm_sanitize(name, name ? strlen(name) : 0, 64);
  if (!clean) { b->oom = 1; return; }
  sb_put(b, clean[0] ? clean : "?");
  free(clean);
}

static double rel_change(double before, double after) {
  return before > 0 ? after / before - 1.0 : 0.0;
}

static void sb_entry(sbuf *b, const ap_llm_layer_index *ix, const Agentprune__V1__HistoryEntry *e) {
  const Agentprune__V1__Decision *d = e->decision;
  sb_printf(b, "Iteration %u", e->iteration);
  if (!d) {
    sb_put(b, ": no decision stored");
  } else {
    if (d->fallback) {
      sb_put(b, " (your answer was not usable: ");
      sb_quote(b, d->fallback_reason, 160);
      sb_put(b, "; the rule policy decided)");
    } else if (d->policy && d->policy[0]) {
      char *clean = ap_llm_sanitize(d->policy, strlen(d->policy), 24);
      if (!clean) b->oom = 1;
      else sb_printf(b, " (%s)", clean);
      free(clean);
    }
    sb_put(b, ":");
    size_t cap = e->outcome && !e->outcome->accepted ? AP_LLM_HISTORY_LAYERS_RB : AP_LLM_HISTORY_LAYERS;
    size_t shown = d->n_layers < cap ? d->n_layers : cap;
    for (size_t i = 0; i < shown; i++) {
      const Agentprune__V1__LayerTarget *t = d->layers[i];
      if (!t) continue;
      sb_put(b, " ");
      sb_layer_ref(b, ix, t->name);
      sb_printf(b, "->%.4f", t->target_sparsity);
    }
    if (d->n_layers > shown) sb_printf(b, " (and %zu more)", d->n_layers - shown);
    if (d->n_layers == 0) sb_put(b, " no layers");
  }
  const Agentprune__V1__Outcome *o = e->outcome;
  if (o && o->n_probe_results) {
    /* A probe iteration (the rule fallback measured plans): the plans' ppl
       is what the model can learn from; no mask changed. */
    sb_put(b, "; plans measured by rollout, no mask changed:");
    for (size_t k = 0; k < o->n_probe_results && k < 8; k++) {
      const Agentprune__V1__ProbeResult *r = o->probe_results[k];
      if (!r) continue;
      char *clean = ap_llm_sanitize(r->label ? r->label : "", r->label ? strlen(r->label) : 0, 32);
      if (!clean) b->oom = 1;
      else sb_printf(b, " %s ppl %.3f at sparsity %.4f;", clean, r->ppl, r->global_sparsity);
      free(clean);
    }
  } else if (o)
    sb_printf(b, "; %s, ppl %.3f -> %.3f (%+.2f%%), global sparsity %.4f", o->accepted ? "accepted" : "rolled back",
              o->ppl_before, o->ppl_after, 100.0 * rel_change(o->ppl_before, o->ppl_after), o->global_sparsity);
  else
    sb_put(b, "; no outcome reported");
  if (d && !d->fallback && d->rationale && d->rationale[0]) {
    sb_put(b, "; your rationale: ");
    sb_quote(b, d->rationale, AP_LLM_RATIONALE_QUOTE);
  }
  sb_put(b, "\n");
}

/* A bounded summary of entries [0, n): counts, mean dppl of accepted and
 * rolled-back moves, the sparsity trajectory and the layers that rollbacks
 * involved most. Its size does not grow with the history. */
static void sb_digest(sbuf *b, const ap_llm_layer_index *ix, Agentprune__V1__HistoryEntry *const *entries, size_t n) {
  size_t accepted = 0, rolled = 0, fallbacks = 0, no_outcome = 0;
  double acc_sum = 0, acc_max = -INFINITY, rb_sum = 0;
  unsigned *rb_count = ix->n ? calloc(ix->n, sizeof *rb_count) : NULL;
  if (ix->n && !rb_count) { b->oom = 1; return; }
  double first_sparsity = NAN, last_sparsity = NAN;
  for (size_t i = 0; i < n; i++) {
    const Agentprune__V1__HistoryEntry *e = entries[i];
    if (!e) continue;
    if (isnan(first_sparsity) && e->state) first_sparsity = e->state->global_sparsity;
    if (e->decision && e->decision->fallback) fallbacks++;
    const Agentprune__V1__Outcome *o = e->outcome;
    if (!o) { no_outcome++; continue; }
    last_sparsity = o->global_sparsity;
    double dp = rel_change(o->ppl_before, o->ppl_after);
    if (o->accepted) {
      accepted++;
      acc_sum += dp;
      if (dp > acc_max) acc_max = dp;
    } else {
      rolled++;
      rb_sum += dp;
      if (e->decision && rb_count)
        for (size_t k = 0; k < e->decision->n_layers; k++) {
          const Agentprune__V1__LayerTarget *t = e->decision->layers[k];
          long row = t ? ap_llm_layer_lookup(ix, t->name) : -1;
          if (row >= 0) rb_count[row]++;
        }
    }
  }
  unsigned first_it = entries[0] ? entries[0]->iteration : 0;
  unsigned last_it = entries[n - 1] ? entries[n - 1]->iteration : 0;
  sb_printf(b, "Digest of iterations %u-%u: %zu accepted", first_it, last_it, accepted);
  if (accepted) sb_printf(b, " (mean dppl %+.2f%%, max %+.2f%%)", 100.0 * acc_sum / accepted, 100.0 * acc_max);
  sb_printf(b, ", %zu rolled back", rolled);
  if (rolled) sb_printf(b, " (mean dppl %+.2f%%)", 100.0 * rb_sum / rolled);
  if (no_outcome) sb_printf(b, ", %zu without outcome", no_outcome);
  sb_printf(b, ", %zu rule fallbacks", fallbacks);
  if (!isnan(first_sparsity) && !isnan(last_sparsity))
    sb_printf(b, "; global sparsity %.4f -> %.4f", first_sparsity, last_sparsity);
  if (rolled && rb_count) {
    sb_put(b, "; layers most often in rolled-back moves:");
    /* Up to 10 layers by count, ties in table order: a bounded selection. */
    for (int shown = 0; shown < 10; shown++) {
      size_t best = ix->n;
      for (size_t r = 0; r < ix->n; r++)
        if (rb_count[r] && (best == ix->n || rb_count[r] > rb_count[best])) best = r;
      if (best == ix->n) break;
      sb_printf(b, " %s x%u", ix->ids[best], rb_count[best]);
      rb_count[best] = 0;
    }
  }
  sb_put(b, "\n");
  free(rb_count);
}

char *ap_llm_build_user_prompt(const ap_decide_ctx *ctx, const char *retry_error) {
  ap_limits lim;
  ctx_limits(ctx, &lim);
  const Agentprune__V1__ProfileTable *table = ctx_table(ctx);
  ap_llm_layer_index ix;
  if (ap_llm_layer_index_build(table, &ix) != 0) return NULL;
  Agentprune__V1__JobState none = AGENTPRUNE__V1__JOB_STATE__INIT;
  const Agentprune__V1__JobState *st = ctx && ctx->req && ctx->req->state ? ctx->req->state : &none;
  unsigned iteration = ctx && ctx->req ? ctx->req->iteration : 0;

  double total_params = 0;
  unsigned max_block = 0;
  for (size_t i = 0; i < ix.n; i++) {
    const Agentprune__V1__LayerProfile *l = table->layers[i];
    if (!l) continue;
    total_params += (double)l->params;
    if (l->block > max_block) max_block = l->block;
  }

  sbuf b = {0};
  sb_printf(&b, "Iteration %u", iteration);
  if (st->max_iterations) sb_printf(&b, " of at most %u", st->max_iterations);
  sb_put(&b, ".\n");
  double need = lim.target - st->global_sparsity;
  sb_printf(&b, "Global sparsity %.4f, target %.4f (done within %.4f)", st->global_sparsity, lim.target,
            lim.tolerance);
  if (need > 0)
    sb_printf(&b, ": raise it by %.4f more, about %.0f weights.\n", need, need * total_params);
  else
    sb_put(&b, ": the target is reached.\n");
  sb_printf(&b, "Perplexity: dense %.3f, current %.3f (%+.2f%% over dense); tau %.4f (a move that raises ppl by more "
                "than %.2f%% is rolled back).\n",
            st->dense_ppl, st->current_ppl, 100.0 * rel_change(st->dense_ppl, st->current_ppl), st->tau,
            100.0 * st->tau);
  sb_printf(&b, "Rollbacks so far: %u (%u in a row).\n\n", st->rollbacks, st->consecutive_rollbacks);

  sb_printf(&b, "Profile table (%zu layers in %u blocks):\nid params z_s z_g rho dppl\n", ix.n,
            ix.n ? max_block + 1 : 0);
  for (size_t i = 0; i < ix.n; i++) {
    const Agentprune__V1__LayerProfile *l = table->layers[i];
    if (!l) continue;
    sb_printf(&b, "%s %llu %+.2f %+.2f %.4f ", ix.ids[i], (unsigned long long)l->params, l->z_s, l->z_g, l->rho);
    if (l->n_dppl_history == 0) sb_put(&b, "-");
    size_t from = l->n_dppl_history > AP_LLM_DPPL_SHOWN ? l->n_dppl_history - AP_LLM_DPPL_SHOWN : 0;
    for (size_t k = from; k < l->n_dppl_history; k++)
      sb_printf(&b, "%s%+.1f%%", k > from ? "," : "", 100.0 * l->dppl_history[k]);
    sb_put(&b, "\n");
  }

  const Agentprune__V1__History *h = ctx ? ctx->history : NULL;
  size_t n_hist = h ? h->n_entries : 0;
  if (n_hist == 0) {
    sb_put(&b, "\nHistory: none yet.\n");
  } else {
    sb_put(&b, "\nHistory (oldest first):\n");
    size_t recent_from = n_hist > AP_LLM_HISTORY_RECENT ? n_hist - AP_LLM_HISTORY_RECENT : 0;
    if (recent_from) sb_digest(&b, &ix, h->entries, recent_from);
    for (size_t i = recent_from; i < n_hist; i++)
      if (h->entries[i]) sb_entry(&b, &ix, h->entries[i]);
  }

  sb_printf(&b, "\nDecide iteration %u.\n", iteration);
  if (retry_error) {
    sb_put(&b, "\nYour previous answer was rejected: ");
    char *clean = ap_llm_sanitize(retry_error, strlen(retry_error), 600);
    if (!clean) b.oom = 1;
    else sb_put(&b, clean);
    free(clean);
    sb_put(&b, "\nAnswer again with a corrected JSON object.\n");
  }
  ap_llm_layer_index_free(&ix);
  return sb_finish(&b);
}

char *ap_llm_build_response_format(const ap_decide_ctx *ctx) {
  ap_llm_layer_index ix;
  if (ap_llm_layer_index_build(ctx_table(ctx), &ix) != 0) return NULL;
  char *out = NULL;
  cJSON *rf = cJSON_CreateObject();
  cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
  cJSON_AddStringToObject(rf, "type", "json_schema");
  cJSON_AddStringToObject(js, "name", "pruning_decision");
  cJSON_AddBoolToObject(js, "strict", 1);
  cJSON *schema = cJSON_AddObjectToObject(js, "schema");
  cJSON_AddStringToObject(schema, "type", "object");
  cJSON *props = cJSON_AddObjectToObject(schema, "properties");
  cJSON *layers = cJSON_AddObjectToObject(props, "layers");
  cJSON_AddStringToObject(layers, "type", "array");
  cJSON *item = cJSON_AddObjectToObject(layers, "items");
  cJSON_AddStringToObject(item, "type", "object");
  cJSON *iprops = cJSON_AddObjectToObject(item, "properties");
  cJSON *name = cJSON_AddObjectToObject(iprops, "name");
  cJSON_AddStringToObject(name, "type", "string");
  if (ix.n > 0 && ix.n <= 500) {
    cJSON *en = cJSON_AddArrayToObject(name, "enum");
    for (size_t i = 0; i < ix.n && en; i++) cJSON_AddItemToArray(en, cJSON_CreateString(ix.ids[i]));
  }
  cJSON *ts = cJSON_AddObjectToObject(iprops, "target_sparsity");
  cJSON_AddStringToObject(ts, "type", "number");
  const char *item_req[] = {"name", "target_sparsity"};
  cJSON_AddItemToObject(item, "required", cJSON_CreateStringArray(item_req, 2));
  cJSON_AddBoolToObject(item, "additionalProperties", 0);
  cJSON *rat = cJSON_AddObjectToObject(props, "rationale");
  cJSON_AddStringToObject(rat, "type", "string");
  const char *req[] = {"layers", "rationale"};
  cJSON_AddItemToObject(schema, "required", cJSON_CreateStringArray(req, 2));
  cJSON_AddBoolToObject(schema, "additionalProperties", 0);
  /* cJSON's Add* calls tolerate a NULL parent, so out of memory gives at
   * worst a partial schema: that only loosens the server-side guidance, and
   * every answer is validated here anyway. */
  if (rf) out = cJSON_PrintUnformatted(rf);
  cJSON_Delete(rf);
  ap_llm_layer_index_free(&ix);
  return out;
}
