/*
 * rpc_server.c - the gRPC server framework declared in rpc_server.h.
 *
 * Threads:
 *  - the CQ thread: the only caller of grpc_completion_queue_next. It turns
 *    new-call events into ap_rpc_call objects, re-arms the request, starts
 *    RECV_CLOSE_ON_SERVER at once (so cancellation is seen while the handler
 *    runs), answers Health/Check and unknown methods inline, and hands
 *    everything else to the work queue. It never blocks on anything but the
 *    queue's mutex, so one slow handler cannot stall the server.
 *  - handler threads: pop calls, unpack, run the interceptor and handler,
 *    then start the final status batch. Stream sends block on a per-call
 *    condition variable until the CQ thread reports the batch completed.
 *  - the thread in ap_rpc_server_run: waits for a stop request or signal and
 *    runs the shutdown sequence.
 *
 * Call lifetime: an ap_rpc_call is reference counted under its mutex. One
 * reference belongs to whoever currently owns the call (pending request ->
 * CQ thread -> queue -> handler thread), one to each batch in flight whose
 * completion the CQ thread must see (RECV_CLOSE_ON_SERVER, final status).
 * Stream sends need no reference: the sending thread holds the owner's and
 * waits for the completion. The last unref releases the grpc_call and every
 * buffer, so nothing outlives the server's shutdown notification.
 */
#include "rpc_server.h"

#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "rpc_internal.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_HANDLER_THREADS 8
#define DEFAULT_MAX_MESSAGE (4 * 1024 * 1024)
#define DEFAULT_GRACE_MS 10000
#define DEFAULT_QUEUE_LIMIT 1024
/* Outstanding grpc_server_request_* per method; the CQ thread re-arms on
 * every arrival, so a small number only smooths bursts. */
#define REQUESTS_PER_METHOD 2
#define POLL_MS 100

static const char *const status_names[] = {
    "OK",        "CANCELLED",         "UNKNOWN",         "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",      "UNIMPLEMENTED",   "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

const char *ap_status_name(int code) {
  if (code < 0 || code > AP_UNAUTHENTICATED) return "UNKNOWN_STATUS_CODE";
  return status_names[code];
}

static volatile sig_atomic_t g_signalled = 0;

static void on_signal(int sig) {
  (void)sig;
  g_signalled = 1;
}

void ap_rpc_install_signal_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

/* ---- types ---------------------------------------------------------------- */

enum tag_kind { TAG_REQUEST, TAG_CLOSE, TAG_SEND, TAG_STATUS, TAG_SHUTDOWN };

typedef struct {
  int kind;
  ap_rpc_call *call;
} cq_tag;

typedef struct {
  char *path; /* "/agentprune.v1.Pruner/GetJob" */
  const ProtobufCMessageDescriptor *input;
  ap_rpc_kind kind;
  ap_rpc_handler fn;
  void *user;
  void *handle; /* grpc_server_register_method */
  int is_health;
} method;

typedef struct {
  char *service;
  int status;
} health_entry;

struct ap_rpc_server {
  char *name, *listen_addr;
  int handler_threads, max_message_bytes, grace_ms, queue_limit;

  method *methods;
  size_t n_methods;
  ap_rpc_interceptor icpt;
  void *icpt_user;
  int icpt_health;

  pthread_mutex_t health_mu;
  health_entry *health;
  size_t n_health;

  grpc_server *server;
  grpc_completion_queue *cq;
  cq_tag shutdown_tag;

  /* lifecycle, under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, finished, stop_requested, shutdown_done;
  atomic_int stopping;
  atomic_int live_calls;

  /* work queue, under q_mu */
  pthread_mutex_t q_mu;
  pthread_cond_t q_cv;
  ap_rpc_call **queue;
  int q_head, q_len, q_quit;

  pthread_t *workers;
  int n_workers;
  pthread_t cq_thread;
  int cq_thread_started;
};

struct ap_rpc_call {
  ap_rpc_server *srv;
  method *m; /* NULL: an unregistered method */
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_call_details details; /* unregistered calls only */
  grpc_byte_buffer *payload;
  ProtobufCMessage *request;
  char *path; /* owned copy for unregistered calls */
  char **md_keys, **md_vals;
  size_t n_md;
  cq_tag req_tag, close_tag, send_tag, status_tag;
  int close_cancelled; /* written by the core for RECV_CLOSE_ON_SERVER */

  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs;
  int closed, cancelled;
  int send_busy, send_done, send_ok;
  int sent_initial_md;
  int aborted_by_shutdown; /* a stream send refused because the server is stopping */
  int replied;
  grpc_byte_buffer *reply;
  char *errmsg;
};

/* ---- calls ---------------------------------------------------------------- */

static ap_rpc_call *call_new(ap_rpc_server *srv, method *m) {
  ap_rpc_call *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->srv = srv;
  c->m = m;
  c->refs = 1;
  grpc_metadata_array_init(&c->md);
  grpc_call_details_init(&c->details);
  c->req_tag = (cq_tag){TAG_REQUEST, c};
  c->close_tag = (cq_tag){TAG_CLOSE, c};
  c->send_tag = (cq_tag){TAG_SEND, c};
  c->status_tag = (cq_tag){TAG_STATUS, c};
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  return c;
}

static void call_destroy(ap_rpc_call *c) {
  if (c->call) {
    grpc_call_unref(c->call);
    atomic_fetch_sub(&c->srv->live_calls, 1);
  }
  grpc_metadata_array_destroy(&c->md);
  grpc_call_details_destroy(&c->details);
  if (c->payload) grpc_byte_buffer_destroy(c->payload);
  if (c->reply) grpc_byte_buffer_destroy(c->reply);
  if (c->request) protobuf_c_message_free_unpacked(c->request, NULL);
  for (size_t i = 0; i < c->n_md; i++) {
    free(c->md_keys[i]);
    free(c->md_vals[i]);
  }
  free(c->md_keys);
  free(c->md_vals);
  free(c->path);
  free(c->errmsg);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c);
}

