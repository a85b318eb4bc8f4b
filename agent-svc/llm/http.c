#include "http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text.h"

/* One request, from submission until the caller is woken. It lives on the
 * caller's stack: after `done` is set (under the lock) the engine must not
 * touch it again. */
typedef struct req {
  struct req *next;
  const char *body;
  size_t body_len;
  int64_t deadline, not_before, submitted;
  CURL *easy;
  char *resp;
  size_t resp_len, resp_cap, resp_max;
  int too_large;
  int deadline_bound; /* this attempt's timeout is the deadline, not timeout_ms */
  ap_llm_http_result *res;
  int done;
  pthread_cond_t cv;
} req;

typedef struct {
  req *head, *tail;
} req_list;

struct ap_llm_http {
  ap_llm_http_config cfg;
  char *url;
  CURLM *multi;
  struct curl_slist *headers;
  pthread_t thread;
  int thread_started;

  pthread_mutex_t mu; /* guards the fields below up to the engine-only ones */
  req_list incoming;
  int outstanding, stop;
  int inflight_now, inflight_peak;

  /* Engine thread only. */
  req_list pending;   /* FIFO; retries re-enter at the front */
  req *delayed;       /* waiting for their backoff to end */
  req *active;        /* on the wire */
  int n_active;
  uint64_t rng;
};

int64_t ap_llm_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void list_push_tail(req_list *l, req *r) {
  r->next = NULL;
  if (l->tail) l->tail->next = r;
  else l->head = r;
  l->tail = r;
}

static void list_push_front(req_list *l, req *r) {
  r->next = l->head;
  l->head = r;
  if (!l->tail) l->tail = r;
}

static req *list_pop(req_list *l) {
  req *r = l->head;
  if (!r) return NULL;
  l->head = r->next;
  if (!l->head) l->tail = NULL;
  r->next = NULL;
  return r;
}

/* Hands the result to the waiting caller. */
__attribute__((format(printf, 4, 5))) static void complete(ap_llm_http *h, req *r, ap_llm_http_rc rc,
                                                           const char *fmt, ...) {
  ap_llm_http_result *res = r->res;
  res->rc = rc;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->error, sizeof res->error, fmt, ap);
    va_end(ap);
  }
  free(r->resp);
  r->resp = NULL;
  pthread_mutex_lock(&h->mu);
  r->done = 1;
  h->outstanding--;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&h->mu);
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  req *r = ud;
  size_t n = size * nmemb;
  if (n > r->resp_max - r->resp_len) {
    r->too_large = 1;
    return 0; /* anything short of n makes curl abort the transfer */
  }
  if (r->resp_len + n + 1 > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 16384;
    while (cap < r->resp_len + n + 1) cap *= 2;
    if (cap > r->resp_max + 1) cap = r->resp_max + 1;
    char *p = realloc(r->resp, cap);
    if (!p) return 0;
    r->resp = p;
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, data, n);
  r->resp_len += n;
  r->resp[r->resp_len] = '\0';
  return n;
}

static void set_inflight(ap_llm_http *h) {
  pthread_mutex_lock(&h->mu);
  h->inflight_now = h->n_active;
  if (h->n_active > h->inflight_peak) h->inflight_peak = h->n_active;
  pthread_mutex_unlock(&h->mu);
}

static void start_attempt(ap_llm_http *h, req *r, int64_t now) {
  CURL *e = curl_easy_init();
  if (!e) { complete(h, r, AP_LLM_HTTP_TRANSPORT, "curl_easy_init failed"); return; }
  int64_t timeout = h->cfg.timeout_ms;
  r->deadline_bound = 0;
  if (r->deadline != INT64_MAX && r->deadline - now < timeout) {
    timeout = r->deadline - now;
    r->deadline_bound = 1;
  }
  if (timeout < 1) timeout = 1;
  r->too_large = 0;
  r->resp_len = 0;
  curl_easy_setopt(e, CURLOPT_URL, h->url);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout < 10000 ? timeout : 10000));
  curl_easy_setopt(e, CURLOPT_USERAGENT, "agentprune-agent/0.1");
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  CURLMcode mc = curl_multi_add_handle(h->multi, e);
  if (mc != CURLM_OK) {
    curl_easy_cleanup(e);
    complete(h, r, AP_LLM_HTTP_TRANSPORT, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    return;
  }
  r->easy = e;
  r->next = h->active;
  h->active = r;
  h->n_active++;
  if (r->res->attempts) r->res->retries++;
  r->res->attempts++;
  set_inflight(h);
}

