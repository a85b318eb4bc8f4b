/*
 * rpc_client.c - unary calls with retry and server-stream readers over the
 * gRPC C core (see rpc_client.h).
 *
 * Every unary attempt and every stream gets its own PLUCK completion queue:
 * the channel is shared by all threads, a queue never is, so there is no
 * limit on concurrent callers (a PLUCK queue allows only 6 pluckers) and no
 * event can be consumed by the wrong thread.
 */
#include "rpc_client.h"

#include "grpc/health/v1/health.pb-c.h"
#include "rpc_internal.h"
#include "rpc_server.h" /* status code names */

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_INITIAL_BACKOFF_MS 100
#define DEFAULT_MAX_BACKOFF_MS 5000
#define DEFAULT_MAX_MESSAGE (64 * 1024 * 1024)

struct ap_rpc_client {
  grpc_channel *channel;
  int max_attempts, initial_backoff_ms, max_backoff_ms;
  char *auth_value; /* "Bearer <token>" or NULL */
  atomic_uint jitter_seed;
};

struct ap_rpc_stream {
  grpc_call *call;
  grpc_completion_queue *cq;
  const ProtobufCMessageDescriptor *desc;
  grpc_metadata_array initial_md, trailing_md;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;
  int got_initial_md, status_started, status_received, ended;
  atomic_int cancelled;
  ap_rpc_status final;
  /* distinct addresses used as tags */
  char tag_send, tag_recv, tag_status;
};

static void set_status(ap_rpc_status *st, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_status(ap_rpc_status *st, int code, const char *fmt, ...) {
  if (!st) return;
  st->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->message, sizeof st->message, fmt, ap);
  va_end(ap);
}

/* Status message: the server's details, else the core's error text. */
static void fill_status(ap_rpc_status *st, grpc_status_code code, grpc_slice details, const char *error_string) {
  if (!st) return;
  st->code = (int)code;
  size_t n = GRPC_SLICE_LENGTH(details);
  if (n) {
    if (n >= sizeof st->message) n = sizeof st->message - 1;
    memcpy(st->message, GRPC_SLICE_START_PTR(details), n);
    st->message[n] = '\0';
  } else if (code != GRPC_STATUS_OK && error_string) {
    snprintf(st->message, sizeof st->message, "%s", error_string);
  } else {
    snprintf(st->message, sizeof st->message, "%s", code == GRPC_STATUS_OK ? "" : ap_status_name((int)code));
  }
}

ap_rpc_client *ap_rpc_client_new(const char *target, const ap_rpc_client_opts *opts) {
  if (!target) return NULL;
  ap_rpc_client *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->max_attempts = opts && opts->max_attempts > 0 ? opts->max_attempts : 1;
  c->initial_backoff_ms = opts && opts->initial_backoff_ms > 0 ? opts->initial_backoff_ms : DEFAULT_INITIAL_BACKOFF_MS;
  c->max_backoff_ms = opts && opts->max_backoff_ms > 0 ? opts->max_backoff_ms : DEFAULT_MAX_BACKOFF_MS;
  if (c->max_backoff_ms < c->initial_backoff_ms) c->max_backoff_ms = c->initial_backoff_ms;
  int max_msg = opts && opts->max_message_bytes > 0 ? opts->max_message_bytes : DEFAULT_MAX_MESSAGE;
  if (opts && opts->bearer_token && opts->bearer_token[0]) {
    size_t n = strlen(opts->bearer_token) + sizeof "Bearer ";
    c->auth_value = malloc(n);
    if (!c->auth_value) {
      free(c);
      return NULL;
    }
    snprintf(c->auth_value, n, "Bearer %s", opts->bearer_token);
  }
  atomic_init(&c->jitter_seed, (unsigned)time(NULL) ^ (unsigned)(uintptr_t)c);

  grpc_init();
  /* The channel's own reconnect backoff (default up to 120 s) would make our
   * retries fail fast for minutes after an outage; keep it within ours. */
  grpc_arg args[3];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = max_msg;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
  args[1].value.integer = c->initial_backoff_ms;
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
  args[2].value.integer = c->max_backoff_ms;
  grpc_channel_args chargs = {3, args};
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  c->channel = grpc_channel_create(target, creds, &chargs);
  grpc_channel_credentials_release(creds);
  if (!c->channel) {
    free(c->auth_value);
    free(c);
    grpc_shutdown();
    return NULL;
  }
  return c;
}

