/*
 * The agentprune.v1.Pruner gRPC handlers. Every handler validates its request
 * completely before doing any work; paths are resolved inside the data roots.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "engine.h"
#include "log.h"
#include "paths.h"
#include "pruner.h"
#include "rpc_client.h"

#define MAX_WINDOWS (1u << 20)
#define MAX_CTX (1u << 17)

static uint64_t now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* Resolves a request path inside the data roots; on failure replies
   INVALID_ARGUMENT naming the field. */
static int resolve(pruner *p, ap_rpc_call *call, const char *field, const char *path, int must_exist,
                   int want_dir, char *out, size_t outlen) {
  char err[600];
  if (!path || !*path) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s is required", field);
  if (strlen(path) > 4000) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s is too long", field);
  if (ap_path_resolve(p->roots, p->n_roots, path, must_exist, out, outlen, err, sizeof err) != 0)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s: %s", field, err);
  if (must_exist) {
    struct stat st;
    if (stat(out, &st) != 0) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s %s: %s", field, path, strerror(errno));
    if (want_dir && !S_ISDIR(st.st_mode))
      return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s %s is not a folder", field, path);
    if (!want_dir && !S_ISREG(st.st_mode))
      return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s %s is not a regular file", field, path);
  }
  return AP_OK;
}

static int check_model_dir(ap_rpc_call *call, const char *dir) {
  char cfg[PATH_MAX + 16];
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  if (access(cfg, R_OK) != 0)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "model_dir %s has no readable config.json", dir);
  return AP_OK;
}

static int check_pattern(ap_rpc_call *call, const char *field, const char *pat) {
  if (!pat || !*pat) return AP_OK;
  if (strlen(pat) > 1000) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s is too long", field);
  int ec;
  PCRE2_SIZE off;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "%s is not a valid regular expression at offset %zu: %s",
                        field, (size_t)off, (char *)msg);
  }
  pcre2_code_free(re);
  return AP_OK;
}

static int check_device(ap_rpc_call *call, const char *d) {
  if (!d || !*d || !strcmp(d, "auto") || !strcmp(d, "cpu") || !strcmp(d, "cuda")) return AP_OK;
  return ap_rpc_error(call, AP_INVALID_ARGUMENT, "device must be auto, cpu or cuda, got '%.40s'", d);
}

static int check_sample(ap_rpc_call *call, const char *s) {
  if (!s || !*s || !strcmp(s, "first") || !strcmp(s, "random")) return AP_OK;
  return ap_rpc_error(call, AP_INVALID_ARGUMENT, "sample must be first or random, got '%.40s'", s);
}

/* "unstructured" or N:M with 0 < N < M <= 64. */
static int check_structure(ap_rpc_call *call, const char *s) {
  if (!s || !*s || !strcmp(s, "unstructured")) return AP_OK;
  unsigned n, m;
  char tail;
  if (sscanf(s, "%u:%u%c", &n, &m, &tail) == 2 && n > 0 && n < m && m <= 64) return AP_OK;
  return ap_rpc_error(call, AP_INVALID_ARGUMENT,
                      "structure must be 'unstructured' or N:M with 0 < N < M <= 64 (e.g. 2:4), got '%.40s'", s);
}

static const char *device_or(const char *requested, const char *configured) {
  return requested && *requested ? requested : configured;
}

/* ---- Evaluate ------------------------------------------------------------ */

static int stop_on_cancel(void *arg) {
  ap_rpc_call *call = arg;
  return ap_rpc_call_cancelled(call) || ap_rpc_server_stopping(ap_rpc_call_server(call));
}

