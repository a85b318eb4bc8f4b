/*
 * test_rpc - the RPC layer end to end: ap_rpc_client against the
 * rpc_test_server fixture (a separate process, path in argv[1]), plus an
 * in-process server for the interceptor and stop-from-a-thread paths.
 *
 * Timing bounds are loose (valgrind runs this too): each one compares
 * against a handler sleep several times longer than the bound's slack.
 */
#include "../test.h"
#include "fixture.h"

#include "agentprune/v1/pruner.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc_client.h"
#include "rpc_server.h"

#include <arpa/inet.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

static const char *g_server_exe;
/* Upper time bounds are multiplied by this (AP_TEST_SLOW; the valgrind run sets 5). */
static double g_slow = 1.0;

/* ---- helpers -------------------------------------------------------------- */

static int get_job(ap_rpc_client *c, const char *id, Agentprune__V1__Job **out, int64_t timeout_ms, ap_rpc_status *st) {
  Agentprune__V1__GetJobRequest req = AGENTPRUNE__V1__GET_JOB_REQUEST__INIT;
  req.job_id = (char *)id;
  ProtobufCMessage *resp = NULL;
  int code = ap_rpc_unary(c, "/agentprune.v1.Pruner/GetJob", &req.base, &agentprune__v1__job__descriptor, &resp,
                          timeout_ms, st);
  if (out) *out = (Agentprune__V1__Job *)resp;
  else if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return code;
}

static int evaluate(ap_rpc_client *c, uint32_t sleep_ms, int64_t timeout_ms, ap_rpc_status *st) {
  Agentprune__V1__EvalSpec spec = AGENTPRUNE__V1__EVAL_SPEC__INIT;
  spec.windows = sleep_ms;
  ProtobufCMessage *resp = NULL;
  int code = ap_rpc_unary(c, "/agentprune.v1.Pruner/Evaluate", &spec.base, &agentprune__v1__eval_result__descriptor,
                          &resp, timeout_ms, st);
  if (resp) {
    Agentprune__V1__EvalResult *r = (Agentprune__V1__EvalResult *)resp;
    if (r->windows != sleep_ms) code = -100; /* the reply must echo the request */
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return code;
}

/* Reads the fixture's counters through GetJob("stats"). */
static int stats(ap_rpc_client *c, uint64_t *failed_sends, uint64_t *streams_done, uint64_t *evaluating) {
  Agentprune__V1__Job *job = NULL;
  if (get_job(c, "stats", &job, 5000, NULL) != AP_OK) return -1;
  if (failed_sends) *failed_sends = job->last_event_seq;
  if (streams_done) *streams_done = job->created_unix_ms;
  if (evaluating) *evaluating = job->updated_unix_ms;
  protobuf_c_message_free_unpacked(&job->base, NULL);
  return 0;
}

static ap_rpc_stream *open_watch(ap_rpc_client *c, const char *job_id, uint64_t from_seq, int64_t timeout_ms,
                                 ap_rpc_status *st) {
  Agentprune__V1__WatchJobRequest req = AGENTPRUNE__V1__WATCH_JOB_REQUEST__INIT;
  req.job_id = (char *)job_id;
  req.from_seq = from_seq;
  return ap_rpc_stream_open(c, "/agentprune.v1.Pruner/WatchJob", &req.base, &agentprune__v1__job_event__descriptor,
                            timeout_ms, st);
}

/*
 * Sends raw bytes as the request of `method` with the C core directly
 * (what a broken or hostile peer would do). Returns the status code and
 * copies the details into msg.
 */
static int raw_call(const char *addr, const char *method, const void *bytes, size_t len, char *msg, size_t msglen) {
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(addr, creds, NULL);
  grpc_channel_credentials_release(creds);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(10000, GPR_TIMESPAN));
  grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, grpc_slice_from_static_string(method),
                                             NULL, deadline, NULL);
  grpc_slice payload = grpc_slice_from_copied_buffer(bytes, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&payload, 1);
  grpc_slice_unref(payload);
  grpc_metadata_array imd, tmd;
  grpc_metadata_array_init(&imd);
  grpc_metadata_array_init(&tmd);
  grpc_byte_buffer *recv = NULL;
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &imd;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &tmd;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  int code = -1;
  if (grpc_call_start_batch(call, ops, 6, &ops, NULL) == GRPC_CALL_OK) {
    grpc_completion_queue_pluck(cq, &ops, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    code = (int)status;
    snprintf(msg, msglen, "%.*s", (int)GRPC_SLICE_LENGTH(details), (const char *)GRPC_SLICE_START_PTR(details));
  }
  if (recv) grpc_byte_buffer_destroy(recv);
  grpc_byte_buffer_destroy(bb);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&imd);
  grpc_metadata_array_destroy(&tmd);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  grpc_channel_destroy(ch);
  return code;
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* ---- unary, errors, metadata, health -------------------------------------- */