static void call_unref(ap_rpc_call *c) {
  pthread_mutex_lock(&c->mu);
  int left = --c->refs;
  pthread_mutex_unlock(&c->mu);
  if (left == 0) call_destroy(c);
}

/* Copies the request metadata: its slices die with the call, and handlers
 * get plain strings. */
static int copy_metadata(ap_rpc_call *c) {
  size_t n = c->md.count;
  if (n == 0) return 0;
  c->md_keys = calloc(n, sizeof *c->md_keys);
  c->md_vals = calloc(n, sizeof *c->md_vals);
  if (!c->md_keys || !c->md_vals) return -1;
  for (size_t i = 0; i < n; i++) {
    c->md_keys[i] = ap_rpc_slice_strdup(c->md.metadata[i].key);
    c->md_vals[i] = ap_rpc_slice_strdup(c->md.metadata[i].value);
    c->n_md = i + 1;
    if (!c->md_keys[i] || !c->md_vals[i]) return -1;
  }
  return 0;
}

static const char *call_path(const ap_rpc_call *c) {
  if (c->m) return c->m->path;
  return c->path ? c->path : "";
}

/*
 * Starts the final batch: initial metadata when no stream message carried
 * it, the unary reply when given, and the status. Takes a reference for
 * the completion. Safe from any thread.
 */
static void send_status(ap_rpc_call *c, int code, const char *msg, grpc_byte_buffer *reply) {
  /* A handler that gave up because the deadline passed reports it as
     DEADLINE_EXCEEDED whatever it returned (usually CANCELLED), so the client
     sees the same code whether its own timer or our status arrives first. */
  if (code != 0 && code != 4 && !reply && ap_rpc_ms_until(c->deadline) <= 0) {
    code = 4; /* GRPC_STATUS_DEADLINE_EXCEEDED */
    msg = "deadline exceeded";
  }
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  grpc_slice details = grpc_slice_from_copied_string(msg ? msg : "");
  pthread_mutex_lock(&c->mu);
  if (!c->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
  }
  if (reply) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = reply;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = (grpc_status_code)code;
  /* The details slice is not retained past start_batch. */
  ops[n].data.send_status_from_server.status_details = code == AP_OK ? NULL : &details;
  n++;
  grpc_call_error err = grpc_call_start_batch(c->call, ops, n, &c->status_tag, NULL);
  if (err == GRPC_CALL_OK) {
    c->refs++;
    c->sent_initial_md = 1;
  }
  pthread_mutex_unlock(&c->mu);
  grpc_slice_unref(details);
  if (err != GRPC_CALL_OK)
    AP_ERROR("%s: %s: cannot send status %s (grpc_call_error %d)", c->srv->name, call_path(c),
             ap_status_name(code), (int)err);
}

