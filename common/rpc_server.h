/*
 * rpc_server.h - a small gRPC server framework over the gRPC C core (1.51).
 *
 * One completion queue is polled by a dedicated thread; every call is handed
 * to a pool of handler threads, so a handler may block on compute for minutes
 * without stalling the queue. Requests and replies are protobuf-c messages.
 *
 * Every server answers grpc.health.v1.Health/Check by itself (Watch answers
 * UNIMPLEMENTED). On shutdown (ap_rpc_server_stop, or SIGTERM/SIGINT after
 * ap_rpc_install_signal_handlers) health turns NOT_SERVING, new calls get
 * UNAVAILABLE, in-flight calls drain for the grace period, then the rest are
 * cancelled and ap_rpc_server_run returns 0.
 *
 * Ownership: the server owns every call object; a handler must not keep the
 * ap_rpc_call pointer or the request after it returns. Messages passed to
 * ap_rpc_reply / ap_rpc_stream_send are packed (copied) before the call
 * returns; the caller keeps ownership of them.
 */
#ifndef AP_RPC_SERVER_H
#define AP_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* gRPC status codes, numerically equal to grpc_status_code. */
enum {
  AP_OK = 0, AP_CANCELLED = 1, AP_UNKNOWN = 2, AP_INVALID_ARGUMENT = 3,
  AP_DEADLINE_EXCEEDED = 4, AP_NOT_FOUND = 5, AP_ALREADY_EXISTS = 6,
  AP_PERMISSION_DENIED = 7, AP_RESOURCE_EXHAUSTED = 8, AP_FAILED_PRECONDITION = 9,
  AP_ABORTED = 10, AP_OUT_OF_RANGE = 11, AP_UNIMPLEMENTED = 12, AP_INTERNAL = 13,
  AP_UNAVAILABLE = 14, AP_DATA_LOSS = 15, AP_UNAUTHENTICATED = 16
};

/* Name of a status code ("INVALID_ARGUMENT"); never NULL. */
const char *ap_status_name(int code);

typedef struct ap_rpc_server ap_rpc_server;
typedef struct ap_rpc_call ap_rpc_call;

typedef enum { AP_RPC_UNARY = 0, AP_RPC_SERVER_STREAM = 1 } ap_rpc_kind;

/*
 * A method handler. `request` is the unpacked request message (owned by the
 * framework). Returns a status code; for a non-OK code the message set with
 * ap_rpc_error (or a generic one) is sent to the client. A unary handler that
 * returns AP_OK must have called ap_rpc_reply exactly once. A streaming
 * handler sends any number of messages with ap_rpc_stream_send.
 */
typedef int (*ap_rpc_handler)(ap_rpc_call *call, const ProtobufCMessage *request, void *user);

/*
 * Interceptor run on a handler thread before every handler, Health included
 * when `include_health` was set. Returning non-OK rejects the call with that
 * code (and the message set with ap_rpc_error). This is the seam for bearer
 * token checks.
 */
typedef int (*ap_rpc_interceptor)(ap_rpc_call *call, const char *method_path, void *user);

typedef struct {
  const char *listen_addr;     /* "0.0.0.0:50051"; "127.0.0.1:0" picks a free port */
  int handler_threads;         /* 0 = 8 */
  int max_message_bytes;       /* max receive size; 0 = 4 MiB */
  int grace_ms;                /* drain time on shutdown; 0 = 10000 */
  const char *name;            /* for logs, e.g. "pruner-svc" */
} ap_rpc_server_config;

/*
 * Creates a server (not yet listening). Returns NULL on allocation failure.
 */
ap_rpc_server *ap_rpc_server_new(const ap_rpc_server_config *cfg);

/*
 * Registers `method` (its name inside `service`, e.g. "SubmitJob") before
 * ap_rpc_server_start. The request type comes from the service descriptor.
 * Errors: -1 when the method is unknown in `service`, already registered, or
 * the server has started.
 */
int ap_rpc_server_add_method(ap_rpc_server *srv, const ProtobufCServiceDescriptor *service,
                             const char *method, ap_rpc_kind kind, ap_rpc_handler fn, void *user);

/*
 * Bounds the queue of calls waiting for a handler thread (default 1024);
 * a call arriving when it is full gets RESOURCE_EXHAUSTED at once.
 * Errors: -1 when limit < 1 or the server has started.
 */
int ap_rpc_server_set_queue_limit(ap_rpc_server *srv, int limit);

void ap_rpc_server_set_interceptor(ap_rpc_server *srv, ap_rpc_interceptor fn, void *user,
                                   int include_health);

/*
 * Sets the health status reported for `service` ("" = the whole server).
 * status: 1 SERVING, 2 NOT_SERVING. Safe from any thread.
 */
void ap_rpc_server_set_health(ap_rpc_server *srv, const char *service, int status);

/*
 * Binds and starts serving. Returns the bound port (> 0), or -1 when the
 * address cannot be bound.
 */
int ap_rpc_server_start(ap_rpc_server *srv);

/*
 * Blocks until ap_rpc_server_stop is called or a signal installed with
 * ap_rpc_install_signal_handlers arrives, then shuts down gracefully.
 * Returns 0 on a clean shutdown.
 */
int ap_rpc_server_run(ap_rpc_server *srv);

/* Asks a running server to shut down; safe from any thread (not from a signal handler). */
void ap_rpc_server_stop(ap_rpc_server *srv);

/* 1 once shutdown has begun (handlers doing long work should poll it). */
int ap_rpc_server_stopping(const ap_rpc_server *srv);

/* Frees a server after ap_rpc_server_run returned (or that never started). */
void ap_rpc_server_free(ap_rpc_server *srv);

/*
 * SIGTERM and SIGINT set a flag that every running server's loop notices
 * within 200 ms. SIGPIPE is ignored.
 */
void ap_rpc_install_signal_handlers(void);

/* ---- inside a handler ---------------------------------------------------- */

/* Sends the unary reply (packs `msg`). Returns 0, or -1 if already replied. */
int ap_rpc_reply(ap_rpc_call *call, const ProtobufCMessage *msg);

/*
 * Sends one message of a server stream, blocking until the transport took it.
 * Returns 0, or -1 when the client cancelled, the deadline passed or the
 * server is shutting down (the handler should then return promptly).
 */
int ap_rpc_stream_send(ap_rpc_call *call, const ProtobufCMessage *msg);

/*
 * Records the status message for a non-OK return and returns `code`, so a
 * handler can write: return ap_rpc_error(call, AP_NOT_FOUND, "no job %s", id);
 */
int ap_rpc_error(ap_rpc_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 when the client cancelled or the deadline passed. */
int ap_rpc_call_cancelled(ap_rpc_call *call);

/* Milliseconds left before the call's deadline; INT64_MAX when none. */
int64_t ap_rpc_call_deadline_ms(ap_rpc_call *call);

/*
 * Value of request metadata `key` (lowercase), copied into a string owned by
 * the call (valid until the handler returns); NULL when absent.
 */
const char *ap_rpc_call_metadata(ap_rpc_call *call, const char *key);

/* Full method path, "/agentprune.v1.Pruner/SubmitJob". */
const char *ap_rpc_call_method(ap_rpc_call *call);

/* The server the call belongs to. */
ap_rpc_server *ap_rpc_call_server(ap_rpc_call *call);

#ifdef __cplusplus
}
#endif
#endif
