/*
 * llm_policy.h - the `llm` decision policy of agent-svc (DESIGN.md section
 * 5): a foundation model behind an OpenAI-compatible
 * POST {base_url}/v1/chat/completions (vLLM, llama.cpp's server, Ollama,
 * OpenAI) proposes per-layer target sparsities; the answer is parsed and
 * checked against the constraints; an invalid answer is sent back with the
 * error, at most max_reasks times; after that, or when the model cannot be
 * reached in time, the built-in `rule` policy decides (policy
 * "rule-fallback"). See docs/agent.md.
 *
 * One ap_llm serves every session of the process: ap_llm_decide is called
 * from many threads at once, and at most `concurrency` HTTP requests are in
 * flight, the others queue (see http.h).
 */
#ifndef AP_LLM_POLICY_H
#define AP_LLM_POLICY_H

#include <stddef.h>

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *base_url;   /* e.g. http://127.0.0.1:8000; a trailing /v1 or a full .../chat/completions is kept */
  const char *model;      /* the served model's name */
  const char *api_key;    /* NULL or "" = none; sent as "Authorization: Bearer"; never logged */
  int concurrency;        /* HTTP requests in flight at most; default 8 */
  int timeout_ms;         /* per HTTP attempt; default 120000 */
  int max_retries;        /* transport retries per request (429, 408, 5xx, connection); default 3 */
  int max_reasks;         /* re-asks after an invalid answer; default 2 */
  int json_schema;        /* 1 = response_format json_schema (default), 0 = plain prompt */
  size_t max_body_bytes;  /* response body cap; default 1 MiB */
  /* Beyond the fields; ap_llm_config_defaults sets them all. */
  int queue_limit;        /* requests waiting beyond `concurrency`; default 1024; more fall back at once */
  int backoff_base_ms;    /* first retry backoff, doubling; default 500 */
  int backoff_max_ms;     /* backoff cap; default 20000 */
  double temperature;     /* sampling temperature; default 0; < 0 = leave it to the server */
  int max_tokens;         /* answer length cap sent to the server; 0 (default) = the server's */
  char *owned_api_key;    /* key read from a file, owned; freed by ap_llm_config_clear */
} ap_llm_config;

/* Fills every field with its default; strings NULL. */
void ap_llm_config_defaults(ap_llm_config *cfg);

/*
 * ap_llm_config_defaults, then the environment: AP_LLM_URL, AP_LLM_MODEL,
 * AP_LLM_API_KEY or AP_LLM_API_KEY_FILE (the file wins when both are set;
 * its content, trailing whitespace removed, is the key), AP_LLM_CONCURRENCY,
 * AP_LLM_TIMEOUT_MS, AP_LLM_MAX_RETRIES, AP_LLM_MAX_REASKS,
 * AP_LLM_JSON_SCHEMA (0|1), AP_LLM_MAX_BODY_BYTES, AP_LLM_QUEUE_LIMIT,
 * AP_LLM_TEMPERATURE, AP_LLM_MAX_TOKENS. String fields point into the
 * environment (valid while it is not changed) or into owned_api_key.
 * Returns 0, or -1 with err naming the variable (a malformed number, an
 * unreadable or empty key file; the key itself is never quoted). Call
 * ap_llm_config_clear in both cases.
 */
int ap_llm_config_from_env(ap_llm_config *cfg, char *err, size_t errlen);

/*
 * Reads the API key from `path` (for --llm-api-key-file) into
 * cfg->owned_api_key and points cfg->api_key at it. Returns 0, or -1 with
 * err (unreadable, empty, over 4 KiB, or a line break inside the key).
 */
int ap_llm_config_read_key_file(ap_llm_config *cfg, const char *path, char *err, size_t errlen);

/* Wipes and frees owned_api_key (api_key is reset if it pointed there). */
void ap_llm_config_clear(ap_llm_config *cfg);

typedef struct ap_llm ap_llm;

/*
 * Validates cfg (base_url and model required) and starts the HTTP engine.
 * cfg's strings are copied: cfg may be cleared afterwards. Returns 0 with
 * *out (free with ap_llm_free), or -1 with err.
 */
int ap_llm_new(const ap_llm_config *cfg, ap_llm **out, char *err, size_t errlen);

/* Stops the engine and frees everything. No ap_llm_decide may be running
 * or start afterwards (stop the RPC server first). NULL is a no-op. */
void ap_llm_free(ap_llm *llm);

/*
 * Decides one iteration for ctx, blocking the calling thread (any number of
 * threads may call at once). Always fills `out` (initialised by the caller
 * with agentprune__v1__decision__init; release with ap_decision_clear) with
 * a decision that passed ap_decision_validate or came from ap_rule_decide:
 *  - policy "llm", fallback false: the model's answer, layer names in full;
 *  - policy "rule-fallback", fallback true, fallback_reason set: the model
 *    failed (unreachable, deadline, invalid answers after max_reasks).
 * session_id and iteration are copied from ctx. out->usage holds this
 * decision's requests (every HTTP attempt), retries (transport retries; the
 * re-asks are requests - retries - 1), prompt/completion tokens as the
 * server reported them, latency_ms (wall time spent on the model, queueing
 * and backoff included) and fallbacks (0 or 1).
 * The model's time is bounded by ctx->deadline_ms, less a margin kept for
 * the fallback. Returns 0; -1 with err only when even the rule policy fails
 * (a bad profile table) or memory runs out.
 */
int ap_llm_decide(ap_llm *llm, const ap_decide_ctx *ctx, Agentprune__V1__Decision *out, char *err, size_t errlen);

/* The full chat-completions URL that base_url maps to, written into buf.
 * Returns 0, or -1 when it does not fit or base_url is not http(s). */
int ap_llm_endpoint_url(const char *base_url, char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif
#endif
