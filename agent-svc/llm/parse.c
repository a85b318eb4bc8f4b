#include "parse.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "text.h"

int ap_llm_json_depth(const char *s, size_t len, int limit) {
  int depth = 0, max = 0, in_string = 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = 0;
      continue;
    }
    if (c == '"') in_string = 1;
    else if (c == '[' || c == '{') {
      if (++depth > max) max = depth;
      if (max > limit) return limit + 1;
    } else if ((c == ']' || c == '}') && depth > 0) depth--;
  }
  return max;
}

/* A short, sanitised excerpt of untrusted text for an error message. */
static void quote_excerpt(char *dst, size_t dstlen, const char *s, size_t max) {
  char *clean = ap_llm_sanitize(s, s ? strlen(s) : 0, max);
  snprintf(dst, dstlen, "%s", clean ? clean : "");
  free(clean);
}

static uint64_t token_count(const cJSON *usage, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(usage, key);
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0) return 0;
  /* A server could claim any count; clamp to something a sum cannot wrap. */
  return v->valuedouble > 1e15 ? (uint64_t)1e15 : (uint64_t)v->valuedouble;
}

int ap_llm_parse_envelope(const char *body, size_t len, char **content, uint64_t *prompt_tokens,
                          uint64_t *completion_tokens, char *err, size_t errlen) {
  *content = NULL;
  *prompt_tokens = *completion_tokens = 0;
  if (!body || len == 0) { snprintf(err, errlen, "empty response body"); return -1; }
  if (ap_llm_json_depth(body, len, AP_LLM_MAX_DEPTH) > AP_LLM_MAX_DEPTH) {
    snprintf(err, errlen, "response nests JSON deeper than %d levels", AP_LLM_MAX_DEPTH);
    return -1;
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  if (!root) { snprintf(err, errlen, "response is not JSON"); return -1; }
  int rc = -1;
  char excerpt[200];
  const cJSON *error = cJSON_GetObjectItemCaseSensitive(root, "error");
  if (error && !cJSON_IsNull(error)) {
    const cJSON *msg = cJSON_IsObject(error) ? cJSON_GetObjectItemCaseSensitive(error, "message") : error;
    quote_excerpt(excerpt, sizeof excerpt, cJSON_IsString(msg) ? msg->valuestring : "(no message)", 160);
    snprintf(err, errlen, "server error: %s", excerpt);
    goto done;
  }
  const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
  const cJSON *first = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
  const cJSON *message = cJSON_IsObject(first) ? cJSON_GetObjectItemCaseSensitive(first, "message") : NULL;
  if (!cJSON_IsObject(message)) { snprintf(err, errlen, "response has no choices[0].message"); goto done; }
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(message, "content");
  const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
  if (cJSON_IsObject(usage)) {
    *prompt_tokens = token_count(usage, "prompt_tokens");
    *completion_tokens = token_count(usage, "completion_tokens");
  }
  if (cJSON_IsString(c)) {
    *content = strdup(c->valuestring);
  } else if (!c || cJSON_IsNull(c)) {
    const cJSON *refusal = cJSON_GetObjectItemCaseSensitive(message, "refusal");
    if (cJSON_IsString(refusal) && refusal->valuestring[0]) {
      quote_excerpt(excerpt, sizeof excerpt, refusal->valuestring, 160);
      snprintf(err, errlen, "the model refused: %s", excerpt);
      goto done;
    }
    *content = strdup("");
  } else {
    snprintf(err, errlen, "choices[0].message.content is not a string");
    goto done;
  }
  if (!*content) { snprintf(err, errlen, "out of memory"); goto done; }
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

static const char *find(const char *s, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= len; i++)
    if (memcmp(s + i, needle, n) == 0) return s + i;
  return NULL;
}

static const char *find_last(const char *s, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = len >= n ? len - n + 1 : 0; i-- > 0;)
    if (memcmp(s + i, needle, n) == 0) return s + i;
  return NULL;
}

/* Narrows [*s, *s + *len) to the JSON object the model meant: after any
 * reasoning block, inside the first code fence if there is one, from the
 * first '{' to the last '}'. Returns 0 when no object is there. */
static int locate_object(const char **s, size_t *len) {
  const char *p = *s, *end = *s + *len;
  const char *think = find_last(p, (size_t)(end - p), "</think>");
  if (think) p = think + strlen("</think>");
  const char *fence = find(p, (size_t)(end - p), "```");
  if (fence) {
    const char *body = memchr(fence, '\n', (size_t)(end - fence));
    if (body) {
      body++;
      const char *close = find(body, (size_t)(end - body), "```");
      const char *stop = close ? close : end;
      if (memchr(body, '{', (size_t)(stop - body))) { p = body; end = stop; }
    }
  }
  const char *open = memchr(p, '{', (size_t)(end - p));
  if (!open) return 0;
  /* Without a closing brace the text is cut short: hand it on whole so the
   * error says "not valid JSON". */
  const char *close = find_last(open, (size_t)(end - open), "}");
  *s = open;
  *len = close ? (size_t)(close - open) + 1 : (size_t)(end - open);
  return 1;
}

static int is_blank(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t') return 0;
  return 1;
}

