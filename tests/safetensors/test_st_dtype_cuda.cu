/*
 * test_st_dtype_cuda - the dtype.h conversions compiled for the GPU give the
 * same bits as the host build: exhaustively for the 65536 bf16 and f16
 * patterns, and for 4M random f32 patterns plus constructed ties. Exits 77
 * (ctest SKIP) when no CUDA device is present.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dtype.h"

__global__ static void widen(const uint16_t *h, uint32_t *bf_out, uint32_t *f16_out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    bf_out[i] = ap_f32_bits(ap_bf16_to_f32(h[i]));
    f16_out[i] = ap_f32_bits(ap_f16_to_f32(h[i]));
  }
}

__global__ static void narrow(const float *x, uint16_t *bf, uint16_t *hf, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    bf[i] = ap_f32_to_bf16(x[i]);
    hf[i] = ap_f32_to_f16(x[i]);
  }
}

#define CK(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

int main(void) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  const int NH = 65536, NF = 4 << 20;
  uint16_t *h = (uint16_t *)malloc(NH * 2);
  for (int i = 0; i < NH; i++) h[i] = (uint16_t)i;
  float *x = (float *)malloc((size_t)NF * 4);
  uint64_t r = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < NF; i++) {
    r ^= r << 13; r ^= r >> 7; r ^= r << 17;
    uint32_t b = (uint32_t)(r >> 16);
    if (i % 4 == 1) b = (b & ~0xffffu) | 0x8000u;      /* bf16 tie */
    if (i % 4 == 2) b = (b & ~0x1fffu) | 0x1000u;      /* f16 normal tie */
    if (i % 4 == 3) b = 0x33000000u + (b % 0x14800000u); /* f16 range */
    x[i] = ap_bits_f32(b);
  }
  uint16_t *dh, *dbf, *dhf;
  uint32_t *dw1, *dw2;
  float *dx;
  CK(cudaMalloc(&dh, NH * 2));
  CK(cudaMalloc(&dw1, NH * 4));
  CK(cudaMalloc(&dw2, NH * 4));
  CK(cudaMalloc(&dx, (size_t)NF * 4));
  CK(cudaMalloc(&dbf, (size_t)NF * 2));
  CK(cudaMalloc(&dhf, (size_t)NF * 2));
  CK(cudaMemcpy(dh, h, NH * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dx, x, (size_t)NF * 4, cudaMemcpyHostToDevice));
  widen<<<(NH + 255) / 256, 256>>>(dh, dw1, dw2, NH);
  narrow<<<(NF + 255) / 256, 256>>>(dx, dbf, dhf, NF);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  uint32_t *w1 = (uint32_t *)malloc(NH * 4), *w2 = (uint32_t *)malloc(NH * 4);
  uint16_t *bf = (uint16_t *)malloc((size_t)NF * 2), *hf = (uint16_t *)malloc((size_t)NF * 2);
  CK(cudaMemcpy(w1, dw1, NH * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(w2, dw2, NH * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(bf, dbf, (size_t)NF * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hf, dhf, (size_t)NF * 2, cudaMemcpyDeviceToHost));
  long bad_w = 0, bad_n = 0;
  for (int i = 0; i < NH; i++) {
    bad_w += w1[i] != ap_f32_bits(ap_bf16_to_f32((uint16_t)i));
    bad_w += w2[i] != ap_f32_bits(ap_f16_to_f32((uint16_t)i));
  }
  for (int i = 0; i < NF; i++) bad_n += bf[i] != ap_f32_to_bf16(x[i]) || hf[i] != ap_f32_to_f16(x[i]);
  int passed = (bad_w == 0) + (bad_n == 0), failed = 2 - passed;
  if (bad_w) fprintf(stderr, "FAIL: %ld widening mismatches device vs host\n", bad_w);
  if (bad_n) fprintf(stderr, "FAIL: %ld narrowing mismatches device vs host\n", bad_n);
  cudaFree(dh); cudaFree(dw1); cudaFree(dw2); cudaFree(dx); cudaFree(dbf); cudaFree(dhf);
  free(h); free(x); free(w1); free(w2); free(bf); free(hf);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