static void unlink_active(ap_llm_http *h, req *r) {
  for (req **pp = &h->active; *pp; pp = &(*pp)->next)
    if (*pp == r) { *pp = r->next; break; }
  r->next = NULL;
  curl_multi_remove_handle(h->multi, r->easy);
  curl_easy_cleanup(r->easy);
  r->easy = NULL;
  h->n_active--;
  set_inflight(h);
}

/* Errors worth another try: the server or the path to it may recover. */
static int curl_code_retryable(CURLcode c) {
  switch (c) {
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return 1;
  default:
    return 0;
  }
}

static uint64_t next_rand(ap_llm_http *h) {
  h->rng ^= h->rng << 13;
  h->rng ^= h->rng >> 7;
  h->rng ^= h->rng << 17;
  return h->rng;
}

/* Exponential backoff with jitter: uniform in [d/2, d], d = base * 2^retry,
 * capped; the jitter keeps many sessions from retrying in lockstep. */
static int64_t backoff_ms(ap_llm_http *h, uint32_t retry) {
  int64_t d = h->cfg.backoff_base_ms;
  for (uint32_t i = 0; i < retry && d < h->cfg.backoff_max_ms; i++) d *= 2;
  if (d > h->cfg.backoff_max_ms) d = h->cfg.backoff_max_ms;
  return d / 2 + (int64_t)(next_rand(h) % (uint64_t)(d / 2 + 1));
}

static void finish_attempt(ap_llm_http *h, req *r, CURLcode code) {
  long status = 0;
  curl_off_t retry_after = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &retry_after);
  unlink_active(h, r);
  int64_t now = ap_llm_now_ms();
  r->res->status = status;
  if (r->too_large) {
    complete(h, r, AP_LLM_HTTP_TOO_LARGE, "response body over %zu bytes; transfer aborted", r->resp_max);
    return;
  }
  if (code == CURLE_OK && status >= 200 && status < 300) {
    if (!r->resp) { /* an empty 2xx body */
      r->resp = calloc(1, 1);
      if (!r->resp) { complete(h, r, AP_LLM_HTTP_TRANSPORT, "out of memory"); return; }
    }
    r->res->body = r->resp;
    r->res->body_len = r->resp_len;
    r->resp = NULL;
    complete(h, r, AP_LLM_HTTP_OK, NULL);
    return;
  }
  char why[200];
  int retryable;
  if (code != CURLE_OK) {
    if (code == CURLE_OPERATION_TIMEDOUT && r->deadline_bound) {
      complete(h, r, AP_LLM_HTTP_DEADLINE, "deadline passed during the request");
      return;
    }
    snprintf(why, sizeof why, "%s", curl_easy_strerror(code));
    retryable = curl_code_retryable(code);
  } else {
    /* The body of an error response may say why; show a clean excerpt. */
    char *excerpt = ap_llm_sanitize(r->resp, r->resp_len, 120);
    snprintf(why, sizeof why, "HTTP %ld%s%s", status, excerpt && excerpt[0] ? ": " : "", excerpt ? excerpt : "");
    free(excerpt);
    retryable = status == 408 || status == 429 || status >= 500;
  }
  free(r->resp);
  r->resp = NULL;
  r->resp_cap = r->resp_len = 0;
  if (!retryable) {
    complete(h, r, code != CURLE_OK ? AP_LLM_HTTP_TRANSPORT : AP_LLM_HTTP_STATUS, "%s", why);
    return;
  }
  if (r->res->retries >= (uint32_t)h->cfg.max_retries) {
    complete(h, r, AP_LLM_HTTP_GAVE_UP, "%s (gave up after %u attempts)", why, r->res->attempts);
    return;
  }
  int64_t delay = backoff_ms(h, r->res->retries);
  if (retry_after > 0) {
    /* Retry-After is the server's floor; a day caps absurd values. */
    int64_t ra = retry_after > 86400 ? 86400000 : (int64_t)retry_after * 1000;
    if (ra > delay) delay = ra;
  }
  if (r->deadline != INT64_MAX && now + delay >= r->deadline) {
    complete(h, r, AP_LLM_HTTP_DEADLINE, "%s; a retry in %lld ms would pass the deadline", why, (long long)delay);
    return;
  }
  r->not_before = now + delay;
  r->next = h->delayed;
  h->delayed = r;
}

