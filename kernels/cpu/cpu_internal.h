/*
 * cpu_internal.h - what the files of the CPU backend share (internal to
 * kernels/cpu; the public interface is ap_kernels.h).
 *
 * The backend's per-context state records which code path its ops take:
 * AVX2+FMA kernels (simd_math.h) when the processor has them, scalar loops
 * otherwise. APK_CPU_SIMD=0 in the environment at context creation forces
 * the scalar loops (the tests run both paths on one machine).
 */
#ifndef AP_CPU_INTERNAL_H
#define AP_CPU_INTERNAL_H

#include <stdint.h>

/* Below this many elements of work an op runs on one thread: forking the
 * team costs more than it saves, and far more when the other core is busy
 * (the team's barrier then waits for a descheduled thread). */
#define APK_CPU_PAR_MIN 32768

typedef struct apk_cpu_state {
  int simd; /* 1: AVX2+FMA kernels; 0: scalar */
} apk_cpu_state;

static inline int apk_cpu_simd(const void *state) { return state && ((const apk_cpu_state *)state)->simd; }

/* The attention entries of the backend table (ap_backend.h), in cpu_attention.c. */
int apk_cpu_attention_forward(void *state, float *out, float *lse, const float *q, const float *k, const float *v,
                              int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D);
int apk_cpu_attention_backward(void *state, float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse, int64_t B,
                               int64_t T, int64_t H, int64_t KVH, int64_t D);

#endif
