/*
 * rpc_client.h - client helpers over the gRPC C core: unary calls with a
 * deadline and retry with backoff on UNAVAILABLE, and server-stream readers
 * with cancellation.
 *
 * Thread safety: one ap_rpc_client may be used by many threads at once.
 * Ownership: response messages returned to the caller are freed with
 * protobuf_c_message_free_unpacked(msg, NULL).
 */
#ifndef AP_RPC_CLIENT_H
#define AP_RPC_CLIENT_H

#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int code;                /* gRPC status code; 0 = OK */
  char message[512];       /* status details, or a local error description */
} ap_rpc_status;

typedef struct {
  int max_attempts;        /* attempts on UNAVAILABLE; 0 = 1 (no retry) */
  int initial_backoff_ms;  /* 0 = 100; doubles each retry, with jitter */
  int max_backoff_ms;      /* 0 = 5000 */
  int max_message_bytes;   /* max receive size; 0 = 64 MiB */
  const char *bearer_token;/* sent as "authorization: Bearer <token>" when set */
} ap_rpc_client_opts;

typedef struct ap_rpc_client ap_rpc_client;
typedef struct ap_rpc_stream ap_rpc_stream;

/*
 * Creates a channel to `target` ("127.0.0.1:5000", "dns:///agent:50052").
 * Connection is lazy. opts may be NULL. Returns NULL on allocation failure.
 */
ap_rpc_client *ap_rpc_client_new(const char *target, const ap_rpc_client_opts *opts);
void ap_rpc_client_free(ap_rpc_client *c);

/*
 * Unary call of `method` ("/agentprune.v1.Pruner/GetJob") with a deadline of
 * timeout_ms from now (<= 0: none). On OK, *resp is the unpacked reply of
 * type resp_desc (caller frees). Returns the final status code (also in *st
 * when st is not NULL); retries on UNAVAILABLE per the client's options
 * while the deadline allows.
 * Local errors: INTERNAL when the reply does not unpack.
 */
int ap_rpc_unary(ap_rpc_client *c, const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                 int64_t timeout_ms, ap_rpc_status *st);

/*
 * Opens a server-streaming call. Returns NULL (with *st filled) when the call
 * cannot start. timeout_ms <= 0: no deadline.
 */
ap_rpc_stream *ap_rpc_stream_open(ap_rpc_client *c, const char *method, const ProtobufCMessage *req,
                                  const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                                  ap_rpc_status *st);

/*
 * Reads the next message. Returns 1 with *msg set (caller frees), 0 at the
 * end of the stream with *st holding the final status (OK or an error), or
 * -1 on a local error.
 */
int ap_rpc_stream_next(ap_rpc_stream *s, ProtobufCMessage **msg, ap_rpc_status *st);

/* Cancels the call; a pending or later ap_rpc_stream_next returns 0 with CANCELLED. Thread-safe. */
void ap_rpc_stream_cancel(ap_rpc_stream *s);

/* Releases the stream (cancelling it first if it has not ended). */
void ap_rpc_stream_free(ap_rpc_stream *s);

/*
 * grpc.health.v1.Health/Check of `service` ("" = server). Returns the serving
 * status (1 SERVING, 2 NOT_SERVING) or -1 with *st filled on failure.
 */
int ap_rpc_health_check(ap_rpc_client *c, const char *service, int64_t timeout_ms, ap_rpc_status *st);

#ifdef __cplusplus
}
#endif
#endif
