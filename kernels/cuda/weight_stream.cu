/*
 * weight_stream.cu - double-buffered upload of per-block weights from host
 * memory (ap_cuda.h, apk_wstream). A copy stream of its own carries the
 * uploads; events order them against the context's compute stream both ways:
 *   copied[slot]:   recorded on the copy stream after block b's upload;
 *                   the compute stream waits on it in acquire(b);
 *   released[slot]: recorded on the compute stream in release(b); the copy
 *                   stream waits on it before overwriting the slot.
 * The host never blocks, so upload of block b+1 runs while block b computes.
 */
#include <stdlib.h>

#include "cuda_common.cuh"

#define MAX_SLOTS 4

struct apk_wstream {
  cuda_state *st;
  cudaStream_t copy;
  int n_slots;
  size_t slot_bytes;
  void *slot[MAX_SLOTS];
  int block_in[MAX_SLOTS];  /* block held by each slot, -1 = none */
  int acquired[MAX_SLOTS];
  int used[MAX_SLOTS];      /* a release event was recorded at least once */
  cudaEvent_t copied[MAX_SLOTS], released[MAX_SLOTS];
  uint64_t bytes;
};

extern "C" void apk_wstream_destroy(apk_wstream *ws) {
  if (!ws) return;
  if (ws->copy) cudaStreamSynchronize(ws->copy);
  if (ws->st) cudaStreamSynchronize(ws->st->stream);
  for (int i = 0; i < MAX_SLOTS; i++) {
    if (ws->slot[i]) {
      cudaFree(ws->slot[i]);
      cu_mem_give(ws->slot_bytes);
    }
    if (ws->copied[i]) cudaEventDestroy(ws->copied[i]);
    if (ws->released[i]) cudaEventDestroy(ws->released[i]);
  }
  if (ws->copy) cudaStreamDestroy(ws->copy);
  free(ws);
}

extern "C" int apk_wstream_create(apk_ctx *ctx, size_t max_block_bytes, int n_slots, apk_wstream **out) {
  *out = NULL;
  cuda_state *st = cu_state_of_ctx(ctx);
  if (!st) return APK_EINVAL;
  if (n_slots < 1 || n_slots > MAX_SLOTS || max_block_bytes == 0)
    return apk_fail(APK_EINVAL, "wstream: n_slots must be 1..%d and max_block_bytes > 0", MAX_SLOTS);
  apk_wstream *ws = (apk_wstream *)calloc(1, sizeof *ws);
  if (!ws) return apk_fail(APK_ENOMEM, "wstream: out of host memory");
  ws->st = st;
  ws->n_slots = n_slots;
  ws->slot_bytes = max_block_bytes;
  int rc = APK_OK;
  cudaError_t e = cudaStreamCreateWithFlags(&ws->copy, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    rc = cu_fail(e, "wstream copy stream");
    goto fail;
  }
  for (int i = 0; i < n_slots; i++) {
    ws->block_in[i] = -1;
    if ((rc = cu_mem_take(max_block_bytes, "weight stream slot"))) goto fail;
    if ((e = cudaMalloc(&ws->slot[i], max_block_bytes)) != cudaSuccess) {
      cu_mem_give(max_block_bytes);
      rc = cu_fail(e, "weight stream slot");
      goto fail;
    }
    if ((e = cudaEventCreateWithFlags(&ws->copied[i], cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&ws->released[i], cudaEventDisableTiming)) != cudaSuccess) {
      rc = cu_fail(e, "weight stream events");
      goto fail;
    }
  }
  *out = ws;
  return APK_OK;
fail:
  apk_wstream_destroy(ws);
  return rc;
}

static int slot_of(const apk_wstream *ws, int block) {
  for (int i = 0; i < ws->n_slots; i++)
    if (ws->block_in[i] == block) return i;
  return -1;
}

extern "C" int apk_wstream_prefetch(apk_wstream *ws, int block, const void *host, size_t bytes) {
  if (!ws || !host || block < 0) return apk_fail(APK_EINVAL, "wstream_prefetch: bad arguments");
  if (bytes > ws->slot_bytes)
    return apk_fail(APK_EINVAL, "wstream_prefetch: block %d has %zu bytes, slots hold %zu", block, bytes,
                    ws->slot_bytes);
  /* Always copies, even when the slot still holds this block from an earlier
   * pass: the host bytes (masks) may have changed since. Blocks are used in
   * order, so the slot of block - n_slots is the one to refill. */
  int s = block % ws->n_slots;
  if (ws->acquired[s])
    return apk_fail(APK_EINVAL, "wstream_prefetch: slot of block %d still holds acquired block %d", block,
                    ws->block_in[s]);
  cudaError_t e = cudaSuccess;
  if (ws->used[s]) e = cudaStreamWaitEvent(ws->copy, ws->released[s], 0);
  if (e == cudaSuccess) e = cudaMemcpyAsync(ws->slot[s], host, bytes, cudaMemcpyHostToDevice, ws->copy);
  if (e == cudaSuccess) e = cudaEventRecord(ws->copied[s], ws->copy);
  if (e != cudaSuccess) return cu_fail(e, "wstream prefetch");
  ws->block_in[s] = block;
  ws->bytes += bytes;
  return APK_OK;
}

extern "C" int apk_wstream_acquire(apk_wstream *ws, int block, void **dev) {
  if (!ws || !dev) return apk_fail(APK_EINVAL, "wstream_acquire: bad arguments");
  int s = slot_of(ws, block);
  if (s < 0) return apk_fail(APK_EINVAL, "wstream_acquire: block %d was not prefetched", block);
  cudaError_t e = cudaStreamWaitEvent(ws->st->stream, ws->copied[s], 0);
  if (e != cudaSuccess) return cu_fail(e, "wstream acquire");
  ws->acquired[s] = 1;
  *dev = ws->slot[s];
  return APK_OK;
}

extern "C" int apk_wstream_release(apk_wstream *ws, int block) {
  if (!ws) return apk_fail(APK_EINVAL, "wstream_release: NULL");
  int s = slot_of(ws, block);
  if (s < 0 || !ws->acquired[s]) return apk_fail(APK_EINVAL, "wstream_release: block %d is not acquired", block);
  cudaError_t e = cudaEventRecord(ws->released[s], ws->st->stream);
  if (e != cudaSuccess) return cu_fail(e, "wstream release");
  ws->acquired[s] = 0;
  ws->used[s] = 1;
  return APK_OK;
}

extern "C" uint64_t apk_wstream_bytes(const apk_wstream *ws) { return ws ? ws->bytes : 0; }