/* ---- health --------------------------------------------------------------- */

void ap_rpc_server_set_health(ap_rpc_server *srv, const char *service, int status) {
  if (!srv) return;
  if (!service) service = "";
  pthread_mutex_lock(&srv->health_mu);
  for (size_t i = 0; i < srv->n_health; i++) {
    if (strcmp(srv->health[i].service, service) == 0) {
      srv->health[i].status = status;
      pthread_mutex_unlock(&srv->health_mu);
      return;
    }
  }
  health_entry *grown = realloc(srv->health, (srv->n_health + 1) * sizeof *grown);
  char *copy = strdup(service);
  if (grown) srv->health = grown;
  if (!grown || !copy) {
    free(copy);
    pthread_mutex_unlock(&srv->health_mu);
    AP_ERROR("%s: out of memory recording health of \"%s\"", srv->name, service);
    return;
  }
  srv->health[srv->n_health++] = (health_entry){copy, status};
  pthread_mutex_unlock(&srv->health_mu);
}

/* Returns the recorded status of `service`, or -1 when unknown. */
static int health_lookup(ap_rpc_server *srv, const char *service) {
  int status = -1;
  pthread_mutex_lock(&srv->health_mu);
  for (size_t i = 0; i < srv->n_health; i++)
    if (strcmp(srv->health[i].service, service) == 0) status = srv->health[i].status;
  pthread_mutex_unlock(&srv->health_mu);
  return status;
}

static void health_all_not_serving(ap_rpc_server *srv) {
  pthread_mutex_lock(&srv->health_mu);
  for (size_t i = 0; i < srv->n_health; i++)
    srv->health[i].status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  pthread_mutex_unlock(&srv->health_mu);
}

static int health_check_handler(ap_rpc_call *c, const ProtobufCMessage *request, void *user) {
  (void)user;
  const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)request;
  const char *service = req->service ? req->service : "";
  int status = health_lookup(c->srv, service);
  if (status < 0) return ap_rpc_error(c, AP_NOT_FOUND, "unknown service \"%s\"", service);
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  return ap_rpc_reply(c, &resp.base) == 0 ? AP_OK : AP_INTERNAL;
}

/* ---- serving one call ----------------------------------------------------- */

static int call_is_cancelled(ap_rpc_call *c) {
  pthread_mutex_lock(&c->mu);
  int cancelled = c->closed && c->cancelled;
  pthread_mutex_unlock(&c->mu);
  return cancelled;
}

/* Unpacks, intercepts and runs the handler; returns the status to send. */
static int run_handler(ap_rpc_call *c) {
  method *m = c->m;
  if (call_is_cancelled(c)) return ap_rpc_error(c, AP_CANCELLED, "cancelled before the handler ran");
  if (ap_rpc_ms_until(c->deadline) <= 0)
    return ap_rpc_error(c, AP_DEADLINE_EXCEEDED, "deadline passed before the handler ran");
  if (!c->payload)
    return ap_rpc_error(c, AP_INVALID_ARGUMENT, "%s: the request carries no message", m->path);
  c->request = ap_rpc_unpack(c->payload, m->input);
  if (!c->request)
    return ap_rpc_error(c, AP_INVALID_ARGUMENT, "%s: request is not a valid %s (%zu bytes)", m->path,
                        m->input->name, grpc_byte_buffer_length(c->payload));
  /* The parsed message is all the handler needs; drop the wire bytes early. */
  grpc_byte_buffer_destroy(c->payload);
  c->payload = NULL;
  ap_rpc_server *srv = c->srv;
  if (srv->icpt && (!m->is_health || srv->icpt_health)) {
    int rc = srv->icpt(c, m->path, srv->icpt_user);
    if (rc != AP_OK) return rc;
  }
  return m->fn(c, c->request, m->user);
}