static void *engine_main(void *arg) {
  ap_llm_http *h = arg;
  for (;;) {
    pthread_mutex_lock(&h->mu);
    req *in = h->incoming.head;
    h->incoming.head = h->incoming.tail = NULL;
    int stop = h->stop;
    pthread_mutex_unlock(&h->mu);
    while (in) {
      req *next = in->next;
      list_push_tail(&h->pending, in);
      in = next;
    }
    if (stop) break;

    int64_t now = ap_llm_now_ms();
    for (req **pp = &h->delayed; *pp;) {
      req *r = *pp;
      if (now >= r->deadline) {
        *pp = r->next;
        complete(h, r, AP_LLM_HTTP_DEADLINE, "deadline passed while waiting to retry");
      } else if (now >= r->not_before) {
        *pp = r->next;
        list_push_front(&h->pending, r);
      } else {
        pp = &r->next;
      }
    }
    req_list keep = {0};
    for (req *r; (r = list_pop(&h->pending));) {
      if (now >= r->deadline)
        complete(h, r, AP_LLM_HTTP_DEADLINE, "deadline passed in the queue (%d requests in flight)", h->n_active);
      else
        list_push_tail(&keep, r);
    }
    h->pending = keep;
    while (h->n_active < h->cfg.concurrency && h->pending.head) start_attempt(h, list_pop(&h->pending), now);

    int running = 0;
    curl_multi_perform(h->multi, &running);
    CURLMsg *msg;
    int queued;
    while ((msg = curl_multi_info_read(h->multi, &queued))) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURLcode code = msg->data.result;
      req *r = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
      finish_attempt(h, r, code);
    }

    now = ap_llm_now_ms();
    int64_t wait = 1000;
    if (h->pending.head && h->n_active < h->cfg.concurrency) wait = 0;
    for (req *r = h->delayed; r; r = r->next)
      if (r->not_before - now < wait) wait = r->not_before - now;
    for (req *r = h->pending.head; r; r = r->next)
      if (r->deadline != INT64_MAX && r->deadline - now < wait) wait = r->deadline - now;
    if (wait < 0) wait = 0;
    if (wait > 0) curl_multi_poll(h->multi, NULL, 0, (int)wait, NULL);
  }
  while (h->active) {
    req *r = h->active;
    unlink_active(h, r);
    complete(h, r, AP_LLM_HTTP_SHUTDOWN, "the llm client is shutting down");
  }
  for (req *r; (r = list_pop(&h->pending));) complete(h, r, AP_LLM_HTTP_SHUTDOWN, "the llm client is shutting down");
  while (h->delayed) {
    req *r = h->delayed;
    h->delayed = r->next;
    complete(h, r, AP_LLM_HTTP_SHUTDOWN, "the llm client is shutting down");
  }
  return NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int ap_llm_http_new(const ap_llm_http_config *cfg, ap_llm_http **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg->url || (strncmp(cfg->url, "http://", 7) != 0 && strncmp(cfg->url, "https://", 8) != 0)) {
    snprintf(err, errlen, "llm url must start with http:// or https://");
    return -1;
  }
  if (cfg->concurrency < 1 || cfg->queue_limit < 0 || cfg->timeout_ms < 1 || cfg->max_retries < 0 ||
      cfg->backoff_base_ms < 1 || cfg->backoff_max_ms < cfg->backoff_base_ms || cfg->max_body_bytes < 1024) {
    snprintf(err, errlen, "llm client config out of range (concurrency >= 1, timeout >= 1 ms, retries >= 0, "
                          "body cap >= 1024 bytes)");
    return -1;
  }
  const char *key = cfg->api_key ? cfg->api_key : "";
  if (strpbrk(key, "\r\n")) {
    snprintf(err, errlen, "llm api key contains a line break");
    return -1;
  }
  pthread_once(&curl_once, curl_init_once);
  if (curl_init_rc != CURLE_OK) {
    snprintf(err, errlen, "curl_global_init: %s", curl_easy_strerror(curl_init_rc));
    return -1;
  }
  ap_llm_http *h = calloc(1, sizeof *h);
  if (!h) { snprintf(err, errlen, "out of memory"); return -1; }
  h->cfg = *cfg;
  h->cfg.api_key = NULL; /* lives only in the header list */
  pthread_mutex_init(&h->mu, NULL);
  h->rng = (uint64_t)ap_llm_now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)h;
  if (!h->rng) h->rng = 1;
  h->url = strdup(cfg->url);
  h->cfg.url = h->url;
  h->multi = curl_multi_init();
  if (!h->url || !h->multi) { snprintf(err, errlen, "out of memory"); goto fail; }
  curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)cfg->concurrency);

  struct curl_slist *hl = NULL, *t;
  /* "Expect:" stops curl from waiting for 100-continue on large prompts. */
  const char *fixed[] = {"Content-Type: application/json", "Accept: application/json", "Expect:"};
  for (size_t i = 0; i < 3; i++) {
    if (!(t = curl_slist_append(hl, fixed[i]))) goto oom;
    hl = t;
  }
  if (key[0]) {
    size_t n = strlen(key) + sizeof "Authorization: Bearer ";
    char *auth = malloc(n);
    if (!auth) goto oom;
    snprintf(auth, n, "Authorization: Bearer %s", key);
    t = curl_slist_append(hl, auth);
    memset(auth, 0, n);
    free(auth);
    if (!t) goto oom;
    hl = t;
  }
  h->headers = hl;
  if (pthread_create(&h->thread, NULL, engine_main, h) != 0) {
    snprintf(err, errlen, "cannot start the llm client thread");
    goto fail;
  }
  h->thread_started = 1;
  *out = h;
  return 0;
