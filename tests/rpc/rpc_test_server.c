/*
 * rpc_test_server - a fixture server for the RPC tests: the real generated
 * agentprune.v1.Pruner service with fake handlers. Prints "PORT <n>" on
 * stdout once it is serving, and exits 0 after a graceful shutdown
 * (SIGTERM/SIGINT).
 *
 * Handlers:
 *  GetJob     job_id "missing" -> NOT_FOUND; "whoami" -> Job.error = the
 *             authorization metadata, Job.out_dir = x-request-id metadata;
 *             "stats" -> Job.last_event_seq = stream sends that failed,
 *             Job.created_unix_ms = streaming handlers that returned,
 *             Job.updated_unix_ms = Evaluate handlers running now;
 *             else Job.id = job_id, Job.status = RUNNING.
 *  SubmitJob  target_sparsity outside (0, 1) -> INVALID_ARGUMENT; else a Job
 *             with id "job-<client_request_id>" and the spec echoed.
 *  WatchJob   job_id "n=<count>,sleep=<ms>": streams count JobEvents with
 *             seq = from_seq + i, sleeping ms between them; stops when a
 *             send fails.
 *  Evaluate   sleeps EvalSpec.windows milliseconds (polling cancellation),
 *             then returns EvalResult{windows, seconds slept}.
 *  Health     "" and agentprune.v1.Pruner SERVING, agentprune.v1.Agent
 *             NOT_SERVING; "fixture.evaluating" SERVING while an Evaluate
 *             handler runs (health is answered without a handler thread,
 *             so tests can watch a saturated pool through it).
 */
#include "agentprune/v1/pruner.pb-c.h"
#include "config.h"
#include "log.h"
#include "rpc_server.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int g_failed_sends;
static atomic_int g_streams_done;
static atomic_int g_evaluating;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int get_job(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  const Agentprune__V1__GetJobRequest *req = (const Agentprune__V1__GetJobRequest *)request;
  Agentprune__V1__Job job = AGENTPRUNE__V1__JOB__INIT;
  if (strcmp(req->job_id, "missing") == 0) return ap_rpc_error(call, AP_NOT_FOUND, "no job %s", req->job_id);
  if (strcmp(req->job_id, "whoami") == 0) {
    const char *auth = ap_rpc_call_metadata(call, "authorization");
    const char *rid = ap_rpc_call_metadata(call, "x-request-id");
    job.error = (char *)(auth ? auth : "");
    job.out_dir = (char *)(rid ? rid : "");
  } else if (strcmp(req->job_id, "stats") == 0) {
    job.last_event_seq = (uint64_t)atomic_load(&g_failed_sends);
    job.created_unix_ms = (uint64_t)atomic_load(&g_streams_done);
    job.updated_unix_ms = (uint64_t)atomic_load(&g_evaluating);
  }
  job.id = req->job_id;
  job.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING;
  return ap_rpc_reply(call, &job.base) == 0 ? AP_OK : AP_INTERNAL;
}

static int submit_job(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  const Agentprune__V1__JobSpec *spec = (const Agentprune__V1__JobSpec *)request;
  if (!(spec->target_sparsity > 0 && spec->target_sparsity < 1))
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "target_sparsity %g is outside (0, 1)", spec->target_sparsity);
  char id[300];
  snprintf(id, sizeof id, "job-%s", spec->client_request_id);
  Agentprune__V1__Job job = AGENTPRUNE__V1__JOB__INIT;
  job.id = id;
  job.spec = (Agentprune__V1__JobSpec *)spec;
  job.status = AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_QUEUED;
  return ap_rpc_reply(call, &job.base) == 0 ? AP_OK : AP_INTERNAL;
}

static int watch_job(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  const Agentprune__V1__WatchJobRequest *req = (const Agentprune__V1__WatchJobRequest *)request;
  int count = 0, pause = 0;
  if (sscanf(req->job_id, "n=%d,sleep=%d", &count, &pause) != 2 || count < 0 || pause < 0)
    return ap_rpc_error(call, AP_INVALID_ARGUMENT, "job_id must read n=<count>,sleep=<ms>, not \"%s\"", req->job_id);
  int rc = AP_OK;
  for (int i = 0; i < count; i++) {
    Agentprune__V1__JobEvent ev = AGENTPRUNE__V1__JOB_EVENT__INIT;
    char msg[64];
    snprintf(msg, sizeof msg, "event %d", i);
    ev.job_id = req->job_id;
    ev.seq = req->from_seq + (uint64_t)i;
    ev.type = AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ITERATION_STARTED;
    ev.iteration = (uint32_t)i;
    ev.message = msg;
    if (ap_rpc_stream_send(call, &ev.base) != 0) {
      atomic_fetch_add(&g_failed_sends, 1);
      rc = ap_rpc_error(call, AP_CANCELLED, "stream ended by the client");
      break;
    }
    if (pause) sleep_ms(pause);
  }
  atomic_fetch_add(&g_streams_done, 1);
  return rc;
}

