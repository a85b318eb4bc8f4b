/*
 * ap_prune_gpu.h - the pruning kernels on the GPU: Wanda scores, per-row
 * selection to a target count, N:M masks, mask apply / rollback restore and
 * bit counts. The CUDA twins of pruner-svc/prune (mask.h, score.h, bitmap.h):
 * for the same inputs they produce bit-identical masks (same scores in float,
 * same target count floor(t*cols + 0.5), same order: increasing score, then
 * increasing column), which tests/gpu/gpu_ops_check.c verifies on a GPU and
 * tests/kernels_shared verifies on the CPU for the shared element math
 * (kernels/ap_math_ext.h) that both sides use.
 *
 * Memory: every pointer is DEVICE memory, except `rep`. Masks use bitmap.h's
 * layout: ceil(rows*cols/64) uint64 words, bit i of the row-major matrix is
 * bit i%64 of word i/64, 1 = pruned; rows are not padded. Masks only grow.
 * `stream` is a cudaStream_t (apk_cuda_ctx_stream) or NULL for the legacy
 * default stream. Functions that return counts or errors found on the device
 * synchronise the stream; the others are asynchronous.
 *
 * Algorithm of the row selection: one thread block per row; a 4-pass radix
 * select (8-bit digits, shared-memory histograms) finds the need-th smallest
 * surviving score key, then one marking pass prunes keys below it and, in
 * column order (a block-wide prefix count), as many keys equal to it as the
 * quota leaves. Linear in the row, no sort. N:M: one thread per group, the
 * group decision of ap_math_ext.h (apk_nm_group).
 *
 * Defined by kernels/cuda (builds with APK_HAVE_CUDA only).
 */
#ifndef AP_PRUNE_GPU_H
#define AP_PRUNE_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "ap_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Extra return code: a NaN (or negative) statistic or a NaN score where
 * pruning needed it (the CPU library's AP_PRUNE_ENAN). */
#define APK_ENAN (-6)

typedef struct apk_prune_gpu_report {
  uint64_t pruned_before; /* bits set on entry */
  uint64_t pruned_after;  /* bits set on return */
  uint64_t units_over;    /* rows (or N:M groups) that already had more than the target */
} apk_prune_gpu_report;

/* norms[j] = (float)sqrt(xsq[j]), j < cols. APK_ENAN when an xsq is NaN or
 * negative (synchronises). APK_EINVAL for NULL or cols <= 0. */
int apk_gpu_wanda_norms(float *norms, const double *xsq, int64_t cols, void *stream);

/* scores[r,c] = |w[r,c]| * norms[c] (norms NULL: |w|), in float, as score.h. */
int apk_gpu_wanda_scores(float *scores, const float *w, const float *norms, int64_t rows, int64_t cols,
                         void *stream);

/* Grows every row of `mask` to floor(target*cols + 0.5) pruned weights,
 * pruning surviving weights in increasing (score, column) order; score from
 * w and norms as above (norms NULL: magnitude). Rows that already have more
 * are left and counted in rep->units_over. A row that needs pruning and has
 * a NaN score among its survivors is left unchanged and the call returns
 * APK_ENAN (other rows are still pruned), as ap_mask_rows. rep may be NULL.
 * Errors: APK_EINVAL (NULL, rows/cols <= 0, target outside [0,1] or NaN),
 * APK_ENAN, APK_EDEVICE, APK_ENOMEM. Synchronises. */
int apk_gpu_mask_rows(uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols, double target,
                      apk_prune_gpu_report *rep, void *stream);

/* N:M (mask.h convention: n PRUNED of every m consecutive weights of a row,
 * groups from column 0, a short tail group prunes min(n, its length)).
 * APK_ENAN when a group that needed pruning holds a NaN score (it is pruned
 * anyway, NaN ordering last, as ap_mask_nm). Errors: APK_EINVAL (n > m, m
 * outside [1,64], sizes), APK_ENAN, APK_EDEVICE, APK_ENOMEM. Synchronises. */
int apk_gpu_mask_nm(uint64_t *mask, const float *w, const float *norms, int64_t rows, int64_t cols, unsigned n,
                    unsigned m, apk_prune_gpu_report *rep, void *stream);

/* *count (host) = set bits among the first nbits. Synchronises. */
int apk_gpu_mask_count(const uint64_t *mask, uint64_t nbits, uint64_t *count, void *stream);

/* work[i] = bit i ? 0 : orig[i] (orig as `orig_dtype`: APK_F32, APK_F16 or
 * APK_BF16, converted exactly to F32). mask NULL: work = orig. */
int apk_gpu_mask_apply(float *work, const void *orig, apk_dtype orig_dtype, const uint64_t *mask, uint64_t n,
                       void *stream);

/* Rollback from mask `newer` to its subset `older`: work[i] = orig[i] where
 * newer has bit i and older has not; nothing else is written. (Whether older
 * is a subset is the caller's check: bitmap.h's ap_bitmap_is_superset on
 * the host copies.) */
int apk_gpu_mask_restore(float *work, const void *orig, apk_dtype orig_dtype, const uint64_t *newer,
                         const uint64_t *older, uint64_t n, void *stream);

#ifdef __cplusplus
}
#endif
#endif