/* Runs on a handler thread; consumes the owner reference. */
static void serve_call(ap_rpc_call *c) {
  int rc = run_handler(c);
  if (rc < 0 || rc > AP_UNAUTHENTICATED) {
    AP_ERROR("%s: %s: handler returned %d, not a status code", c->srv->name, c->m->path, rc);
    rc = ap_rpc_error(c, AP_UNKNOWN, "handler returned an invalid status");
  }
  grpc_byte_buffer *reply = NULL;
  if (c->aborted_by_shutdown) {
    rc = AP_UNAVAILABLE;
    free(c->errmsg);
    c->errmsg = strdup("server shutting down");
  } else if (rc == AP_OK && c->m->kind == AP_RPC_UNARY) {
    if (!c->reply) {
      AP_ERROR("%s: %s: handler returned OK without a reply", c->srv->name, c->m->path);
      rc = ap_rpc_error(c, AP_INTERNAL, "handler returned no reply");
    }
    reply = c->reply;
  }
  const char *msg = rc == AP_OK ? NULL : (c->errmsg ? c->errmsg : ap_status_name(rc));
  send_status(c, rc, msg, reply);
  call_unref(c);
}

static void *worker_main(void *arg) {
  ap_rpc_server *srv = arg;
  for (;;) {
    pthread_mutex_lock(&srv->q_mu);
    while (srv->q_len == 0 && !srv->q_quit) pthread_cond_wait(&srv->q_cv, &srv->q_mu);
    if (srv->q_len == 0) {
      pthread_mutex_unlock(&srv->q_mu);
      return NULL;
    }
    ap_rpc_call *c = srv->queue[srv->q_head];
    srv->q_head = (srv->q_head + 1) % srv->queue_limit;
    srv->q_len--;
    pthread_mutex_unlock(&srv->q_mu);
    serve_call(c);
  }
}

/* Returns 0 when queued, -1 when the queue is full. */
static int enqueue(ap_rpc_server *srv, ap_rpc_call *c) {
  pthread_mutex_lock(&srv->q_mu);
  if (srv->q_len == srv->queue_limit) {
    pthread_mutex_unlock(&srv->q_mu);
    return -1;
  }
  srv->queue[(srv->q_head + srv->q_len) % srv->queue_limit] = c;
  srv->q_len++;
  pthread_cond_signal(&srv->q_cv);
  pthread_mutex_unlock(&srv->q_mu);
  return 0;
}

/* ---- the CQ thread -------------------------------------------------------- */

/* Asks the core for the next call of `m` (NULL: unregistered methods). */
static int arm_request(ap_rpc_server *srv, method *m) {
  ap_rpc_call *c = call_new(srv, m);
  if (!c) return -1;
  grpc_call_error err;
  if (m)
    err = grpc_server_request_registered_call(srv->server, m->handle, &c->call, &c->deadline, &c->md,
                                              &c->payload, srv->cq, srv->cq, &c->req_tag);
  else
    err = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, srv->cq, srv->cq,
                                   &c->req_tag);
  if (err != GRPC_CALL_OK) {
    call_destroy(c);
    return -1;
  }
  return 0;
}

