/* rpc_codec.c - protobuf-c <-> grpc_byte_buffer, time helpers (see rpc_internal.h). */
#include "rpc_internal.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

grpc_byte_buffer *ap_rpc_pack(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice s;
  if (n == 0) {
    s = grpc_empty_slice();
  } else {
    /* gpr_malloc aborts on OOM, which is the gRPC-wide policy anyway. */
    uint8_t *buf = gpr_malloc(n);
    size_t packed = protobuf_c_message_pack(msg, buf);
    if (packed != n) {
      gpr_free(buf);
      return NULL;
    }
    s = grpc_slice_new(buf, n, gpr_free);
  }
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

ProtobufCMessage *ap_rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc) {
  grpc_byte_buffer_reader reader;
  if (!bb || !grpc_byte_buffer_reader_init(&reader, bb)) return NULL;
  /* readall gives one contiguous slice; protobuf-c cannot parse a slice chain. */
  grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
  ProtobufCMessage *msg =
      protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
  grpc_slice_unref(s);
  grpc_byte_buffer_reader_destroy(&reader);
  return msg;
}

char *ap_rpc_slice_strdup(grpc_slice s) {
  size_t n = GRPC_SLICE_LENGTH(s);
  char *out = malloc(n + 1);
  if (!out) return NULL;
  if (n) memcpy(out, GRPC_SLICE_START_PTR(s), n);
  out[n] = '\0';
  return out;
}

gpr_timespec ap_rpc_deadline_from_ms(int64_t ms) {
  if (ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
  return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int64_t ap_rpc_ms_until(gpr_timespec deadline) {
  if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0) return INT64_MAX;
  /* Server deadlines arrive on the monotonic clock; compare on one clock. */
  gpr_timespec d = gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC);
  gpr_timespec left = gpr_time_sub(d, gpr_now(GPR_CLOCK_MONOTONIC));
  return (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
}