static int handle_evaluate(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__EvalSpec *in = (const Agentprune__V1__EvalSpec *)request;
  char model[PATH_MAX], text[PATH_MAX];
  int rc;
  if ((rc = resolve(p, call, "model_dir", in->model_dir, 1, 1, model, sizeof model)) ||
      (rc = check_model_dir(call, model)) ||
      (rc = resolve(p, call, "text_path", in->text_path, 1, 0, text, sizeof text)) ||
      (rc = check_device(call, in->device)))
    return rc;
  if (in->ctx == 1 || in->ctx > MAX_CTX)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "ctx must be 0 (default) or in [2, %u]", MAX_CTX);
  if (in->windows > MAX_WINDOWS)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "windows must be at most %u", MAX_WINDOWS);
  Agentprune__V1__EvalSpec spec = *in;
  spec.model_dir = model;
  spec.text_path = text;
  Agentprune__V1__EvalResult res = AGENTPRUNE__V1__EVAL_RESULT__INIT;
  char err[512] = "";
  engine_stop stop = {stop_on_cancel, call};
  rc = engine_evaluate(&spec, device_or(in->device, p->device), p->threads, &res, &stop, err, sizeof err);
  if (rc != AP_OK) return ap_rpc_error(call, rc, "%s", err);
  ap_rpc_reply(call, &res.base);
  return AP_OK;
}

/* ---- Profile ------------------------------------------------------------- */

static int handle_profile(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__ProfileSpec *in = (const Agentprune__V1__ProfileSpec *)request;
  char model[PATH_MAX], calib[PATH_MAX];
  int rc;
  if ((rc = resolve(p, call, "model_dir", in->model_dir, 1, 1, model, sizeof model)) ||
      (rc = check_model_dir(call, model)) ||
      (rc = resolve(p, call, "calib_path", in->calib_path, 1, 0, calib, sizeof calib)) ||
      (rc = check_device(call, in->device)) || (rc = check_sample(call, in->sample)) ||
      (rc = check_pattern(call, "include_pattern", in->include_pattern)) ||
      (rc = check_pattern(call, "exclude_pattern", in->exclude_pattern)))
    return rc;
  if (in->ctx == 1 || in->ctx > MAX_CTX)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "ctx must be 0 (default) or in [2, %u]", MAX_CTX);
  if (in->calib_windows > MAX_WINDOWS || in->grad_windows > MAX_WINDOWS)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "calib_windows and grad_windows must be at most %u", MAX_WINDOWS);
  Agentprune__V1__ProfileSpec spec = *in;
  spec.model_dir = model;
  spec.calib_path = calib;
  Agentprune__V1__ProfileResult res = AGENTPRUNE__V1__PROFILE_RESULT__INIT;
  char err[512] = "";
  engine_stop stop = {stop_on_cancel, call};
  rc = engine_profile(&spec, device_or(in->device, p->device), p->threads, &res, &stop, err, sizeof err);
  if (rc == AP_OK) ap_rpc_reply(call, &res.base);
  engine_profile_result_clear(&res);
  return rc == AP_OK ? AP_OK : ap_rpc_error(call, rc, "%s", err);
}

/* ---- SubmitJob ----------------------------------------------------------- */

static int dir_is_empty_or_missing(const char *path) {
  DIR *d = opendir(path);
  if (!d) return errno == ENOENT;
  struct dirent *e;
  int empty = 1;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
  closedir(d);
  return empty;
}

static int check_agent(ap_rpc_call *call, const char *addr) {
  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  if (!c) return ap_rpc_error(call, AP_INTERNAL, "cannot create a channel to the agent %s", addr);
  ap_rpc_status st;
  int s = ap_rpc_health_check(c, "", 3000, &st);
  ap_rpc_client_free(c);
  if (s == 1) return AP_OK;
  return ap_rpc_error(call, AP_FAILED_PRECONDITION,
                      "the agent at %s is not reachable (%s); start it, or submit with agent_fallback=rule",
                      addr, s == 2 ? "NOT_SERVING" : st.message);
}

static void make_job_id(char *out, size_t len) {
  unsigned char rnd[6] = {0};
  FILE *f = fopen("/dev/urandom", "rb");
  if (f) {
    if (fread(rnd, 1, sizeof rnd, f) != sizeof rnd) memset(rnd, 0, sizeof rnd);
    fclose(f);
  }
  snprintf(out, len, "job-%llx-%02x%02x%02x%02x%02x%02x", (unsigned long long)now_ms(), rnd[0], rnd[1], rnd[2],
           rnd[3], rnd[4], rnd[5]);
}

/* An unfinished job has not written its out_dir yet, so the emptiness check
   cannot see it: a second job with the same folder would export over it. */