static void on_new_call(ap_rpc_server *srv, ap_rpc_call *c, int success) {
  if (!success) {
    /* The server is shutting down: pending requests come back empty. */
    call_destroy(c);
    return;
  }
  atomic_fetch_add(&srv->live_calls, 1);
  if (!atomic_load(&srv->stopping) && arm_request(srv, c->m) != 0)
    AP_ERROR("%s: cannot re-arm request for %s", srv->name, c->m ? c->m->path : "unregistered methods");

  if (!c->m) {
    c->deadline = c->details.deadline;
    c->path = ap_rpc_slice_strdup(c->details.method);
  }
  if (copy_metadata(c) != 0) AP_ERROR("%s: out of memory copying metadata", srv->name);

  /* Started at once so that a client cancel is noticed while the handler runs. */
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->close_cancelled;
  pthread_mutex_lock(&c->mu);
  grpc_call_error err = grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL);
  if (err == GRPC_CALL_OK) c->refs++;
  pthread_mutex_unlock(&c->mu);
  if (err != GRPC_CALL_OK) AP_ERROR("%s: RECV_CLOSE_ON_SERVER failed (%d)", srv->name, (int)err);

  if (!c->m) {
    AP_DEBUG("%s: unknown method %s", srv->name, c->path ? c->path : "?");
    char msg[600];
    snprintf(msg, sizeof msg, "unknown method %s", c->path ? c->path : "");
    send_status(c, AP_UNIMPLEMENTED, msg, NULL);
    call_unref(c);
    return;
  }
  if (c->m->is_health && !(srv->icpt && srv->icpt_health)) {
    /* Probes must not wait behind long handlers: answer on this thread. */
    serve_call(c);
    return;
  }
  if (enqueue(srv, c) != 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "server busy: %d calls already queued", srv->queue_limit);
    AP_WARN("%s: %s rejected: %s", srv->name, c->m->path, msg);
    send_status(c, AP_RESOURCE_EXHAUSTED, msg, NULL);
    call_unref(c);
  }
}

static void request_stop(ap_rpc_server *srv) {
  pthread_mutex_lock(&srv->mu);
  srv->stop_requested = 1;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static void *cq_main(void *arg) {
  ap_rpc_server *srv = arg;
  for (;;) {
    gpr_timespec deadline = ap_rpc_deadline_from_ms(POLL_MS);
    grpc_event ev = grpc_completion_queue_next(srv->cq, deadline, NULL);
    if (g_signalled) request_stop(srv);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_QUEUE_TIMEOUT) continue;
    cq_tag *tag = ev.tag;
    ap_rpc_call *c = tag->call;
    switch (tag->kind) {
    case TAG_REQUEST:
      on_new_call(srv, c, ev.success);
      break;
    case TAG_CLOSE:
      pthread_mutex_lock(&c->mu);
      c->closed = 1;
      c->cancelled = c->close_cancelled || !ev.success;
      pthread_cond_broadcast(&c->cv);
      pthread_mutex_unlock(&c->mu);
      call_unref(c);
      break;
    case TAG_SEND:
      pthread_mutex_lock(&c->mu);
      c->send_done = 1;
      c->send_ok = ev.success;
      pthread_cond_broadcast(&c->cv);
      pthread_mutex_unlock(&c->mu);
      break;
    case TAG_STATUS:
      call_unref(c);
      break;
    case TAG_SHUTDOWN:
      pthread_mutex_lock(&srv->mu);
      srv->shutdown_done = 1;
      pthread_cond_broadcast(&srv->cv);
      pthread_mutex_unlock(&srv->mu);
      break;
    default:
      abort(); /* a tag we never created: memory corruption */
    }
  }
  return NULL;
}

/* ---- server lifecycle ----------------------------------------------------- */

static int add_method_path(ap_rpc_server *srv, const char *path, const ProtobufCMessageDescriptor *input,
                           ap_rpc_kind kind, ap_rpc_handler fn, void *user, int is_health) {
  for (size_t i = 0; i < srv->n_methods; i++)
    if (strcmp(srv->methods[i].path, path) == 0) return -1;
  method *grown = realloc(srv->methods, (srv->n_methods + 1) * sizeof *grown);
  if (!grown) return -1;
  srv->methods = grown;
  char *copy = strdup(path);
  if (!copy) return -1;
  srv->methods[srv->n_methods++] = (method){copy, input, kind, fn, user, NULL, is_health};
  return 0;
}