int ap_llm_parse_answer(const ap_decide_ctx *ctx, const char *content, size_t len, Agentprune__V1__Decision *out,
                        char *err, size_t errlen) {
  char excerpt[96];
  cJSON *root = NULL;
  ap_llm_layer_index ix;
  memset(&ix, 0, sizeof ix);
  if (!content || is_blank(content, len)) { snprintf(err, errlen, "the answer was empty"); return -1; }
  const char *js = content;
  size_t js_len = len;
  if (!locate_object(&js, &js_len)) { snprintf(err, errlen, "the answer holds no JSON object"); return -1; }
  if (ap_llm_json_depth(js, js_len, AP_LLM_MAX_DEPTH) > AP_LLM_MAX_DEPTH) {
    snprintf(err, errlen, "the answer nests JSON deeper than %d levels", AP_LLM_MAX_DEPTH);
    return -1;
  }
  const char *parse_end = NULL;
  root = cJSON_ParseWithLengthOpts(js, js_len, &parse_end, 0);
  if (!root) {
    size_t at = parse_end && parse_end >= js ? (size_t)(parse_end - js) : 0;
    snprintf(err, errlen, "the answer is not valid JSON (error near byte %zu of the object)", at);
    return -1;
  }
  if (!cJSON_IsObject(root)) { snprintf(err, errlen, "the answer must be a JSON object"); goto fail; }
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
  if (!cJSON_IsArray(layers)) { snprintf(err, errlen, "the answer needs a \"layers\" array"); goto fail; }
  if (ap_llm_layer_index_build(ctx && ctx->req ? ctx->req->profile : NULL, &ix) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  size_t count = (size_t)cJSON_GetArraySize(layers);
  if (count > 2 * ix.n + 16) {
    snprintf(err, errlen, "\"layers\" has %zu entries but the table has %zu layers", count, ix.n);
    goto fail;
  }
  Agentprune__V1__Constraints none = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  const Agentprune__V1__Constraints *cons = ctx && ctx->session ? ctx->session->constraints : NULL;
  ap_limits lim;
  ap_limits_from(cons ? cons : &none, &lim);

  out->layers = count ? calloc(count, sizeof *out->layers) : NULL;
  if (count && !out->layers) { snprintf(err, errlen, "out of memory"); goto fail; }
  /* out->layers may end up shorter than count (no-op entries are dropped);
   * on failure ap_decision_clear releases the n_layers filled so far. */
  size_t i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, layers) {
    if (!cJSON_IsObject(item)) { snprintf(err, errlen, "layers[%zu] is not an object", i); goto fail; }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "name");
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(item, "target_sparsity");
    if (!cJSON_IsString(name) || !name->valuestring[0]) {
      snprintf(err, errlen, "layers[%zu].name must be a non-empty string", i);
      goto fail;
    }
    long row = ap_llm_layer_lookup(&ix, name->valuestring);
    if (row < 0) {
      quote_excerpt(excerpt, sizeof excerpt, name->valuestring, 64);
      snprintf(err, errlen, "unknown layer \"%s\" (use the ids of the profile table)", excerpt);
      goto fail;
    }
    const Agentprune__V1__LayerProfile *l = ix.table->layers[row];
    if (!cJSON_IsNumber(target) || !isfinite(target->valuedouble) || target->valuedouble < 0 ||
        target->valuedouble > 1) {
      snprintf(err, errlen, "layer %s: target_sparsity must be a number in [0, 1]", ix.ids[row]);
      goto fail;
    }
    double t = target->valuedouble;
    double upper = fmin(l->rho + lim.step_cap, lim.ceiling);
    if (t > upper && t <= upper + AP_LLM_SNAP) t = upper;
    if (t < l->rho && t >= l->rho - AP_LLM_SNAP) t = l->rho;
    i++;
    if (t == l->rho) continue; /* leaves the layer as it is: not a move */
    Agentprune__V1__LayerTarget *lt = malloc(sizeof *lt);
    if (!lt) { snprintf(err, errlen, "out of memory"); goto fail; }
    agentprune__v1__layer_target__init(lt);
    out->layers[out->n_layers++] = lt;
    lt->target_sparsity = t;
    lt->name = strdup(l->name && l->name[0] ? l->name : ix.ids[row]);
    if (!lt->name) { snprintf(err, errlen, "out of memory"); goto fail; }
  }
  const cJSON *rationale = cJSON_GetObjectItemCaseSensitive(root, "rationale");
  if (rationale && !cJSON_IsNull(rationale) && !cJSON_IsString(rationale)) {
    snprintf(err, errlen, "\"rationale\" must be a string");
    goto fail;
  }
  const char *r = cJSON_IsString(rationale) ? rationale->valuestring : "";
  out->rationale = ap_llm_sanitize(r, strlen(r), AP_LLM_RATIONALE_MAX);
  if (!out->rationale) { snprintf(err, errlen, "out of memory"); goto fail; }
  if (out->n_layers == 0) {
    /* An empty move is legal once the target is reached; whether it is,
     * ap_decision_validate decides. */
    free(out->layers);
    out->layers = NULL;
  }
  cJSON_Delete(root);
  ap_llm_layer_index_free(&ix);
  return 0;
fail:
  cJSON_Delete(root);
  ap_llm_layer_index_free(&ix);
  if (out->n_layers == 0) {
    free(out->layers);
    out->layers = NULL;
  }
  ap_decision_clear(out);
  return -1;
}