static int check_out_dir_unclaimed(pruner *p, ap_rpc_call *call, const char *out) {
  Agentprune__V1__Job **jobs = NULL;
  size_t n = 0;
  int rc = ap_js_job_list(p->store, 0, 1, &jobs, &n);
  if (rc) return ap_rpc_error(call, AP_INTERNAL, "job store: %s", ap_js_strerror(rc));
  rc = AP_OK;
  for (size_t i = 0; i < n && rc == AP_OK; i++)
    if (jobs[i]->out_dir && !strcmp(jobs[i]->out_dir, out))
      rc = ap_rpc_error(call, AP_INVALID_ARGUMENT, "out_dir %s is the output folder of job %s, which has not finished",
                        out, jobs[i]->id);
  ap_js_jobs_free(jobs, n);
  return rc;
}

static int finite_in(double v, double lo, double hi) { return isfinite(v) && v >= lo && v <= hi; }

/* The job an earlier SubmitJob with this client_request_id created, or NULL.
   A retry must get that job back even when the world changed since (its
   out_dir is no longer empty, the agent went away), so this runs before the
   checks that depend on such state. The store has no lookup by request id,
   hence the scan; it runs only for requests that carry an id. */
static Agentprune__V1__Job *find_by_request_id(pruner *p, const char *rid) {
  if (!rid || !*rid) return NULL;
  Agentprune__V1__Job **jobs = NULL, *found = NULL;
  size_t n = 0;
  if (ap_js_job_list(p->store, 0, 0, &jobs, &n) != 0) return NULL;
  for (size_t i = 0; i < n && !found; i++)
    if (jobs[i]->spec && jobs[i]->spec->client_request_id && !strcmp(jobs[i]->spec->client_request_id, rid)) {
      found = jobs[i];
      jobs[i] = NULL;
    }
  ap_js_jobs_free(jobs, n);
  return found;
}