ap_rpc_server *ap_rpc_server_new(const ap_rpc_server_config *cfg) {
  ap_rpc_server *srv = calloc(1, sizeof *srv);
  if (!srv) return NULL;
  grpc_init();
  srv->name = strdup(cfg && cfg->name ? cfg->name : "rpc-server");
  srv->listen_addr = strdup(cfg && cfg->listen_addr ? cfg->listen_addr : "0.0.0.0:50051");
  srv->handler_threads = cfg && cfg->handler_threads > 0 ? cfg->handler_threads : DEFAULT_HANDLER_THREADS;
  srv->max_message_bytes = cfg && cfg->max_message_bytes > 0 ? cfg->max_message_bytes : DEFAULT_MAX_MESSAGE;
  srv->grace_ms = cfg && cfg->grace_ms > 0 ? cfg->grace_ms : DEFAULT_GRACE_MS;
  srv->queue_limit = DEFAULT_QUEUE_LIMIT;
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, NULL);
  pthread_mutex_init(&srv->q_mu, NULL);
  pthread_cond_init(&srv->q_cv, NULL);
  pthread_mutex_init(&srv->health_mu, NULL);
  srv->shutdown_tag = (cq_tag){TAG_SHUTDOWN, NULL};
  if (!srv->name || !srv->listen_addr ||
      add_method_path(srv, "/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
                      AP_RPC_UNARY, health_check_handler, NULL, 1) != 0) {
    ap_rpc_server_free(srv);
    return NULL;
  }
  ap_rpc_server_set_health(srv, "", GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  return srv;
}

int ap_rpc_server_set_queue_limit(ap_rpc_server *srv, int limit) {
  if (!srv || limit < 1 || srv->started) return -1;
  srv->queue_limit = limit;
  return 0;
}

int ap_rpc_server_add_method(ap_rpc_server *srv, const ProtobufCServiceDescriptor *service,
                             const char *method_name, ap_rpc_kind kind, ap_rpc_handler fn, void *user) {
  if (!srv || !service || !method_name || !fn || srv->started) return -1;
  const ProtobufCMethodDescriptor *md = NULL;
  for (unsigned i = 0; i < service->n_methods; i++)
    if (strcmp(service->methods[i].name, method_name) == 0) md = &service->methods[i];
  if (!md) {
    AP_ERROR("%s: %s has no method %s", srv->name, service->name, method_name);
    return -1;
  }
  char path[512];
  snprintf(path, sizeof path, "/%s/%s", service->name, method_name);
  if (add_method_path(srv, path, md->input, kind, fn, user, 0) != 0) {
    AP_ERROR("%s: cannot register %s (already registered?)", srv->name, path);
    return -1;
  }
  return 0;
}

void ap_rpc_server_set_interceptor(ap_rpc_server *srv, ap_rpc_interceptor fn, void *user, int include_health) {
  if (!srv || srv->started) return;
  srv->icpt = fn;
  srv->icpt_user = user;
  srv->icpt_health = include_health;
}

/* Tears down a core server that never started (bind failure). */
static void destroy_unstarted_core(ap_rpc_server *srv) {
  if (srv->server) grpc_server_destroy(srv->server);
  srv->server = NULL;
  if (srv->cq) {
    grpc_completion_queue_shutdown(srv->cq);
    while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(srv->cq);
  }
  srv->cq = NULL;
}

