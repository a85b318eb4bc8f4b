#include "llm_policy.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "parse.h"
#include "prompt.h"
#include "text.h"

struct ap_llm {
  ap_llm_http *http;
  char *model;
  int max_reasks, json_schema, max_tokens;
  double temperature;
};

/* ------------------------------------------------------------------ config */

void ap_llm_config_defaults(ap_llm_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->concurrency = 8;
  cfg->timeout_ms = 120000;
  cfg->max_retries = 3;
  cfg->max_reasks = 2;
  cfg->json_schema = 1;
  cfg->max_body_bytes = 1 << 20;
  cfg->queue_limit = 1024;
  cfg->backoff_base_ms = 500;
  cfg->backoff_max_ms = 20000;
  cfg->temperature = 0.0;
  cfg->max_tokens = 0;
}

static int env_long(const char *name, long lo, long hi, long *out, char *err, size_t errlen) {
  const char *v = getenv(name);
  if (!v || !v[0]) return 0;
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || *end || x < lo || x > hi) {
    snprintf(err, errlen, "%s must be an integer in [%ld, %ld]", name, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

#define ENV_INT(name, lo, hi, field)                                       \
  do {                                                                     \
    long x_ = (long)(field);                                               \
    if (env_long(name, lo, hi, &x_, err, errlen) != 0) return -1;          \
    field = x_;                                                            \
  } while (0)

int ap_llm_config_read_key_file(ap_llm_config *cfg, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot read the llm api key file %s: %s", path, strerror(errno));
    return -1;
  }
  char buf[4097];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  int rc = -1;
  if (n == sizeof buf) { snprintf(err, errlen, "the llm api key file %s is over 4 KiB", path); goto done; }
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
  buf[n] = '\0';
  if (n == 0) { snprintf(err, errlen, "the llm api key file %s is empty", path); goto done; }
  if (strlen(buf) != n || strpbrk(buf, "\r\n")) {
    snprintf(err, errlen, "the llm api key file %s holds more than one line", path);
    goto done;
  }
  char *key = strdup(buf);
  if (!key) { snprintf(err, errlen, "out of memory"); goto done; }
  ap_llm_config_clear(cfg);
  cfg->owned_api_key = key;
  cfg->api_key = key;
  rc = 0;
done:
  memset(buf, 0, sizeof buf);
  return rc;
}

void ap_llm_config_clear(ap_llm_config *cfg) {
  if (!cfg->owned_api_key) return;
  if (cfg->api_key == cfg->owned_api_key) cfg->api_key = NULL;
  volatile char *p = cfg->owned_api_key; /* volatile: the wipe must not be optimised away */
  while (*p) *p++ = 0;
  free(cfg->owned_api_key);
  cfg->owned_api_key = NULL;
}

int ap_llm_config_from_env(ap_llm_config *cfg, char *err, size_t errlen) {
  ap_llm_config_defaults(cfg);
  const char *v;
  if ((v = getenv("AP_LLM_URL")) && v[0]) cfg->base_url = v;
  if ((v = getenv("AP_LLM_MODEL")) && v[0]) cfg->model = v;
  if ((v = getenv("AP_LLM_API_KEY")) && v[0]) cfg->api_key = v;
  if ((v = getenv("AP_LLM_API_KEY_FILE")) && v[0] && ap_llm_config_read_key_file(cfg, v, err, errlen) != 0)
    return -1;
  ENV_INT("AP_LLM_CONCURRENCY", 1, 4096, cfg->concurrency);
  ENV_INT("AP_LLM_TIMEOUT_MS", 1, 3600000, cfg->timeout_ms);
  ENV_INT("AP_LLM_MAX_RETRIES", 0, 100, cfg->max_retries);
  ENV_INT("AP_LLM_MAX_REASKS", 0, 100, cfg->max_reasks);
  ENV_INT("AP_LLM_JSON_SCHEMA", 0, 1, cfg->json_schema);
  ENV_INT("AP_LLM_MAX_BODY_BYTES", 1024, 1L << 30, cfg->max_body_bytes);
  ENV_INT("AP_LLM_QUEUE_LIMIT", 0, 1000000, cfg->queue_limit);
  ENV_INT("AP_LLM_MAX_TOKENS", 0, 1000000, cfg->max_tokens);
  if ((v = getenv("AP_LLM_TEMPERATURE")) && v[0]) {
    char *end;
    errno = 0;
    double t = strtod(v, &end);
    if (errno || *end || !isfinite(t) || t > 2) {
      snprintf(err, errlen, "AP_LLM_TEMPERATURE must be a number <= 2 (negative = the server's default)");
      return -1;
    }
    cfg->temperature = t;
  }
  return 0;
}

int ap_llm_endpoint_url(const char *base_url, char *buf, size_t buflen) {
  if (!base_url || (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0)) return -1;
  size_t n = strlen(base_url);
  while (n > 0 && base_url[n - 1] == '/') n--;
  const char *suffix = "/v1/chat/completions";
  static const char chat[] = "/chat/completions";
  if (n >= sizeof chat - 1 && memcmp(base_url + n - (sizeof chat - 1), chat, sizeof chat - 1) == 0) suffix = "";
  else if (n >= 3 && memcmp(base_url + n - 3, "/v1", 3) == 0) suffix = chat;
  int w = snprintf(buf, buflen, "%.*s%s", (int)n, base_url, suffix);
  return w < 0 || (size_t)w >= buflen ? -1 : 0;
}

/* The endpoint for logs: without user:password@ or a query string, either
 * of which may carry a credential. */
static void redacted_url(const char *url, char *buf, size_t buflen) {
  const char *host = strstr(url, "://");
  host = host ? host + 3 : url;
  const char *at = strchr(host, '@');
  const char *slash = strchr(host, '/');
  if (at && (!slash || at < slash)) host = at + 1;
  size_t path_len = strcspn(host, "?#");
  int scheme_len = (int)(strstr(url, "://") ? strstr(url, "://") - url + 3 : 0);
  snprintf(buf, buflen, "%.*s%.*s", scheme_len, url, (int)path_len, host);
}

int ap_llm_new(const ap_llm_config *cfg, ap_llm **out, char *err, size_t errlen) {
  *out = NULL;
  char url[2048];
  if (!cfg->base_url || !cfg->base_url[0]) {
    snprintf(err, errlen, "the llm policy needs an endpoint (--llm-url or AP_LLM_URL)");
    return -1;
  }
  if (ap_llm_endpoint_url(cfg->base_url, url, sizeof url) != 0) {
    snprintf(err, errlen, "the llm url must be an http:// or https:// URL of under 2000 bytes");
    return -1;
  }
  if (!cfg->model || !cfg->model[0]) {
    snprintf(err, errlen, "the llm policy needs a model name (--llm-model or AP_LLM_MODEL)");
    return -1;
  }
  if (cfg->max_reasks < 0 || cfg->max_tokens < 0) {
    snprintf(err, errlen, "llm max_reasks and max_tokens must be >= 0");
    return -1;
  }
  ap_llm *llm = calloc(1, sizeof *llm);
  if (!llm || !(llm->model = strdup(cfg->model))) {
    free(llm);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  llm->max_reasks = cfg->max_reasks;
  llm->json_schema = cfg->json_schema;
  llm->max_tokens = cfg->max_tokens;
  llm->temperature = cfg->temperature;
  ap_llm_http_config hc = {
      .url = url,
      .api_key = cfg->api_key,
      .concurrency = cfg->concurrency,
      .queue_limit = cfg->queue_limit,
      .timeout_ms = cfg->timeout_ms,
      .max_retries = cfg->max_retries,
      .backoff_base_ms = cfg->backoff_base_ms,
      .backoff_max_ms = cfg->backoff_max_ms,
      .max_body_bytes = cfg->max_body_bytes,
  };
  if (ap_llm_http_new(&hc, &llm->http, err, errlen) != 0) {
    ap_llm_free(llm);
    return -1;
  }
  char shown[2048];
  redacted_url(url, shown, sizeof shown);
  AP_INFO("llm policy: endpoint %s, model %s, concurrency %d, timeout %d ms, retries %d, re-asks %d, %s, api key %s",
          shown, cfg->model, cfg->concurrency, cfg->timeout_ms, cfg->max_retries, cfg->max_reasks,
          cfg->json_schema ? "json_schema response_format" : "plain prompt",
          cfg->api_key && cfg->api_key[0] ? "set" : "none");
  *out = llm;
  return 0;
}

void ap_llm_free(ap_llm *llm) {
  if (!llm) return;
  ap_llm_http_free(llm->http);
  free(llm->model);
  free(llm);
}

/* --------------------------------------------------------------- decide */

static char *request_body(const ap_llm *llm, const char *system, const char *user, const char *format,
                          size_t *len) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  char *out = NULL;
  cJSON_AddStringToObject(root, "model", llm->model);
  cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
  cJSON *sys = cJSON_CreateObject(), *usr = cJSON_CreateObject();
  if (!msgs || !sys || !usr) {
    cJSON_Delete(sys);
    cJSON_Delete(usr);
    goto done;
  }
  cJSON_AddItemToArray(msgs, sys);
  cJSON_AddItemToArray(msgs, usr);
  if (!cJSON_AddStringToObject(sys, "role", "system") || !cJSON_AddStringToObject(sys, "content", system) ||
      !cJSON_AddStringToObject(usr, "role", "user") || !cJSON_AddStringToObject(usr, "content", user))
    goto done;
  if (llm->temperature >= 0 && !cJSON_AddNumberToObject(root, "temperature", llm->temperature)) goto done;
  if (llm->max_tokens > 0 && !cJSON_AddNumberToObject(root, "max_tokens", llm->max_tokens)) goto done;
  if (!cJSON_AddBoolToObject(root, "stream", 0)) goto done;
  if (format) {
    cJSON *rf = cJSON_Parse(format);
    if (!rf) goto done;
    cJSON_AddItemToObject(root, "response_format", rf);
  }
  out = cJSON_PrintUnformatted(root);
  if (out) *len = strlen(out);
done:
  cJSON_Delete(root);
  return out;
}

/* Replaces a string field of a Decision, freeing a previous heap value. */
static int set_str(char **field, const char *value) {
  char *copy = strdup(value ? value : "");
  if (!copy) return -1;
  if (*field && *field != protobuf_c_empty_string) free(*field);
  *field = copy;
  return 0;
}

static void move_decision(Agentprune__V1__Decision *dst, Agentprune__V1__Decision *src) {
  ap_decision_clear(dst);
  *dst = *src;
  agentprune__v1__decision__init(src);
}

int ap_llm_decide(ap_llm *llm, const ap_decide_ctx *ctx, Agentprune__V1__Decision *out, char *err, size_t errlen) {
  int64_t start = ap_llm_now_ms();
  Agentprune__V1__Usage usage = AGENTPRUNE__V1__USAGE__INIT;
  Agentprune__V1__Decision cand = AGENTPRUNE__V1__DECISION__INIT;
  char reason[720] = "", invalid[400] = "", perr[400];
  char *system = NULL, *format = NULL, *user = NULL, *body = NULL;
  int asks = 0, rc = -1;

  if (!llm || !ctx || !ctx->req || !out) {
    snprintf(err, errlen, "ap_llm_decide: no decide request");
    return -1;
  }
  if (!ctx->req->profile || ctx->req->profile->n_layers == 0) {
    snprintf(reason, sizeof reason, "no profile table to decide on");
    goto fallback;
  }
  if (ctx->deadline_ms <= 0) {
    snprintf(reason, sizeof reason, "no time left before the caller's deadline");
    goto fallback;
  }
  int64_t deadline = INT64_MAX;
  if (ctx->deadline_ms != INT64_MAX) {
    /* Keep a slice of the caller's time for the fallback and the reply. */
    int64_t margin = ctx->deadline_ms / 5 < 250 ? ctx->deadline_ms / 5 : 250;
    deadline = start + ctx->deadline_ms - margin;
  }
  system = ap_llm_build_system_prompt(ctx);
  format = llm->json_schema ? ap_llm_build_response_format(ctx) : NULL;
  if (!system || (llm->json_schema && !format)) goto oom;

  for (asks = 0; asks <= llm->max_reasks; asks++) {
    free(user);
    free(body);
    body = NULL;
    size_t body_len = 0;
    user = ap_llm_build_user_prompt(ctx, invalid[0] ? invalid : NULL);
    if (!user || !(body = request_body(llm, system, user, format, &body_len))) goto oom;
    ap_llm_http_result res;
    ap_llm_http_rc hrc = ap_llm_http_post(llm->http, body, body_len, deadline, &res);
    usage.requests += res.attempts;
    usage.retries += res.retries;
    usage.latency_ms += res.latency_ms;
    if (hrc != AP_LLM_HTTP_OK) {
      if (invalid[0])
        snprintf(reason, sizeof reason, "model request failed: %.250s (after an invalid answer: %.300s)", res.error, invalid);
      else
        snprintf(reason, sizeof reason, "model request failed: %s", res.error);
      ap_llm_http_result_clear(&res);
      goto fallback;
    }
    char *content = NULL;
    uint64_t pt = 0, ct = 0;
    int erc = ap_llm_parse_envelope(res.body, res.body_len, &content, &pt, &ct, perr, sizeof perr);
    ap_llm_http_result_clear(&res);
    usage.prompt_tokens += pt;
    usage.completion_tokens += ct;
    if (erc != 0) {
      /* A malformed envelope is the server's fault, not the model's:
       * asking again would not help. */
      snprintf(reason, sizeof reason, "unusable response from the model server: %s", perr);
      goto fallback;
    }
    int prc = ap_llm_parse_answer(ctx, content, strlen(content), &cand, perr, sizeof perr);
    free(content);
    if (prc == 0 && ap_decision_validate(ctx, &cand, perr, sizeof perr) != 0) {
      ap_decision_clear(&cand);
      prc = -1;
    }
    if (prc == 0) {
      move_decision(out, &cand);
      if (set_str(&out->policy, "llm") != 0) goto oom;
      out->fallback = 0;
      rc = 0;
      goto finish;
    }
    char *clean = ap_llm_sanitize(perr, strlen(perr), sizeof invalid);
    snprintf(invalid, sizeof invalid, "%s", clean ? clean : "invalid answer");
    free(clean);
  }
  snprintf(reason, sizeof reason, "invalid answer after %d attempts: %s", asks, invalid);

fallback:;
  char rerr[256] = "";
  ap_decision_clear(out);
  if (ap_rule_decide(ctx, out, rerr, sizeof rerr) != 0) {
    snprintf(err, errlen, "rule fallback failed: %s (llm: %s)", rerr, reason);
    ap_decision_clear(out);
    rc = -1;
    goto done;
  }
  char *why = ap_llm_sanitize(reason, strlen(reason), 512);
  if (!why || set_str(&out->policy, "rule-fallback") != 0 || set_str(&out->fallback_reason, why) != 0) {
    free(why);
    goto oom;
  }
  free(why);
  out->fallback = 1;
  usage.fallbacks = 1;
  AP_WARN("llm policy: iteration %u: rule fallback: %s", ctx->req->iteration, out->fallback_reason);
  rc = 0;

finish:
  if (ctx->session && ctx->session->session_id &&
      (!out->session_id || !out->session_id[0]) && set_str(&out->session_id, ctx->session->session_id) != 0)
    goto oom;
  out->iteration = ctx->req->iteration;
  if (!out->usage) {
    out->usage = malloc(sizeof *out->usage);
    if (!out->usage) goto oom;
  }
  *out->usage = usage;
  goto done;

oom:
  snprintf(err, errlen, "out of memory in the llm policy");
  ap_decision_clear(out);
  rc = -1;
done:
  ap_decision_clear(&cand);
  free(system);
  free(format);
  free(user);
  free(body);
  return rc;
}