void ap_rpc_client_free(ap_rpc_client *c) {
  if (!c) return;
  grpc_channel_destroy(c->channel);
  free(c->auth_value);
  free(c);
  grpc_shutdown();
}

/* Shuts a PLUCK queue down once every tag was plucked, and frees it. */
static void cq_drain_destroy(grpc_completion_queue *cq) {
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
}

static size_t auth_metadata(ap_rpc_client *c, grpc_metadata *md) {
  if (!c->auth_value) return 0;
  memset(md, 0, sizeof *md);
  md->key = grpc_slice_from_static_string("authorization");
  md->value = grpc_slice_from_static_string(c->auth_value);
  return 1;
}

/* One attempt: creates the call, runs the single 6-op batch, unpacks. */
static int unary_attempt(ap_rpc_client *c, grpc_slice method, grpc_slice packed, gpr_timespec deadline,
                         const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, ap_rpc_status *st) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL, deadline, NULL);
  if (!call) {
    cq_drain_destroy(cq);
    set_status(st, AP_INTERNAL, "cannot create a call");
    return AP_INTERNAL;
  }
  grpc_byte_buffer *send_bb = grpc_raw_byte_buffer_create(&packed, 1);
  grpc_byte_buffer *recv_bb = NULL;
  grpc_metadata auth;
  grpc_metadata_array initial_md, trailing_md;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;

  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = auth_metadata(c, &auth);
  ops[0].data.send_initial_metadata.metadata = &auth;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv_bb;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  ops[5].data.recv_status_on_client.error_string = &error_string;

  int code;
  grpc_call_error err = grpc_call_start_batch(call, ops, 6, &ops, NULL);
  if (err != GRPC_CALL_OK) {
    set_status(st, AP_INTERNAL, "grpc_call_start_batch failed (%d)", (int)err);
    code = AP_INTERNAL;
  } else {
    /* The call's deadline bounds this wait. */
    grpc_completion_queue_pluck(cq, &ops, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    fill_status(st, status, details, error_string);
    code = (int)status;
    if (code == AP_OK) {
      *resp = recv_bb ? ap_rpc_unpack(recv_bb, resp_desc) : NULL;
      if (!*resp) {
        code = AP_INTERNAL;
        set_status(st, code, "reply is not a valid %s", resp_desc->name);
      }
    }
  }
  if (recv_bb) grpc_byte_buffer_destroy(recv_bb);
  grpc_byte_buffer_destroy(send_bb);
  grpc_slice_unref(details);
  gpr_free((void *)error_string);
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_call_unref(call);
  cq_drain_destroy(cq);
  return code;
}

/* Exponential backoff with "equal jitter": half fixed, half random. */
static int backoff_ms(ap_rpc_client *c, int retry) {
  int64_t ms = c->initial_backoff_ms;
  for (int i = 0; i < retry && ms < c->max_backoff_ms; i++) ms *= 2;
  if (ms > c->max_backoff_ms) ms = c->max_backoff_ms;
  unsigned seed = atomic_fetch_add(&c->jitter_seed, 0x9e3779b9u);
  seed ^= seed << 13;
  seed ^= seed >> 17;
  seed ^= seed << 5;
  return (int)(ms / 2 + (int64_t)(seed % (unsigned)(ms / 2 + 1)));
}

/*
 * Waits `ms` before a retry, or less once the channel is READY. The wait
 * watches the channel's connectivity on a queue of its own: while no
 * queue of this channel is polled, the core notices a finished connect
 * only through its 5 s backup poller, so a plain sleep here would delay
 * recovery after an outage by up to 5 s per connection attempt.
 */
static void wait_before_retry(ap_rpc_client *c, int ms) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec until = ap_rpc_deadline_from_ms(ms);
  grpc_connectivity_state state = grpc_channel_check_connectivity_state(c->channel, 1);
  while (state != GRPC_CHANNEL_READY && ap_rpc_ms_until(until) > 0) {
    grpc_channel_watch_connectivity_state(c->channel, state, until, cq, &state);
    grpc_event ev = grpc_completion_queue_pluck(cq, &state, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (!ev.success) break; /* the wait timed out */
    state = grpc_channel_check_connectivity_state(c->channel, 1);
  }
  cq_drain_destroy(cq);
}