static int evaluate(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  const Agentprune__V1__EvalSpec *spec = (const Agentprune__V1__EvalSpec *)request;
  double t0 = now_s();
  ap_rpc_server *srv = ap_rpc_call_server(call);
  if (atomic_fetch_add(&g_evaluating, 1) == 0) ap_rpc_server_set_health(srv, "fixture.evaluating", 1);
  /* Long compute that notices a client that went away. */
  while ((now_s() - t0) * 1000.0 < spec->windows) {
    if (ap_rpc_call_cancelled(call)) {
      if (atomic_fetch_sub(&g_evaluating, 1) == 1) ap_rpc_server_set_health(srv, "fixture.evaluating", 2);
      return ap_rpc_error(call, AP_CANCELLED, "client went away");
    }
    sleep_ms(5);
  }
  if (atomic_fetch_sub(&g_evaluating, 1) == 1) ap_rpc_server_set_health(srv, "fixture.evaluating", 2);
  Agentprune__V1__EvalResult res = AGENTPRUNE__V1__EVAL_RESULT__INIT;
  res.windows = spec->windows;
  res.seconds = now_s() - t0;
  res.device = (char *)"fake";
  return ap_rpc_reply(call, &res.base) == 0 ? AP_OK : AP_INTERNAL;
}

int main(int argc, char **argv) {
  ap_config_entry cfg[] = {
      {"--listen", "AP_TEST_LISTEN", "127.0.0.1:0", "address to serve on"},
      {"--threads", NULL, "8", "handler threads"},
      {"--queue", NULL, "1024", "calls waiting for a handler before RESOURCE_EXHAUSTED"},
      {"--max-msg", NULL, "4194304", "max received message in bytes"},
      {"--grace-ms", NULL, "5000", "drain time on shutdown"},
      {"--log", NULL, "warn", "log level"},
  };
  size_t n = sizeof cfg / sizeof cfg[0];
  char err[256];
  int rc = ap_config_parse(cfg, n, argc, argv, err, sizeof err);
  if (rc == AP_CONFIG_HELP) {
    ap_config_usage(stdout, argv[0], "Fixture gRPC server for the RPC tests.", cfg, n);
    return 0;
  }
  int64_t threads, queue, max_msg, grace;
  if (rc != 0 || ap_config_get_int(cfg, n, "--threads", 1, 1024, &threads, err, sizeof err) != 0 ||
      ap_config_get_int(cfg, n, "--queue", 1, 1 << 20, &queue, err, sizeof err) != 0 ||
      ap_config_get_int(cfg, n, "--max-msg", 1, 1 << 30, &max_msg, err, sizeof err) != 0 ||
      ap_config_get_int(cfg, n, "--grace-ms", 1, 600000, &grace, err, sizeof err) != 0) {
    fprintf(stderr, "rpc_test_server: %s\n", err);
    return 2;
  }
  int level = ap_log_level_parse(ap_config_get(cfg, n, "--log"));
  ap_log_init("rpc_test_server", level < 0 ? AP_LOG_WARN : (ap_log_level)level, 0);

  ap_rpc_server_config sc = {.listen_addr = ap_config_get(cfg, n, "--listen"),
                             .handler_threads = (int)threads,
                             .max_message_bytes = (int)max_msg,
                             .grace_ms = (int)grace,
                             .name = "rpc_test_server"};
  ap_rpc_server *srv = ap_rpc_server_new(&sc);
  if (!srv) return 1;
  const ProtobufCServiceDescriptor *pruner = &agentprune__v1__pruner__descriptor;
  if (ap_rpc_server_set_queue_limit(srv, (int)queue) != 0 ||
      ap_rpc_server_add_method(srv, pruner, "GetJob", AP_RPC_UNARY, get_job, NULL) != 0 ||
      ap_rpc_server_add_method(srv, pruner, "SubmitJob", AP_RPC_UNARY, submit_job, NULL) != 0 ||
      ap_rpc_server_add_method(srv, pruner, "WatchJob", AP_RPC_SERVER_STREAM, watch_job, NULL) != 0 ||
      ap_rpc_server_add_method(srv, pruner, "Evaluate", AP_RPC_UNARY, evaluate, NULL) != 0) {
    ap_rpc_server_free(srv);
    return 1;
  }
  ap_rpc_server_set_health(srv, "agentprune.v1.Pruner", 1);
  ap_rpc_server_set_health(srv, "agentprune.v1.Agent", 2);
  ap_rpc_server_set_health(srv, "fixture.evaluating", 2);
  ap_rpc_install_signal_handlers();
  int port = ap_rpc_server_start(srv);
  if (port <= 0) {
    fprintf(stderr, "rpc_test_server: cannot listen on %s\n", sc.listen_addr);
    ap_rpc_server_free(srv);
    return 1;
  }
  printf("PORT %d\n", port);
  fflush(stdout);
  rc = ap_rpc_server_run(srv);
  ap_rpc_server_free(srv);
  return rc == 0 ? 0 : 1;
}