static int handle_submit(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__JobSpec *in = (const Agentprune__V1__JobSpec *)request;
  char model[PATH_MAX], calib[PATH_MAX], eval[PATH_MAX], test[PATH_MAX] = "", out[PATH_MAX];
  int rc;
  Agentprune__V1__Job *earlier = find_by_request_id(p, in->client_request_id);
  if (earlier) {
    ap_rpc_reply(call, &earlier->base);
    agentprune__v1__job__free_unpacked(earlier, NULL);
    return AP_OK;
  }
  if ((rc = resolve(p, call, "model_dir", in->model_dir, 1, 1, model, sizeof model)) ||
      (rc = check_model_dir(call, model)) ||
      (rc = resolve(p, call, "calib_path", in->calib_path, 1, 0, calib, sizeof calib)) ||
      (rc = resolve(p, call, "eval_path", in->eval_path, 1, 0, eval, sizeof eval)) ||
      (in->test_path && *in->test_path && (rc = resolve(p, call, "test_path", in->test_path, 1, 0, test, sizeof test))) ||
      (rc = resolve(p, call, "out_dir", in->out_dir, 0, 1, out, sizeof out)))
    return rc;
  if (!dir_is_empty_or_missing(out))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "out_dir %s exists and is not empty", out);
  if ((rc = check_out_dir_unclaimed(p, call, out))) return rc;
  if (!finite_in(in->target_sparsity, 0, 1) || in->target_sparsity <= 0 || in->target_sparsity >= 1)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "target_sparsity must be strictly between 0 and 1");
  const char *policy = in->policy && *in->policy ? in->policy : "rule";
  if (strcmp(policy, "rule") && strcmp(policy, "llm") && strcmp(policy, "wanda") && strcmp(policy, "owl") &&
      strcmp(policy, "magnitude"))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "policy must be rule, llm, wanda, owl or magnitude, got '%.40s'",
                        policy);
  if ((rc = check_structure(call, in->structure)) || (rc = check_device(call, in->device)) ||
      (rc = check_sample(call, in->sample)) || (rc = check_pattern(call, "include_pattern", in->include_pattern)) ||
      (rc = check_pattern(call, "exclude_pattern", in->exclude_pattern)))
    return rc;
  if (in->structure && *in->structure && strcmp(in->structure, "unstructured")) {
    unsigned n, m;
    sscanf(in->structure, "%u:%u", &n, &m);
    if (fabs(in->target_sparsity - (double)n / m) > 1e-9 && strcmp(policy, "rule") && strcmp(policy, "llm"))
      return ap_rpc_error(call, AP_INVALID_ARGUMENT,
                          "structure %s fixes the sparsity of a one-shot baseline at %.4f; got target %.4f",
                          in->structure, (double)n / m, in->target_sparsity);
  }
  if (in->tau != 0 && !finite_in(in->tau, 1e-9, 100))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "tau must be in (0, 100]");
  if (in->step_cap != 0 && !finite_in(in->step_cap, 1e-9, 1))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "step_cap must be in (0, 1]");
  if (in->ceiling != 0 && !finite_in(in->ceiling, 1e-9, 1))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "ceiling must be in (0, 1]");
  if (in->ceiling != 0 && in->ceiling < in->target_sparsity)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "ceiling %.4f is below the target sparsity %.4f", in->ceiling,
                        in->target_sparsity);
  if (in->owl_m != 0 && !finite_in(in->owl_m, 1e-9, 1e6))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "owl_m must be in (0, 1e6]");
  if (in->owl_lambda != 0 && !finite_in(in->owl_lambda, 1e-12, 1))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "owl_lambda must be in (0, 1]");
  if (in->calib_windows > MAX_WINDOWS || in->eval_windows > MAX_WINDOWS || in->grad_windows > MAX_WINDOWS)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "window counts must be at most %u", MAX_WINDOWS);
  if (in->ctx == 1 || in->ctx > MAX_CTX)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "ctx must be 0 (default) or in [2, %u]", MAX_CTX);
  if (in->max_iterations > 100000 || in->max_consecutive_rollbacks > 10000)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "max_iterations or max_consecutive_rollbacks is absurd");
  if (in->agent_fallback && *in->agent_fallback && strcmp(in->agent_fallback, "rule"))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "agent_fallback must be empty or 'rule'");
  if (in->client_request_id && strlen(in->client_request_id) > AP_JS_REQUEST_ID_MAX)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "client_request_id is longer than %d bytes", AP_JS_REQUEST_ID_MAX);
  if (in->compare && *in->compare) {
    char buf[256];
    if (strlen(in->compare) >= sizeof buf) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "compare is too long");
    snprintf(buf, sizeof buf, "%s", in->compare);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
      if (strcmp(t, "wanda") && strcmp(t, "owl") && strcmp(t, "magnitude"))
        return ap_rpc_error(call, AP_INVALID_ARGUMENT, "compare accepts wanda, owl and magnitude, got '%.40s'", t);
  }
  const char *agent = in->agent_addr && *in->agent_addr ? in->agent_addr : p->agent_addr;
  int agent_policy = !strcmp(policy, "rule") || !strcmp(policy, "llm");
  int fallback = in->agent_fallback && !strcmp(in->agent_fallback, "rule");
  if (agent_policy) {
    if (!agent || !*agent) {
      if (!fallback)
        return ap_rpc_error(call, AP_INVALID_ARGUMENT,
                            "policy %s needs an agent: set agent_addr, start pruner-svc with --agent, or use "
                            "agent_fallback=rule", policy);
    } else if (!fallback && (rc = check_agent(call, agent))) {
      return rc;
    }
  }

  /* The stored spec carries the resolved paths and the agent actually used. */
  Agentprune__V1__JobSpec spec = *in;
  spec.model_dir = model;
  spec.calib_path = calib;
  spec.eval_path = eval;
  spec.test_path = test;
  spec.out_dir = out;
  spec.policy = (char *)policy;
  spec.agent_addr = (char *)(agent ? agent : "");
  char id[64];
  make_job_id(id, sizeof id);
  Agentprune__V1__JobState state = AGENTPRUNE__V1__JOB_STATE__INIT;
  state.target_sparsity = in->target_sparsity;
  Agentprune__V1__Job job = AGENTPRUNE__V1__JOB__INIT;
  job.id = id;
  job.spec = &spec;
  job.state = &state;
  job.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_QUEUED;
  job.created_unix_ms = job.updated_unix_ms = now_ms();
  job.out_dir = out;

  Agentprune__V1__Job *existing = NULL;
  rc = ap_js_job_submit(p->store, &job, &existing);
  if (rc == AP_JS_E_FULL || rc == AP_JS_E_NOMEM)
    return ap_rpc_error(call, AP_RESOURCE_EXHAUSTED, "job store: %s", ap_js_strerror(rc));
  if (rc != 0) return ap_rpc_error(call, AP_INTERNAL, "job store: %s", ap_js_strerror(rc));
  if (existing) { /* a retried submit: the same job, never a second one */
    ap_rpc_reply(call, &existing->base);
    agentprune__v1__job__free_unpacked(existing, NULL);
    return AP_OK;
  }
  Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
  ev.job_id = id;
  ev.time_unix_ms = now_ms();
  ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_QUEUED;
  ev.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_QUEUED;
  ev.message = "queued";
  rc = ap_js_job_put(p->store, &job, &ev, &job.last_event_seq);
  if (rc != 0) return ap_rpc_error(call, AP_INTERNAL, "job store: %s", ap_js_strerror(rc));
  char err[256];
  rc = jobs_start(p, id, err, sizeof err);
  if (rc != AP_OK) return ap_rpc_error(call, rc, "%s", err);
  AP_INFO("job %s submitted: policy %s, target %.3f, model %s", id, policy, in->target_sparsity, model);
  ap_rpc_reply(call, &job.base);
  return AP_OK;
}