int ap_rpc_server_start(ap_rpc_server *srv) {
  if (!srv || srv->started) return -1;
  srv->queue = calloc((size_t)srv->queue_limit, sizeof *srv->queue);
  srv->workers = calloc((size_t)srv->handler_threads, sizeof *srv->workers);
  if (!srv->queue || !srv->workers) return -1;

  grpc_arg arg;
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  arg.value.integer = srv->max_message_bytes;
  grpc_channel_args args = {1, &arg};
  srv->server = grpc_server_create(&args, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
  for (size_t i = 0; i < srv->n_methods; i++) {
    srv->methods[i].handle = grpc_server_register_method(srv->server, srv->methods[i].path, NULL,
                                                         GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    if (!srv->methods[i].handle) {
      AP_ERROR("%s: grpc_server_register_method(%s) failed", srv->name, srv->methods[i].path);
      destroy_unstarted_core(srv);
      return -1;
    }
  }
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(srv->server, srv->listen_addr, creds);
  grpc_server_credentials_release(creds);
  if (port <= 0) {
    AP_ERROR("%s: cannot listen on %s", srv->name, srv->listen_addr);
    destroy_unstarted_core(srv);
    return -1;
  }
  grpc_server_start(srv->server);
  srv->started = 1;

  for (int i = 0; i < srv->handler_threads; i++) {
    if (pthread_create(&srv->workers[i], NULL, worker_main, srv) != 0) {
      AP_ERROR("%s: cannot start handler thread %d", srv->name, i);
      break;
    }
    srv->n_workers++;
  }
  if (pthread_create(&srv->cq_thread, NULL, cq_main, srv) == 0) srv->cq_thread_started = 1;
  int armed = 0;
  for (size_t i = 0; i < srv->n_methods; i++)
    for (int k = 0; k < REQUESTS_PER_METHOD; k++) armed += arm_request(srv, &srv->methods[i]) == 0;
  /* Unregistered methods too, or the core would hold those calls forever. */
  armed += arm_request(srv, NULL) == 0;
  if (srv->n_workers == 0 || !srv->cq_thread_started || armed == 0) {
    /* Serving is impossible; run the normal shutdown so nothing leaks. */
    AP_ERROR("%s: failed to start its threads", srv->name);
    ap_rpc_server_stop(srv);
    ap_rpc_server_run(srv);
    return -1;
  }
  AP_INFO("%s: listening on %s (port %d, %d handler threads, max message %d bytes)", srv->name,
          srv->listen_addr, port, srv->n_workers, srv->max_message_bytes);
  return port;
}

void ap_rpc_server_stop(ap_rpc_server *srv) {
  if (srv) request_stop(srv);
}

int ap_rpc_server_stopping(const ap_rpc_server *srv) {
  return srv ? atomic_load(&((ap_rpc_server *)srv)->stopping) : 1;
}

/* Waits on srv->cv until shutdown_done or `ms` passed (ms < 0: forever). */
static int wait_shutdown_done(ap_rpc_server *srv, int64_t ms) {
  gpr_timespec until = ap_rpc_deadline_from_ms(ms < 0 ? 0 : ms);
  pthread_mutex_lock(&srv->mu);
  while (!srv->shutdown_done) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 200 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&srv->cv, &srv->mu, &ts);
    if (ms >= 0 && ap_rpc_ms_until(until) <= 0) break;
  }
  int done = srv->shutdown_done;
  pthread_mutex_unlock(&srv->mu);
  return done;
}

int ap_rpc_server_run(ap_rpc_server *srv) {
  if (!srv || !srv->started || srv->finished) return -1;
  pthread_mutex_lock(&srv->mu);
  while (!srv->stop_requested) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += POLL_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&srv->cv, &srv->mu, &ts);
    if (g_signalled) srv->stop_requested = 1;
  }
  pthread_mutex_unlock(&srv->mu);

  AP_INFO("%s: shutting down (%d calls in flight, grace %d ms)", srv->name, atomic_load(&srv->live_calls),
          srv->grace_ms);
  atomic_store(&srv->stopping, 1);
  health_all_not_serving(srv);
  /* New calls now get UNAVAILABLE; the shutdown tag arrives once every call is released. */
  grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
  if (!wait_shutdown_done(srv, srv->grace_ms)) {
    AP_WARN("%s: grace period over, cancelling %d calls", srv->name, atomic_load(&srv->live_calls));
    grpc_server_cancel_all_calls(srv->server);
    while (!wait_shutdown_done(srv, 5000))
      AP_WARN("%s: still waiting for %d calls (a handler ignores cancellation?)", srv->name,
              atomic_load(&srv->live_calls));
  }

  pthread_mutex_lock(&srv->q_mu);
  srv->q_quit = 1;
  pthread_cond_broadcast(&srv->q_cv);
  pthread_mutex_unlock(&srv->q_mu);
  for (int i = 0; i < srv->n_workers; i++) pthread_join(srv->workers[i], NULL);
  srv->n_workers = 0;

  grpc_completion_queue_shutdown(srv->cq);
  if (srv->cq_thread_started) pthread_join(srv->cq_thread, NULL);
  srv->cq_thread_started = 0;
  grpc_server_destroy(srv->server);
  grpc_completion_queue_destroy(srv->cq);
  srv->server = NULL;
  srv->cq = NULL;
  srv->finished = 1;
  AP_INFO("%s: stopped", srv->name);
  return 0;
}