int ap_rpc_unary(ap_rpc_client *c, const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, int64_t timeout_ms,
                 ap_rpc_status *st) {
  ap_rpc_status local;
  if (!st) st = &local;
  if (resp) *resp = NULL;
  if (!c || !method || !req || !resp_desc || !resp) {
    set_status(st, AP_INVALID_ARGUMENT, "ap_rpc_unary: NULL argument");
    return AP_INVALID_ARGUMENT;
  }
  grpc_byte_buffer *bb = ap_rpc_pack(req);
  if (!bb) {
    set_status(st, AP_INTERNAL, "cannot pack the request");
    return AP_INTERNAL;
  }
  /* Keep the packed bytes as one slice: every attempt needs a fresh buffer. */
  grpc_byte_buffer_reader reader;
  grpc_byte_buffer_reader_init(&reader, bb);
  grpc_slice packed = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  grpc_byte_buffer_destroy(bb);

  grpc_slice method_slice = grpc_slice_from_copied_string(method);
  gpr_timespec deadline = ap_rpc_deadline_from_ms(timeout_ms);
  int code = AP_UNKNOWN;
  for (int attempt = 1;; attempt++) {
    code = unary_attempt(c, method_slice, packed, deadline, resp_desc, resp, st);
    if (code != AP_UNAVAILABLE || attempt >= c->max_attempts) break;
    int wait = backoff_ms(c, attempt - 1);
    if (timeout_ms > 0 && ap_rpc_ms_until(deadline) <= wait) break;
    wait_before_retry(c, wait);
  }
  grpc_slice_unref(method_slice);
  grpc_slice_unref(packed);
  return code;
}

/* ---- streams -------------------------------------------------------------- */

static grpc_event pluck(ap_rpc_stream *s, void *tag) {
  return grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
}

/* Waits for the final status (started at open) once. */
static void stream_finish(ap_rpc_stream *s) {
  if (s->status_received) return;
  if (s->status_started) {
    pluck(s, &s->tag_status);
    fill_status(&s->final, s->status, s->details, s->error_string);
  } else {
    set_status(&s->final, AP_INTERNAL, "stream status was never requested");
  }
  if (atomic_load(&s->cancelled) && s->final.code != AP_OK)
    set_status(&s->final, AP_CANCELLED, "cancelled by the client");
  s->status_received = 1;
  s->ended = 1;
}

static void stream_destroy(ap_rpc_stream *s) {
  if (s->call) {
    if (!s->status_received) {
      grpc_call_cancel(s->call, NULL);
      stream_finish(s);
    }
    grpc_call_unref(s->call);
  }
  if (s->cq) cq_drain_destroy(s->cq);
  grpc_metadata_array_destroy(&s->initial_md);
  grpc_metadata_array_destroy(&s->trailing_md);
  grpc_slice_unref(s->details);
  gpr_free((void *)s->error_string);
  free(s);
}

/* Starts one stream; returns it, or NULL with *st filled. */
static ap_rpc_stream *stream_open_once(ap_rpc_client *c, grpc_slice method, grpc_slice packed,
                                       gpr_timespec deadline, const ProtobufCMessageDescriptor *resp_desc,
                                       ap_rpc_status *st) {
  ap_rpc_stream *s = calloc(1, sizeof *s);
  if (!s) {
    set_status(st, AP_INTERNAL, "out of memory");
    return NULL;
  }
  s->desc = resp_desc;
  s->details = grpc_empty_slice();
  grpc_metadata_array_init(&s->initial_md);
  grpc_metadata_array_init(&s->trailing_md);
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, method, NULL, deadline, NULL);
  if (!s->call) {
    set_status(st, AP_INTERNAL, "cannot create a call");
    stream_destroy(s);
    return NULL;
  }
  /* The status op is started now so that it completes whenever the call
   * ends; it is plucked at the end of the stream or in free. */
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  op.data.recv_status_on_client.status = &s->status;
  op.data.recv_status_on_client.status_details = &s->details;
  op.data.recv_status_on_client.error_string = &s->error_string;
  if (grpc_call_start_batch(s->call, &op, 1, &s->tag_status, NULL) != GRPC_CALL_OK) {
    set_status(st, AP_INTERNAL, "cannot start the status batch");
    stream_destroy(s);
    return NULL;
  }
  s->status_started = 1;

  grpc_byte_buffer *send_bb = grpc_raw_byte_buffer_create(&packed, 1);
  grpc_metadata auth;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = auth_metadata(c, &auth);
  ops[0].data.send_initial_metadata.metadata = &auth;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  grpc_call_error err = grpc_call_start_batch(s->call, ops, 3, &s->tag_send, NULL);
  int sent = 0;
  if (err == GRPC_CALL_OK) sent = pluck(s, &s->tag_send).success;
  grpc_byte_buffer_destroy(send_bb);
  if (!sent) {
    /* The call failed before the request left: report its status. A batch
     * that never started leaves the call alive, so end it first. */
    if (err != GRPC_CALL_OK) grpc_call_cancel(s->call, NULL);
    stream_finish(s);
    if (st) *st = s->final;
    if (st && st->code == AP_OK) set_status(st, AP_INTERNAL, "stream request could not be sent");
    stream_destroy(s);
    return NULL;
  }
  set_status(st, AP_OK, "%s", "");
  return s;
}