/* ---- GetJob, ListJobs, CancelJob ------------------------------------------ */

static int check_job_id(ap_rpc_call *call, const char *id) {
  if (!id || !*id) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "job_id is required");
  if (strlen(id) > AP_JS_ID_MAX) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "job_id is too long");
  for (const char *c = id; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
          *c == '_' || *c == '.'))
      return ap_rpc_error(call, AP_INVALID_ARGUMENT, "job_id has a character outside [A-Za-z0-9._-]");
  return AP_OK;
}

static int store_error(ap_rpc_call *call, int rc, const char *id) {
  if (rc == AP_JS_E_NOTFOUND) return ap_rpc_error(call, AP_NOT_FOUND, "no job %s", id);
  if (rc == AP_JS_E_CORRUPT) return ap_rpc_error(call, AP_DATA_LOSS, "job %s: %s", id, ap_js_strerror(rc));
  return ap_rpc_error(call, AP_INTERNAL, "job store: %s", ap_js_strerror(rc));
}

static int handle_get(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__GetJobRequest *in = (const Agentprune__V1__GetJobRequest *)request;
  int rc = check_job_id(call, in->job_id);
  if (rc) return rc;
  Agentprune__V1__Job *job = NULL;
  rc = ap_js_job_get(p->store, in->job_id, &job);
  if (rc) return store_error(call, rc, in->job_id);
  ap_rpc_reply(call, &job->base);
  agentprune__v1__job__free_unpacked(job, NULL);
  return AP_OK;
}

static int handle_list(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__ListJobsRequest *in = (const Agentprune__V1__ListJobsRequest *)request;
  uint32_t limit = in->limit ? in->limit : 100;
  if (limit > 10000) return ap_rpc_error(call, AP_INVALID_ARGUMENT, "limit must be at most 10000");
  Agentprune__V1__Job **jobs = NULL;
  size_t n = 0;
  int rc = ap_js_job_list(p->store, limit, 0, &jobs, &n);
  if (rc) return store_error(call, rc, "");
  Agentprune__V1__ListJobsResponse resp = AGENTPRUNE__V1__LIST_JOBS_RESPONSE__INIT;
  resp.n_jobs = n;
  resp.jobs = jobs;
  rc = ap_rpc_reply(call, &resp.base);
  ap_js_jobs_free(jobs, n);
  return AP_OK;
}

static int is_final(int status) {
  return status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED ||
         status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_FAILED ||
         status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
}