static void test_unary_and_errors(const char *addr) {
  ap_rpc_client_opts opts = {.bearer_token = "tok-123"};
  ap_rpc_client *c = ap_rpc_client_new(addr, &opts);
  CHECK(c != NULL);
  ap_rpc_status st;
  Agentprune__V1__Job *job = NULL;

  CHECK_EQ_INT(get_job(c, "abc", &job, 5000, &st), AP_OK);
  CHECK_EQ_INT(st.code, AP_OK);
  if (job) {
    CHECK_STR(job->id, "abc");
    CHECK_EQ_INT(job->status, AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_RUNNING);
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }

  job = NULL;
  CHECK_EQ_INT(get_job(c, "missing", &job, 5000, &st), AP_NOT_FOUND);
  CHECK(job == NULL);
  CHECK_STR(st.message, "no job missing");

  /* Metadata reaches the handler. */
  job = NULL;
  CHECK_EQ_INT(get_job(c, "whoami", &job, 5000, &st), AP_OK);
  if (job) {
    CHECK_STR(job->error, "Bearer tok-123");
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }

  /* A second application error code, with the handler's message. */
  Agentprune__V1__JobSpec spec = AGENTPRUNE__V1__JOB_SPEC__INIT;
  spec.target_sparsity = 1.5;
  ProtobufCMessage *resp = NULL;
  CHECK_EQ_INT(ap_rpc_unary(c, "/agentprune.v1.Pruner/SubmitJob", &spec.base, &agentprune__v1__job__descriptor, &resp,
                            5000, &st),
               AP_INVALID_ARGUMENT);
  CHECKF(strstr(st.message, "outside (0, 1)") != NULL, "message \"%s\"", st.message);
  spec.target_sparsity = 0.5;
  spec.client_request_id = "r1";
  spec.model_dir = "/data/m";
  CHECK_EQ_INT(ap_rpc_unary(c, "/agentprune.v1.Pruner/SubmitJob", &spec.base, &agentprune__v1__job__descriptor, &resp,
                            5000, &st),
               AP_OK);
  if (resp) {
    Agentprune__V1__Job *j = (Agentprune__V1__Job *)resp;
    CHECK_STR(j->id, "job-r1");
    CHECK(j->spec && strcmp(j->spec->model_dir, "/data/m") == 0);
    CHECK_NEAR(j->spec ? j->spec->target_sparsity : 0, 0.5, 0);
    protobuf_c_message_free_unpacked(resp, NULL);
  }

  /* Unknown methods: unregistered in a known service, and a service we do not have. */
  Agentprune__V1__ListJobsRequest lj = AGENTPRUNE__V1__LIST_JOBS_REQUEST__INIT;
  resp = NULL;
  CHECK_EQ_INT(ap_rpc_unary(c, "/agentprune.v1.Pruner/ListJobs", &lj.base, &agentprune__v1__list_jobs_response__descriptor,
                            &resp, 5000, &st),
               AP_UNIMPLEMENTED);
  CHECK_EQ_INT(ap_rpc_unary(c, "/no.such.Service/Thing", &lj.base, &agentprune__v1__list_jobs_response__descriptor, &resp,
                            5000, &st),
               AP_UNIMPLEMENTED);
  CHECKF(strstr(st.message, "/no.such.Service/Thing") != NULL, "message \"%s\"", st.message);

  /* Health. */
  CHECK_EQ_INT(ap_rpc_health_check(c, "", 5000, &st), 1);
  CHECK_EQ_INT(ap_rpc_health_check(c, "agentprune.v1.Pruner", 5000, &st), 1);
  CHECK_EQ_INT(ap_rpc_health_check(c, "agentprune.v1.Agent", 5000, &st), 2);
  CHECK_EQ_INT(ap_rpc_health_check(c, "no.such.Service", 5000, &st), -1);
  CHECK_EQ_INT(st.code, AP_NOT_FOUND);
  Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ap_rpc_stream *w = ap_rpc_stream_open(c, "/grpc.health.v1.Health/Watch", &hreq.base,
                                        &grpc__health__v1__health_check_response__descriptor, 5000, &st);
  if (w) {
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(ap_rpc_stream_next(w, &m, &st), 0);
    ap_rpc_stream_free(w);
  }
  CHECK_EQ_INT(st.code, AP_UNIMPLEMENTED);

  /* Deadline on a slow handler: the client gives up on time. */
  double t0 = fx_now_ms();
  CHECK_EQ_INT(evaluate(c, 4000, 300, &st), AP_DEADLINE_EXCEEDED);
  double took = fx_now_ms() - t0;
  CHECKF(took >= 250 && took < 2500 * g_slow, "deadline call took %.0f ms", took);
  /* ... and the handler noticed and returned, freeing its thread. */
  uint64_t evaluating = 99;
  for (int i = 0; i < 200 && (stats(c, NULL, NULL, &evaluating) != 0 || evaluating != 0); i++) fx_sleep_ms(20);
  CHECK_EQ_INT(evaluating, 0);

  CHECK_EQ_INT(evaluate(c, 50, 5000, &st), AP_OK);
  ap_rpc_client_free(c);
}