void ap_rpc_server_free(ap_rpc_server *srv) {
  if (!srv) return;
  if (srv->started && !srv->finished) {
    ap_rpc_server_stop(srv);
    ap_rpc_server_run(srv);
  }
  for (size_t i = 0; i < srv->n_methods; i++) free(srv->methods[i].path);
  free(srv->methods);
  for (size_t i = 0; i < srv->n_health; i++) free(srv->health[i].service);
  free(srv->health);
  free(srv->queue);
  free(srv->workers);
  free(srv->name);
  free(srv->listen_addr);
  pthread_mutex_destroy(&srv->mu);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->q_mu);
  pthread_cond_destroy(&srv->q_cv);
  pthread_mutex_destroy(&srv->health_mu);
  free(srv);
  grpc_shutdown();
}

/* ---- inside a handler ----------------------------------------------------- */

int ap_rpc_reply(ap_rpc_call *call, const ProtobufCMessage *msg) {
  if (!call || !msg) return -1;
  if (call->m && call->m->kind == AP_RPC_SERVER_STREAM) return ap_rpc_stream_send(call, msg);
  if (call->replied) return -1;
  call->reply = ap_rpc_pack(msg);
  if (!call->reply) return -1;
  call->replied = 1;
  return 0;
}

int ap_rpc_stream_send(ap_rpc_call *call, const ProtobufCMessage *msg) {
  if (!call || !msg || !call->m || call->m->kind != AP_RPC_SERVER_STREAM) return -1;
  if (atomic_load(&call->srv->stopping)) {
    /* Streams may run for hours; ending them now lets the client resume elsewhere. */
    call->aborted_by_shutdown = 1;
    return -1;
  }
  if (ap_rpc_call_cancelled(call)) return -1;
  grpc_byte_buffer *bb = ap_rpc_pack(msg);
  if (!bb) return -1;

  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  pthread_mutex_lock(&call->mu);
  while (call->send_busy) pthread_cond_wait(&call->cv, &call->mu);
  if (!call->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = bb;
  n++;
  grpc_call_error err = grpc_call_start_batch(call->call, ops, n, &call->send_tag, NULL);
  int ok = 0;
  if (err == GRPC_CALL_OK) {
    call->sent_initial_md = 1;
    call->send_busy = 1;
    call->send_done = 0;
    /* Completes on delivery, cancel, deadline, or cancel_all_calls at the end of the grace period. */
    while (!call->send_done) pthread_cond_wait(&call->cv, &call->mu);
    ok = call->send_ok;
    call->send_busy = 0;
    pthread_cond_broadcast(&call->cv);
  }
  pthread_mutex_unlock(&call->mu);
  grpc_byte_buffer_destroy(bb);
  if (!ok && atomic_load(&call->srv->stopping)) call->aborted_by_shutdown = 1;
  return ok ? 0 : -1;
}

int ap_rpc_error(ap_rpc_call *call, int code, const char *fmt, ...) {
  if (!call) return code;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  free(call->errmsg);
  call->errmsg = strdup(buf);
  return code;
}

int ap_rpc_call_cancelled(ap_rpc_call *call) {
  if (!call) return 1;
  return call_is_cancelled(call) || ap_rpc_ms_until(call->deadline) <= 0;
}

int64_t ap_rpc_call_deadline_ms(ap_rpc_call *call) {
  return call ? ap_rpc_ms_until(call->deadline) : 0;
}

const char *ap_rpc_call_metadata(ap_rpc_call *call, const char *key) {
  if (!call || !key) return NULL;
  for (size_t i = 0; i < call->n_md; i++)
    if (call->md_keys[i] && strcmp(call->md_keys[i], key) == 0) return call->md_vals[i];
  return NULL;
}

const char *ap_rpc_call_method(ap_rpc_call *call) {
  return call ? call_path(call) : "";
}

ap_rpc_server *ap_rpc_call_server(ap_rpc_call *call) {
  return call ? call->srv : NULL;
}