ap_rpc_stream *ap_rpc_stream_open(ap_rpc_client *c, const char *method, const ProtobufCMessage *req,
                                  const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms, ap_rpc_status *st) {
  ap_rpc_status local;
  if (!st) st = &local;
  if (!c || !method || !req || !resp_desc) {
    set_status(st, AP_INVALID_ARGUMENT, "ap_rpc_stream_open: NULL argument");
    return NULL;
  }
  grpc_byte_buffer *bb = ap_rpc_pack(req);
  if (!bb) {
    set_status(st, AP_INTERNAL, "cannot pack the request");
    return NULL;
  }
  grpc_byte_buffer_reader reader;
  grpc_byte_buffer_reader_init(&reader, bb);
  grpc_slice packed = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  grpc_byte_buffer_destroy(bb);
  grpc_slice method_slice = grpc_slice_from_copied_string(method);
  gpr_timespec deadline = ap_rpc_deadline_from_ms(timeout_ms);

  ap_rpc_stream *s = NULL;
  for (int attempt = 1;; attempt++) {
    s = stream_open_once(c, method_slice, packed, deadline, resp_desc, st);
    /* Only a call that failed before its request left is safe to repeat. */
    if (s || st->code != AP_UNAVAILABLE || attempt >= c->max_attempts) break;
    int wait = backoff_ms(c, attempt - 1);
    if (timeout_ms > 0 && ap_rpc_ms_until(deadline) <= wait) break;
    wait_before_retry(c, wait);
  }
  grpc_slice_unref(method_slice);
  grpc_slice_unref(packed);
  return s;
}

int ap_rpc_stream_next(ap_rpc_stream *s, ProtobufCMessage **msg, ap_rpc_status *st) {
  if (msg) *msg = NULL;
  if (!s || !msg) {
    set_status(st, AP_INVALID_ARGUMENT, "ap_rpc_stream_next: NULL argument");
    return -1;
  }
  if (s->ended) {
    if (st) *st = s->final;
    return 0;
  }
  grpc_byte_buffer *bb = NULL;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (!s->got_initial_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    n++;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = &bb;
  n++;
  grpc_call_error err = grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL);
  if (err != GRPC_CALL_OK) {
    set_status(st, AP_INTERNAL, "grpc_call_start_batch failed (%d)", (int)err);
    return -1;
  }
  pluck(s, &s->tag_recv);
  s->got_initial_md = 1;
  if (!bb) {
    /* End of stream (or failure): the status tells which. */
    stream_finish(s);
    if (st) *st = s->final;
    return 0;
  }
  *msg = ap_rpc_unpack(bb, s->desc);
  grpc_byte_buffer_destroy(bb);
  if (!*msg) {
    grpc_call_cancel(s->call, NULL);
    stream_finish(s);
    set_status(&s->final, AP_INTERNAL, "stream message is not a valid %s", s->desc->name);
    if (st) *st = s->final;
    return -1;
  }
  return 1;
}

void ap_rpc_stream_cancel(ap_rpc_stream *s) {
  if (!s) return;
  atomic_store(&s->cancelled, 1);
  grpc_call_cancel(s->call, NULL);
}

void ap_rpc_stream_free(ap_rpc_stream *s) {
  if (s) stream_destroy(s);
}

/* ---- health --------------------------------------------------------------- */

int ap_rpc_health_check(ap_rpc_client *c, const char *service, int64_t timeout_ms, ap_rpc_status *st) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service ? service : "");
  ProtobufCMessage *resp = NULL;
  int code = ap_rpc_unary(c, "/grpc.health.v1.Health/Check", &req.base,
                          &grpc__health__v1__health_check_response__descriptor, &resp, timeout_ms, st);
  if (code != AP_OK) return -1;
  int status = (int)((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
  protobuf_c_message_free_unpacked(resp, NULL);
  return status;
}
