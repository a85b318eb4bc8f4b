/*
 * rope_tables.c - host-side cos/sin tables for rotary embeddings.
 *
 * Follows Hugging Face's float32 pipeline (modeling_rope_utils.py):
 * inv_freq = 1 / theta^(2i/D) in float32, angle = float32(pos) * inv_freq in
 * float32, cos/sin of that angle. Doing the same roundings keeps our angles
 * identical to HF's at long positions, where a double-precision angle would
 * differ by up to an ulp of the float angle (~1e-4 rad at position 2000).
 */
#include <math.h>

#include "ap_kernels.h"

static float llama3_adjust(float inv_freq, const apk_rope_scaling *s) {
  double pi = 3.14159265358979323846;
  double old_len = s->original_max_position;
  double low_wavelen = old_len / s->low_freq_factor;
  double high_wavelen = old_len / s->high_freq_factor;
  double wavelen = 2.0 * pi / (double)inv_freq;
  if (wavelen > low_wavelen) return (float)((double)inv_freq / s->factor);
  if (wavelen < high_wavelen) return inv_freq;
  double smooth = (old_len / wavelen - s->low_freq_factor) / (s->high_freq_factor - s->low_freq_factor);
  return (float)((1.0 - smooth) * (double)inv_freq / s->factor + smooth * (double)inv_freq);
}

void apk_rope_tables(float *cos_out, float *sin_out, int T, int D, double theta, const apk_rope_scaling *scaling) {
  int half = D / 2;
  for (int i = 0; i < half; i++) {
    float expo = (float)(2 * i) / (float)D;
    float inv_freq = 1.0f / powf((float)theta, expo);
    if (scaling && scaling->type == 1) inv_freq = llama3_adjust(inv_freq, scaling);
    for (int t = 0; t < T; t++) {
      float angle = (float)t * inv_freq;
      cos_out[(long)t * half + i] = (float)cos((double)angle);
      sin_out[(long)t * half + i] = (float)sin((double)angle);
    }
  }
}
