/*
 * rpc_internal.h - helpers shared by rpc_server.c and rpc_client.c (not a
 * public API: other modules use rpc_server.h / rpc_client.h).
 */
#ifndef AP_RPC_INTERNAL_H
#define AP_RPC_INTERNAL_H

#include <stdint.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

/*
 * Packs `msg` into a new byte buffer without an extra copy (the packed bytes
 * are handed to a slice). The caller destroys the buffer with
 * grpc_byte_buffer_destroy after the batch that sent it completed.
 * Returns NULL on allocation failure.
 */
grpc_byte_buffer *ap_rpc_pack(const ProtobufCMessage *msg);

/*
 * Unpacks a received byte buffer as `desc`. Returns the message (free with
 * protobuf_c_message_free_unpacked(msg, NULL)) or NULL when the bytes do not
 * parse. Does not take ownership of `bb`.
 */
ProtobufCMessage *ap_rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc);

/* Copies a slice into a NUL-terminated malloc'd string (NULL on OOM). */
char *ap_rpc_slice_strdup(grpc_slice s);

/* Realtime deadline `ms` from now; infinite when ms <= 0. */
gpr_timespec ap_rpc_deadline_from_ms(int64_t ms);

/* Milliseconds from now until `deadline` (any clock); INT64_MAX when infinite. */
int64_t ap_rpc_ms_until(gpr_timespec deadline);

#endif
