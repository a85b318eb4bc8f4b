/*
 * export.h - writing a pruned model as a Hugging Face folder: every
 * non-weight file of the input (config.json, tokenizer files, ...) copied,
 * and the weights in the input dtype with exact zeros at pruned positions,
 * sharded like the input (with a valid model.safetensors.index.json when the
 * input had one). agentprune.json and report.html are added by the runner.
 */
#ifndef AP_EXPORT_H
#define AP_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

typedef struct {
  const char *name;        /* HF name without ".weight", e.g. model.layers.0.mlp.up_proj */
  const uint64_t *mask;    /* rows*cols bits, row-major, 1 = pruned */
  size_t rows, cols;
} export_layer;

/*
 * Writes out_dir (created when missing; it must be empty) from the opened
 * input `st` of model_dir and the layer masks. Weights not listed are copied
 * unchanged. Returns 0, or -1 with a message in err (a listed layer missing
 * from the input or with another shape, I/O errors). Other weight formats of
 * the input (*.bin, *.pt, *.pth, *.gguf) are not copied: they would contradict
 * the pruned weights.
 */
int export_model(const char *model_dir, const ap_st *st, const export_layer *layers, size_t n_layers,
                 const char *out_dir, char *err, size_t errlen);

#endif