/* ---- abuse: garbage bytes, oversized message ------------------------------ */

static void test_abuse(const char *addr) {
  char msg[512];
  /* A field-1 string claiming 16 bytes with 3 present, then a 10-byte varint. */
  const unsigned char garbage[] = {0x0a, 0x10, 'a', 'b', 'c'};
  int code = raw_call(addr, "/agentprune.v1.Pruner/GetJob", garbage, sizeof garbage, msg, sizeof msg);
  CHECKF(code == AP_INVALID_ARGUMENT || code == AP_INTERNAL, "garbage got %d (%s)", code, msg);
  CHECKF(strstr(msg, "GetJobRequest") != NULL, "message \"%s\"", msg);
  const unsigned char garbage2[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  code = raw_call(addr, "/agentprune.v1.Pruner/Evaluate", garbage2, sizeof garbage2, msg, sizeof msg);
  CHECKF(code == AP_INVALID_ARGUMENT || code == AP_INTERNAL, "garbage2 got %d (%s)", code, msg);
  /* Raw bytes to an unknown method. */
  code = raw_call(addr, "/x.Y/Z", garbage, sizeof garbage, msg, sizeof msg);
  CHECK_EQ_INT(code, AP_UNIMPLEMENTED);

  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  /* Oversized: 5 MiB against the fixture's 4 MiB receive limit. */
  size_t big = 5u << 20;
  char *blob = malloc(big + 1);
  memset(blob, 'x', big);
  blob[big] = '\0';
  Agentprune__V1__JobSpec spec = AGENTPRUNE__V1__JOB_SPEC__INIT;
  spec.model_dir = blob;
  spec.target_sparsity = 0.5;
  ProtobufCMessage *resp = NULL;
  ap_rpc_status st;
  CHECK_EQ_INT(ap_rpc_unary(c, "/agentprune.v1.Pruner/SubmitJob", &spec.base, &agentprune__v1__job__descriptor, &resp,
                            20000, &st),
               AP_RESOURCE_EXHAUSTED);
  free(blob);
  /* The server keeps serving after all of that. */
  CHECK_EQ_INT(get_job(c, "still-alive", NULL, 5000, &st), AP_OK);
  ap_rpc_client_free(c);
}

/* ---- streams -------------------------------------------------------------- */

static void *cancel_later(void *arg) {
  fx_sleep_ms(300);
  ap_rpc_stream_cancel(arg);
  return NULL;
}

static void test_streams(const char *addr) {
  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  ap_rpc_status st;
  ProtobufCMessage *m = NULL;

  /* A full stream: every message, in order, then OK; next after the end stays 0. */
  ap_rpc_stream *s = open_watch(c, "n=50,sleep=0", 7, 10000, &st);
  CHECK(s != NULL);
  int got = 0, in_order = 1, r;
  while (s && (r = ap_rpc_stream_next(s, &m, &st)) == 1) {
    Agentprune__V1__JobEvent *ev = (Agentprune__V1__JobEvent *)m;
    if (ev->seq != 7u + (uint64_t)got || ev->iteration != (uint32_t)got) in_order = 0;
    got++;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  CHECK_EQ_INT(got, 50);
  CHECK(in_order);
  CHECK_EQ_INT(st.code, AP_OK);
  if (s) {
    CHECK_EQ_INT(ap_rpc_stream_next(s, &m, &st), 0);
    CHECK_EQ_INT(st.code, AP_OK);
    ap_rpc_stream_free(s);
  }

  /* A handler error ends the stream with its code. */
  s = open_watch(c, "bad", 0, 5000, &st);
  if (s) {
    CHECK_EQ_INT(ap_rpc_stream_next(s, &m, &st), 0);
    CHECK_EQ_INT(st.code, AP_INVALID_ARGUMENT);
    ap_rpc_stream_free(s);
  }

  /* The client cancels midway: the handler's send fails and it returns. */
  uint64_t failed0 = 0, done0 = 0, failed1 = 0, done1 = 0;
  CHECK(stats(c, &failed0, &done0, NULL) == 0);
  s = open_watch(c, "n=100000,sleep=2", 0, 30000, &st);
  got = 0;
  while (s && got < 5 && ap_rpc_stream_next(s, &m, &st) == 1) {
    got++;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  CHECK_EQ_INT(got, 5);
  if (s) {
    ap_rpc_stream_cancel(s);
    /* Messages already buffered may still arrive; the stream must end CANCELLED. */
    while ((r = ap_rpc_stream_next(s, &m, &st)) == 1) protobuf_c_message_free_unpacked(m, NULL);
    CHECK_EQ_INT(r, 0);
    CHECK_EQ_INT(st.code, AP_CANCELLED);
    ap_rpc_stream_free(s);
  }
  for (int i = 0; i < 250; i++) {
    if (stats(c, &failed1, &done1, NULL) == 0 && failed1 > failed0 && done1 > done0) break;
    fx_sleep_ms(20);
  }
  CHECK_EQ_INT(failed1, failed0 + 1);
  CHECK(done1 > done0);

  /* Cancel from another thread while next() is blocked. */
  s = open_watch(c, "n=3,sleep=8000", 0, 30000, &st);
  CHECK(s != NULL);
  if (s) {
    CHECK_EQ_INT(ap_rpc_stream_next(s, &m, &st), 1);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    pthread_t th;
    double t0 = fx_now_ms();
    pthread_create(&th, NULL, cancel_later, s);
    CHECK_EQ_INT(ap_rpc_stream_next(s, &m, &st), 0);
    double took = fx_now_ms() - t0;
    CHECK_EQ_INT(st.code, AP_CANCELLED);
    CHECKF(took >= 250 && took < 4000 * g_slow, "cancelled next() returned after %.0f ms", took);
    pthread_join(th, NULL);
    ap_rpc_stream_free(s);
  }
  ap_rpc_client_free(c);
}

/* ---- concurrency ---------------------------------------------------------- */

typedef struct {
  ap_rpc_client *c;
  int sleep_ms;
  int code;
  atomic_int *done;
} eval_job;

static void *eval_thread(void *arg) {
  eval_job *j = arg;
  ap_rpc_status st;
  j->code = evaluate(j->c, (uint32_t)j->sleep_ms, 60000, &st);
  if (j->done) atomic_fetch_add(j->done, 1);
  return NULL;
}

/* Handlers blocking for seconds do not stall other calls. */
static void test_pool_not_stalled(const char *addr) {
  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  atomic_int long_done = 0;
  eval_job jobs[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    jobs[i] = (eval_job){c, 2500, -1, &long_done};
    pthread_create(&th[i], NULL, eval_thread, &jobs[i]);
  }
  uint64_t evaluating = 0;
  for (int i = 0; i < 250 && (stats(c, NULL, NULL, &evaluating) != 0 || evaluating < 3); i++) fx_sleep_ms(20);
  CHECK_EQ_INT(evaluating, 3);
  int ok = 0;
  ap_rpc_status st;
  for (int i = 0; i < 30; i++) ok += get_job(c, "quick", NULL, 5000, &st) == AP_OK;
  ok += ap_rpc_health_check(c, "", 5000, &st) == 1;
  CHECK_EQ_INT(ok, 31);
  /* All the quick calls were served while the long handlers still ran. */
  CHECK_EQ_INT(atomic_load(&long_done), 0);
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(jobs[i].code, AP_OK);
  }
  ap_rpc_client_free(c);
}

typedef struct {
  ap_rpc_client *c;
  int index, messages, ok;
} stream_job;

static void *stream_thread(void *arg) {
  stream_job *j = arg;
  ap_rpc_status st;
  char id[64];
  snprintf(id, sizeof id, "n=%d,sleep=1", j->messages);
  ap_rpc_stream *s = open_watch(j->c, id, (uint64_t)j->index * 1000, 120000, &st);
  if (!s) return NULL;
  ProtobufCMessage *m;
  int got = 0, in_order = 1;
  while (ap_rpc_stream_next(s, &m, &st) == 1) {
    Agentprune__V1__JobEvent *ev = (Agentprune__V1__JobEvent *)m;
    if (ev->seq != (uint64_t)j->index * 1000 + (uint64_t)got) in_order = 0;
    got++;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  j->ok = st.code == AP_OK && got == j->messages && in_order;
  if (!j->ok) fprintf(stderr, "stream %d: %d/%d messages, status %d %s\n", j->index, got, j->messages, st.code, st.message);
  ap_rpc_stream_free(s);
  return NULL;
}

/* 200 concurrent streaming clients (half share one client, half have their own). */
static void test_many_streams(const char *addr) {
  enum { N = 200, MESSAGES = 20 };
  ap_rpc_client *shared = ap_rpc_client_new(addr, NULL);
  ap_rpc_client *own[N / 2];
  stream_job jobs[N];
  pthread_t th[N];
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int started = 0;
  for (int i = 0; i < N; i++) {
    ap_rpc_client *c = shared;
    if (i % 2) c = own[i / 2] = ap_rpc_client_new(addr, NULL);
    jobs[i] = (stream_job){c, i, MESSAGES, 0};
    started += pthread_create(&th[i], &attr, stream_thread, &jobs[i]) == 0;
  }
  pthread_attr_destroy(&attr);
  CHECK_EQ_INT(started, N);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(th[i], NULL);
    ok += jobs[i].ok;
  }
  CHECK_EQ_INT(ok, N);
  for (int i = 0; i < N / 2; i++) ap_rpc_client_free(own[i]);
  ap_rpc_client_free(shared);
}

/* ---- retry, queue limit, shutdown ----------------------------------------- */

typedef struct {
  fixture fx;
  int port, delay_ms, rc;
} late_start;

static void *start_late(void *arg) {
  late_start *ls = arg;
  fx_sleep_ms(ls->delay_ms);
  char listen[64];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", ls->port);
  const char *args[] = {"--listen", listen, NULL};
  double t0 = fx_now_ms();
  ls->rc = fixture_start(&ls->fx, g_server_exe, args);
  if (getenv("AP_RPC_DEBUG")) fprintf(stderr, "late fixture up after %.0f ms\n", fx_now_ms() - t0);
  return NULL;
}

static void test_retry_unavailable(void) {
  int port = free_port();
  CHECK(port > 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  ap_rpc_status st;
  /* Without retries, nobody listening is UNAVAILABLE at once. */
  ap_rpc_client *once = ap_rpc_client_new(addr, NULL);
  double t0 = fx_now_ms();
  CHECK_EQ_INT(get_job(once, "x", NULL, 5000, &st), AP_UNAVAILABLE);
  CHECKF(fx_now_ms() - t0 < 4000 * g_slow, "took %.0f ms", fx_now_ms() - t0);
  ap_rpc_client_free(once);

  late_start ls = {.port = port, .delay_ms = 700, .rc = -1};
  pthread_t th;
  pthread_create(&th, NULL, start_late, &ls);
  ap_rpc_client_opts opts = {.max_attempts = 200, .initial_backoff_ms = 50, .max_backoff_ms = 250};
  ap_rpc_client *c = ap_rpc_client_new(addr, &opts);
  t0 = fx_now_ms();
  Agentprune__V1__Job *job = NULL;
  int code = get_job(c, "late", &job, 60000, &st);
  double took = fx_now_ms() - t0;
  pthread_join(th, NULL);
  CHECK_EQ_INT(ls.rc, 0);
  CHECKF(code == AP_OK, "retry ended with %d %s after %.0f ms", code, st.message, took);
  CHECKF(took >= 600, "succeeded after %.0f ms, before the server started", took);
  fprintf(stderr, "    retry: first OK after %.0f ms\n", took);
  if (job) {
    CHECK_STR(job->id, "late");
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  /* Retries stop at the deadline when the server never comes. */
  ap_rpc_client_free(c);
  t0 = fx_now_ms();
  if (ls.rc == 0) CHECK(fixture_stop(&ls.fx, 30000));
  fprintf(stderr, "    retry: fixture stopped in %.0f ms\n", fx_now_ms() - t0);

  int dead = free_port();
  snprintf(addr, sizeof addr, "127.0.0.1:%d", dead);
  c = ap_rpc_client_new(addr, &opts);
  t0 = fx_now_ms();
  CHECK_EQ_INT(get_job(c, "x", NULL, 800, &st), AP_UNAVAILABLE);
  took = fx_now_ms() - t0;
  CHECKF(took >= 400 && took < 3000 * g_slow, "gave up after %.0f ms", took);
  ap_rpc_client_free(c);
}

/* A full work queue answers RESOURCE_EXHAUSTED at once. */
static void test_queue_full(void) {
  fixture fx;
  const char *args[] = {"--threads", "1", "--queue", "1", NULL};
  if (fixture_start(&fx, g_server_exe, args) != 0) {
    CHECK(0);
    return;
  }
  ap_rpc_client *c = ap_rpc_client_new(fx.addr, NULL);
  int hold_ms = (int)(3000 * g_slow);
  eval_job running = {c, hold_ms, -1, NULL}, queued = {c, 100, -1, NULL};
  pthread_t t1, t2;
  pthread_create(&t1, NULL, eval_thread, &running);
  /* Health is answered on the CQ thread, so it works while the only handler thread is busy. */
  ap_rpc_status st;
  int busy = 0;
  for (int i = 0; i < 250 && (busy = ap_rpc_health_check(c, "fixture.evaluating", 5000, &st)) != 1; i++) fx_sleep_ms(20);
  CHECK_EQ_INT(busy, 1);
  CHECK_EQ_INT(ap_rpc_health_check(c, "", 5000, &st), 1);
  pthread_create(&t2, NULL, eval_thread, &queued);
  fx_sleep_ms((int)(400 * g_slow)); /* the second call takes the only queue slot */
  double t0 = fx_now_ms();
  CHECK_EQ_INT(get_job(c, "overflow", NULL, 20000, &st), AP_RESOURCE_EXHAUSTED);
  double took = fx_now_ms() - t0;
  /* Rejected at once, not after waiting for the busy handler. */
  CHECKF(took < hold_ms / 3.0, "rejection took %.0f ms", took);
  CHECKF(strstr(st.message, "busy") != NULL, "message \"%s\"", st.message);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  CHECK_EQ_INT(running.code, AP_OK);
  CHECK_EQ_INT(queued.code, AP_OK);
  CHECK_EQ_INT(get_job(c, "after", NULL, 5000, &st), AP_OK);
  ap_rpc_client_free(c);
  CHECK(fixture_stop(&fx, 30000));
}

typedef struct {
  ap_rpc_client *c;
  int code;
  atomic_int got;
} watch_job;

static void *watch_thread(void *arg) {
  watch_job *w = arg;
  ap_rpc_status st;
  ap_rpc_stream *s = open_watch(w->c, "n=100000,sleep=5", 0, 60000, &st);
  ProtobufCMessage *m;
  if (s) {
    while (ap_rpc_stream_next(s, &m, &st) == 1) {
      atomic_fetch_add(&w->got, 1);
      protobuf_c_message_free_unpacked(m, NULL);
    }
    ap_rpc_stream_free(s);
  }
  w->code = st.code;
  return NULL;
}

/* SIGTERM with calls in flight: unary calls finish, streams end UNAVAILABLE, exit 0 within the grace. */
static void test_sigterm_drain(void) {
  fixture fx;
  const char *args[] = {"--grace-ms", "4000", NULL};
  if (fixture_start(&fx, g_server_exe, args) != 0) {
    CHECK(0);
    return;
  }
  ap_rpc_client *c = ap_rpc_client_new(fx.addr, NULL);
  eval_job jobs[4];
  pthread_t th[4], wt;
  for (int i = 0; i < 4; i++) {
    jobs[i] = (eval_job){c, 1500, -1, NULL};
    pthread_create(&th[i], NULL, eval_thread, &jobs[i]);
  }
  watch_job w = {c, -1, 0};
  pthread_create(&wt, NULL, watch_thread, &w);
  uint64_t evaluating = 0;
  for (int i = 0; i < 250 && (stats(c, NULL, NULL, &evaluating) != 0 || evaluating < 4 || atomic_load(&w.got) == 0); i++)
    fx_sleep_ms(20);
  CHECK_EQ_INT(evaluating, 4);
  double t0 = fx_now_ms();
  kill(fx.pid, SIGTERM);
  int st = fixture_wait(&fx, 15000);
  double took = fx_now_ms() - t0;
  CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x", st);
  CHECKF(took < 4000 + 2000 * g_slow, "exit took %.0f ms", took);
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHECKF(jobs[i].code == AP_OK, "in-flight call %d ended %d", i, jobs[i].code);
  }
  pthread_join(wt, NULL);
  CHECK(atomic_load(&w.got) > 0);
  CHECKF(w.code == AP_UNAVAILABLE, "stream ended %d", w.code);
  ap_rpc_status s2;
  CHECK_EQ_INT(get_job(c, "after", NULL, 3000, &s2), AP_UNAVAILABLE);
  ap_rpc_client_free(c);
}

/* A handler longer than the grace is cancelled; the process still exits 0 soon after. */
static void test_sigterm_grace_expires(void) {
  fixture fx;
  const char *args[] = {"--grace-ms", "500", NULL};
  if (fixture_start(&fx, g_server_exe, args) != 0) {
    CHECK(0);
    return;
  }
  ap_rpc_client *c = ap_rpc_client_new(fx.addr, NULL);
  eval_job job = {c, 30000, -1, NULL};
  pthread_t th;
  pthread_create(&th, NULL, eval_thread, &job);
  uint64_t evaluating = 0;
  for (int i = 0; i < 250 && (stats(c, NULL, NULL, &evaluating) != 0 || evaluating < 1); i++) fx_sleep_ms(20);
  CHECK_EQ_INT(evaluating, 1);
  double t0 = fx_now_ms();
  kill(fx.pid, SIGTERM);
  int st = fixture_wait(&fx, 15000);
  double took = fx_now_ms() - t0;
  CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x", st);
  CHECKF(took >= 450 && took < 500 + 3000 * g_slow, "exit took %.0f ms", took);
  pthread_join(th, NULL);
  CHECKF(job.code != AP_OK && job.code != -1, "cut-off call ended %d", job.code);
  ap_rpc_client_free(c);
}

/* ---- in-process server: interceptor, stop from a thread, registration errors */

static int require_token(ap_rpc_call *call, const char *path, void *user) {
  const char *auth = ap_rpc_call_metadata(call, "authorization");
  if (!auth || strcmp(auth, (const char *)user) != 0)
    return ap_rpc_error(call, AP_UNAUTHENTICATED, "%s needs a valid bearer token", path);
  return AP_OK;
}

static int echo_job(ap_rpc_call *call, const ProtobufCMessage *request, void *user) {
  const Agentprune__V1__GetJobRequest *req = (const Agentprune__V1__GetJobRequest *)request;
  Agentprune__V1__Job job = AGENTPRUNE__V1__JOB__INIT;
  job.id = req->job_id;
  job.out_dir = (char *)ap_rpc_call_method(call);
  int64_t left = ap_rpc_call_deadline_ms(call);
  job.last_event_seq = left == INT64_MAX ? 0 : (uint64_t)(left > 0 ? left : 1);
  if (ap_rpc_reply(call, &job.base) != 0) return AP_INTERNAL;
  return ap_rpc_reply(call, &job.base) == -1 ? AP_OK : AP_INTERNAL; /* a second reply must be refused */
}

static void *run_server(void *arg) {
  return (void *)(intptr_t)ap_rpc_server_run(arg);
}

static void test_inprocess(void) {
  ap_rpc_server_config cfg = {.listen_addr = "127.0.0.1:0", .handler_threads = 2, .name = "inproc"};
  ap_rpc_server *srv = ap_rpc_server_new(&cfg);
  CHECK(srv != NULL);
  const ProtobufCServiceDescriptor *pruner = &agentprune__v1__pruner__descriptor;
  CHECK_EQ_INT(ap_rpc_server_add_method(srv, pruner, "GetJob", AP_RPC_UNARY, echo_job, NULL), 0);
  CHECK_EQ_INT(ap_rpc_server_add_method(srv, pruner, "GetJob", AP_RPC_UNARY, echo_job, NULL), -1);
  CHECK_EQ_INT(ap_rpc_server_add_method(srv, pruner, "NoSuchMethod", AP_RPC_UNARY, echo_job, NULL), -1);
  ap_rpc_server_set_interceptor(srv, require_token, (void *)"Bearer s3cret", 0);
  int port = ap_rpc_server_start(srv);
  CHECK(port > 0);
  CHECK_EQ_INT(ap_rpc_server_add_method(srv, pruner, "Evaluate", AP_RPC_UNARY, echo_job, NULL), -1);
  pthread_t th;
  pthread_create(&th, NULL, run_server, srv);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);

  ap_rpc_client *anon = ap_rpc_client_new(addr, NULL);
  ap_rpc_client_opts good = {.bearer_token = "s3cret"}, bad = {.bearer_token = "guess"};
  ap_rpc_client *authed = ap_rpc_client_new(addr, &good);
  ap_rpc_client *wrong = ap_rpc_client_new(addr, &bad);
  ap_rpc_status st;
  Agentprune__V1__Job *job = NULL;
  CHECK_EQ_INT(get_job(anon, "a", NULL, 5000, &st), AP_UNAUTHENTICATED);
  CHECKF(strstr(st.message, "/agentprune.v1.Pruner/GetJob needs") != NULL, "message \"%s\"", st.message);
  CHECK_EQ_INT(get_job(wrong, "a", NULL, 5000, &st), AP_UNAUTHENTICATED);
  CHECK_EQ_INT(get_job(authed, "a", &job, 5000, &st), AP_OK);
  if (job) {
    CHECK_STR(job->id, "a");
    CHECK_STR(job->out_dir, "/agentprune.v1.Pruner/GetJob");
    /* The server saw the client's 5 s deadline (converted from the monotonic clock). */
    /* grpc-timeout is rounded up on the wire, hence the slack above 5000. */
    CHECKF(job->last_event_seq > 3000 && job->last_event_seq <= 5200, "deadline %llu ms",
           (unsigned long long)job->last_event_seq);
    protobuf_c_message_free_unpacked(&job->base, NULL);
  }
  /* Health is outside the interceptor unless asked for. */
  CHECK_EQ_INT(ap_rpc_health_check(anon, "", 5000, &st), 1);
  ap_rpc_server_set_health(srv, "", 2);
  CHECK_EQ_INT(ap_rpc_health_check(anon, "", 5000, &st), 2);
  CHECK_EQ_INT(ap_rpc_server_stopping(srv), 0);

  ap_rpc_server_stop(srv);
  void *ret = NULL;
  pthread_join(th, &ret);
  CHECK_EQ_INT((intptr_t)ret, 0);
  CHECK_EQ_INT(ap_rpc_server_stopping(srv), 1);
  CHECK_EQ_INT(get_job(authed, "after-stop", NULL, 2000, &st), AP_UNAVAILABLE);
  ap_rpc_client_free(anon);
  ap_rpc_client_free(authed);
  ap_rpc_client_free(wrong);
  ap_rpc_server_free(srv);

  /* Binding a bad address fails cleanly. */
  ap_rpc_server_config badcfg = {.listen_addr = "256.1.1.1:1", .name = "badbind"};
  srv = ap_rpc_server_new(&badcfg);
  CHECK_EQ_INT(ap_rpc_server_start(srv), -1);
  ap_rpc_server_free(srv);

  CHECK_STR(ap_status_name(AP_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  CHECK_STR(ap_status_name(99), "UNKNOWN_STATUS_CODE");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PATH/rpc_test_server [test-name...]\n", argv[0]);
    return 2;
  }
  g_server_exe = argv[1];
  const char *slow = getenv("AP_TEST_SLOW");
  if (slow && atof(slow) >= 1) g_slow = atof(slow);
  signal(SIGPIPE, SIG_IGN);
  grpc_init(); /* raw_call uses the core directly */
  fixture fx;
  if (fixture_start(&fx, g_server_exe, (const char *const[]){"--threads", "16", NULL}) != 0) {
    CHECK(0);
    TEST_DONE();
  }
  struct {
    const char *name;
    void (*fn)(const char *);
  } with_fixture[] = {
      {"unary", test_unary_and_errors}, {"abuse", test_abuse}, {"streams", test_streams},
      {"pool", test_pool_not_stalled},  {"many_streams", test_many_streams},
  };
  struct {
    const char *name;
    void (*fn)(void);
  } standalone[] = {
      {"retry", test_retry_unavailable},       {"queue_full", test_queue_full},
      {"sigterm_drain", test_sigterm_drain},   {"sigterm_grace", test_sigterm_grace_expires},
      {"inprocess", test_inprocess},
  };
  for (size_t i = 0; i < sizeof with_fixture / sizeof with_fixture[0]; i++) {
    int wanted = argc == 2;
    for (int a = 2; a < argc; a++) wanted |= strcmp(argv[a], with_fixture[i].name) == 0;
    if (!wanted) continue;
    double t0 = fx_now_ms();
    with_fixture[i].fn(fx.addr);
    fprintf(stderr, "  %-14s %6.0f ms\n", with_fixture[i].name, fx_now_ms() - t0);
  }
  /* The shared fixture must also have stayed leak- and error-free (valgrind's exit code). */
  CHECK(fixture_stop(&fx, 60000));
  for (size_t i = 0; i < sizeof standalone / sizeof standalone[0]; i++) {
    int wanted = argc == 2;
    for (int a = 2; a < argc; a++) wanted |= strcmp(argv[a], standalone[i].name) == 0;
    if (!wanted) continue;
    double t0 = fx_now_ms();
    standalone[i].fn();
    fprintf(stderr, "  %-14s %6.0f ms\n", standalone[i].name, fx_now_ms() - t0);
  }
  grpc_shutdown();
  TEST_DONE();
}
