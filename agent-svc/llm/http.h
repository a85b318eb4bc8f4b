/*
 * http.h - the transport of the `llm` policy: POST requests to an
 * OpenAI-compatible chat-completions endpoint, run by one engine thread on
 * curl's multi interface.
 *
 * Many callers (one per Decide in flight) block in ap_llm_http_post while
 * the engine keeps at most `concurrency` transfers on the wire; the rest wait
 * in a FIFO queue of bounded length. Each attempt has a timeout; 429, 408,
 * 5xx and connection errors are retried with exponential backoff and jitter,
 * honouring Retry-After; nothing outlives the caller's deadline. Response
 * bodies are capped: a transfer that exceeds the cap is aborted.
 *
 * The API key is only ever placed in the Authorization header; it is never
 * logged nor copied into an error message.
 */
#ifndef AP_LLM_HTTP_H
#define AP_LLM_HTTP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_llm_http ap_llm_http;

typedef struct {
  const char *url;          /* full endpoint URL, http:// or https:// */
  const char *api_key;      /* NULL or "" = no Authorization header */
  int concurrency;          /* transfers in flight at most (>= 1) */
  int queue_limit;          /* requests waiting beyond those, at most (>= 0) */
  int timeout_ms;           /* per attempt (>= 1) */
  int max_retries;          /* retries after the first attempt (>= 0) */
  int backoff_base_ms;      /* first backoff; doubles per retry (>= 1) */
  int backoff_max_ms;       /* backoff cap (>= backoff_base_ms) */
  size_t max_body_bytes;    /* response body cap (>= 1024) */
} ap_llm_http_config;

typedef enum {
  AP_LLM_HTTP_OK = 0,
  AP_LLM_HTTP_STATUS = 1,     /* a non-retryable HTTP status (4xx other than 408/429) */
  AP_LLM_HTTP_GAVE_UP = 2,    /* retryable failures, retries exhausted */
  AP_LLM_HTTP_TOO_LARGE = 3,  /* response body over max_body_bytes, transfer aborted */
  AP_LLM_HTTP_DEADLINE = 4,   /* the caller's deadline came first */
  AP_LLM_HTTP_QUEUE_FULL = 5, /* concurrency + queue_limit requests already outstanding */
  AP_LLM_HTTP_TRANSPORT = 6,  /* a non-retryable transport error (bad URL, TLS...) */
  AP_LLM_HTTP_SHUTDOWN = 7    /* the engine is being freed */
} ap_llm_http_rc;

typedef struct {
  ap_llm_http_rc rc;
  long status;          /* HTTP status of the last attempt (0 = none) */
  char *body;           /* malloc'd response body of a 2xx (NUL-terminated), else NULL */
  size_t body_len;
  uint32_t attempts;    /* HTTP attempts made */
  uint32_t retries;     /* attempts beyond the first */
  double latency_ms;    /* from submission to completion, queueing and backoff included */
  char error[256];      /* why, when rc != OK */
} ap_llm_http_result;

/* Milliseconds on a monotonic clock (the unit of deadlines here). */
int64_t ap_llm_now_ms(void);

/*
 * Starts the engine thread. The config's strings are copied. Returns 0, or
 * -1 with err (bad config, out of memory, curl failure).
 */
int ap_llm_http_new(const ap_llm_http_config *cfg, ap_llm_http **out, char *err, size_t errlen);

/*
 * Fails every outstanding request with AP_LLM_HTTP_SHUTDOWN, stops the
 * thread and frees everything. No caller may be inside ap_llm_http_post or
 * call it afterwards: the outstanding ones are failed only so that nothing
 * is left behind. NULL is a no-op.
 */
void ap_llm_http_free(ap_llm_http *h);

/*
 * POSTs the JSON `body` (borrowed until return) and blocks until it is
 * answered, fails for good, or `deadline_ms` (ap_llm_now_ms() time;
 * INT64_MAX = none) passes. Thread-safe. Fills *res (release it with
 * ap_llm_http_result_clear) and returns res->rc.
 */
ap_llm_http_rc ap_llm_http_post(ap_llm_http *h, const char *body, size_t len, int64_t deadline_ms,
                                ap_llm_http_result *res);

void ap_llm_http_result_clear(ap_llm_http_result *res);

/* Transfers in flight now, and the most seen at once since start. */
void ap_llm_http_inflight(ap_llm_http *h, int *now, int *peak);

#ifdef __cplusplus
}
#endif
#endif