oom:
  curl_slist_free_all(hl);
  snprintf(err, errlen, "out of memory");
fail:
  ap_llm_http_free(h);
  return -1;
}

void ap_llm_http_free(ap_llm_http *h) {
  if (!h) return;
  if (h->thread_started) {
    pthread_mutex_lock(&h->mu);
    h->stop = 1;
    pthread_mutex_unlock(&h->mu);
    curl_multi_wakeup(h->multi);
    pthread_join(h->thread, NULL);
  }
  if (h->multi) curl_multi_cleanup(h->multi);
  curl_slist_free_all(h->headers); /* holds the key; curl frees it without wiping */
  pthread_mutex_destroy(&h->mu);
  free(h->url);
  free(h);
}

ap_llm_http_rc ap_llm_http_post(ap_llm_http *h, const char *body, size_t len, int64_t deadline_ms,
                                ap_llm_http_result *res) {
  memset(res, 0, sizeof *res);
  req r;
  memset(&r, 0, sizeof r);
  r.body = body;
  r.body_len = len;
  r.deadline = deadline_ms;
  r.submitted = ap_llm_now_ms();
  r.resp_max = h->cfg.max_body_bytes;
  r.res = res;
  pthread_mutex_lock(&h->mu);
  if (h->stop) {
    res->rc = AP_LLM_HTTP_SHUTDOWN;
    snprintf(res->error, sizeof res->error, "the llm client is shutting down");
  } else if (deadline_ms <= r.submitted) {
    res->rc = AP_LLM_HTTP_DEADLINE;
    snprintf(res->error, sizeof res->error, "no time left before the deadline");
  } else if (h->outstanding >= h->cfg.concurrency + h->cfg.queue_limit) {
    res->rc = AP_LLM_HTTP_QUEUE_FULL;
    snprintf(res->error, sizeof res->error, "llm request queue full (%d outstanding)", h->outstanding);
  } else {
    pthread_cond_init(&r.cv, NULL);
    h->outstanding++;
    list_push_tail(&h->incoming, &r);
    pthread_mutex_unlock(&h->mu);
    curl_multi_wakeup(h->multi);
    pthread_mutex_lock(&h->mu);
    while (!r.done) pthread_cond_wait(&r.cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    pthread_cond_destroy(&r.cv);
    res->latency_ms = (double)(ap_llm_now_ms() - r.submitted);
    return res->rc;
  }
  pthread_mutex_unlock(&h->mu);
  return res->rc;
}

void ap_llm_http_result_clear(ap_llm_http_result *res) {
  free(res->body);
  memset(res, 0, sizeof *res);
}

void ap_llm_http_inflight(ap_llm_http *h, int *now, int *peak) {
  pthread_mutex_lock(&h->mu);
  if (now) *now = h->inflight_now;
  if (peak) *peak = h->inflight_peak;
  pthread_mutex_unlock(&h->mu);
}