static int handle_cancel(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__CancelJobRequest *in = (const Agentprune__V1__CancelJobRequest *)request;
  int rc = check_job_id(call, in->job_id);
  if (rc) return rc;
  Agentprune__V1__Job *job = NULL;
  rc = ap_js_job_get(p->store, in->job_id, &job);
  if (rc) return store_error(call, rc, in->job_id);
  if (is_final(job->status)) {
    int st = job->status;
    agentprune__v1__job__free_unpacked(job, NULL);
    return ap_rpc_error(call, AP_FAILED_PRECONDITION, "job %s already finished (status %d)", in->job_id, st);
  }
  agentprune__v1__job__free_unpacked(job, NULL);
  if (!jobs_cancel(p, in->job_id)) {
    /* Not running in this process (queued behind others is handled by the
       runner list too): mark it cancelled directly. */
    rc = ap_js_job_get(p->store, in->job_id, &job);
    if (rc) return store_error(call, rc, in->job_id);
    char *saved_reason = job->stop_reason;
    if (!is_final(job->status)) {
      job->status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
      job->stop_reason = "cancelled";
      job->updated_unix_ms = now_ms();
      Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
      ev.job_id = job->id;
      ev.time_unix_ms = now_ms();
      ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_CANCELLED;
      ev.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
      ev.message = "cancelled before it ran";
      rc = ap_js_job_put(p->store, job, &ev, NULL);
    }
    job->stop_reason = saved_reason; /* free_unpacked must not free the literal */
    agentprune__v1__job__free_unpacked(job, NULL);
    if (rc) return store_error(call, rc, in->job_id);
  }
  rc = ap_js_job_get(p->store, in->job_id, &job);
  if (rc) return store_error(call, rc, in->job_id);
  ap_rpc_reply(call, &job->base);
  agentprune__v1__job__free_unpacked(job, NULL);
  return AP_OK;
}

/* ---- WatchJob ------------------------------------------------------------ */

static int handle_watch(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  pruner *p = user;
  const Agentprune__V1__WatchJobRequest *in = (const Agentprune__V1__WatchJobRequest *)request;
  int rc = check_job_id(call, in->job_id);
  if (rc) return rc;
  Agentprune__V1__Job *job = NULL;
  rc = ap_js_job_get(p->store, in->job_id, &job);
  if (rc) return store_error(call, rc, in->job_id);
  agentprune__v1__job__free_unpacked(job, NULL);
  uint64_t next = in->from_seq ? in->from_seq : 1;
  for (;;) {
    Agentprune__V1__JobEvent **evs = NULL;
    size_t n = 0;
    rc = ap_js_events_read(p->store, in->job_id, next, 256, &evs, &n);
    if (rc) return store_error(call, rc, in->job_id);
    int done = 0;
    for (size_t i = 0; i < n && !done; i++) {
      if (ap_rpc_stream_send(call, &evs[i]->base) < 0) {
        ap_js_events_free(evs, n);
        return AP_CANCELLED;
      }
      next = evs[i]->seq + 1;
      done = is_final(evs[i]->status);
    }
    ap_js_events_free(evs, n);
    if (done) return AP_OK;
    if (n == 256) continue;
    /* Live tail: wake on the next event, or every second to notice a
       cancelled call or a draining server. */
    while (ap_js_events_wait(p->store, in->job_id, next - 1, 1000) == AP_JS_E_TIMEOUT) {
      if (ap_rpc_call_cancelled(call)) return AP_CANCELLED;
      if (ap_rpc_server_stopping(p->srv))
        return ap_rpc_error(call, AP_UNAVAILABLE, "pruner-svc is shutting down; watch again from seq %llu",
                            (unsigned long long)next);
      /* A job finished with no final event (e.g. marked so by hand) must not hang watchers. */
      if (ap_js_job_get(p->store, in->job_id, &job) == 0) {
        int fin = is_final(job->status) && job->last_event_seq < next;
        agentprune__v1__job__free_unpacked(job, NULL);
        if (fin) return AP_OK;
      }
    }
  }
}

int pruner_register_service(pruner *p) {
  const ProtobufCServiceDescriptor *svc = &agentprune__v1__pruner__descriptor;
  int rc = 0;
  rc |= ap_rpc_server_add_method(p->srv, svc, "SubmitJob", AP_RPC_UNARY, handle_submit, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "GetJob", AP_RPC_UNARY, handle_get, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "ListJobs", AP_RPC_UNARY, handle_list, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "CancelJob", AP_RPC_UNARY, handle_cancel, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "WatchJob", AP_RPC_SERVER_STREAM, handle_watch, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "Evaluate", AP_RPC_UNARY, handle_evaluate, p);
  rc |= ap_rpc_server_add_method(p->srv, svc, "Profile", AP_RPC_UNARY, handle_profile, p);
  return rc ? -1 : 0;
}
