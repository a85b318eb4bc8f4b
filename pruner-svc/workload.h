/*
 * workload.h - the compute steps of a pruning job on one loaded model, shared
 * by the job runner, the Evaluate and Profile handlers and the baselines:
 * tokenised windows (DESIGN.md section 2), perplexity over windows, the
 * sensitivity profile (section 1 step 3), and mask growth per layer.
 *
 * Masks: the workload owns one uint64 bitmap per eligible layer
 * (bitmap.h layout, 1 = pruned) and copies it into the model's byte mask
 * before ap_model_apply_mask; on little-endian hosts the two layouts are the
 * same bytes.
 */
#ifndef AP_WORKLOAD_H
#define AP_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "model.h"
#include "tokenizer.h"

/* Windows of L tokens cut from one text. */
typedef struct {
  int32_t *tokens; /* n * L */
  int n, L;
  int total;       /* windows the whole text holds */
} wl_windows;

typedef struct {
  ap_model *model;
  ap_tokenizer *tok;
  int n_layers;                /* eligible layers that this job may prune */
  int *layer_index;            /* model linear index of each eligible layer */
  uint64_t **masks;            /* per eligible layer, ap_bitmap_words(rows*cols) words */
  int threads;
  const char *device;          /* the device actually used ("cpu", "cuda") */
  double *dense_outlier;       /* per eligible layer, OWL's outlier share in the dense model; NULL = not measured */
} workload;

/* Loads model and tokenizer of `dir`, selects the eligible layers by the
 * include/exclude patterns (NULL or "" = all). Returns a gRPC status code.
 * device: "cpu"; "cuda" (AP_FAILED_PRECONDITION "device cuda: ..." when no
 * CUDA device answers or the build has no CUDA backend; AP_RESOURCE_EXHAUSTED
 * when the model does not fit in GPU memory resident); "auto", NULL or "":
 * CUDA when a device answers and the model fits, else the CPU (logged).
 * w->device says which one runs. The mask selection and statistics of
 * pruner-svc/prune run on the host in every case: on CUDA each layer's
 * working weights are downloaded for them (ap_model_weights_host). */
int wl_open(workload *w, const char *dir, const char *device, int threads, const char *include,
            const char *exclude, char *err, size_t errlen);
void wl_close(workload *w);

/* Device memory limit in bytes for the CUDA backend (0 = none: the device's
 * free memory bounds the plan), process-wide: apk_cuda_set_mem_limit in
 * builds with CUDA, and the bound wl_open checks a model against. */
void wl_set_gpu_mem_limit(uint64_t bytes);

/* Tokenises the text once (BOS where the tokenizer adds one) and takes
 * `want` windows of L tokens (0 = all): the first ones, or with `random`
 * a seeded random choice (splitmix64; reproducible). */
int wl_windows_from_file(workload *w, const char *path, int L, int want, int random, uint64_t seed,
                         wl_windows *out, char *err, size_t errlen);
void wl_windows_free(wl_windows *win);

/* Perplexity over the windows (mean NLL over every predicted token). */
int wl_perplexity(workload *w, const wl_windows *win, const engine_stop *stop, double *ppl, double *nll,
                  int64_t *predicted, char *err, size_t errlen);

/* Current sparsity of eligible layer i, and the global one (weighted). */
double wl_layer_sparsity(const workload *w, int i);
double wl_global_sparsity(const workload *w);
uint64_t wl_layer_params(const workload *w, int i);

/* Copies the mask of eligible layer i into the model and applies it. */
int wl_apply(workload *w, int i, char *err, size_t errlen);

/* Activation statistics (Wanda's ||X_j||^2 sums) of every layer from one
 * forward over `calib` with the current masks. */
int wl_collect_activations(workload *w, const wl_windows *calib, const engine_stop *stop, char *err, size_t errlen);

/* Sequential (block by block) pruning for the one-shot baselines, as the
 * Wanda repository does: the statistics of block b come from the outputs of
 * the already-pruned blocks before it, with block b's own masks lifted while
 * they are measured (so a block grown over several calls is scored as in one
 * shot). Masks only grow: a layer whose target is at or below its sparsity
 * keeps its mask. targets[i] per eligible layer; nm_n/m > 0 selects N:M;
 * magnitude ignores activations. Blocks after the last growing one are not
 * run. */
int wl_prune_sequential(workload *w, const wl_windows *calib, const double *targets, unsigned nm_n, unsigned nm_m,
                        const engine_stop *stop, char *err, size_t errlen);

/* Grows layer i's mask to `target` with Wanda scores from the last
 * wl_collect_activations (or magnitude when magnitude != 0), then applies it. */
int wl_prune_layer(workload *w, int i, double target, unsigned nm_n, unsigned nm_m, int magnitude, char *err,
                   size_t errlen);

/* OWL per-block outlier fractions over the last collected activations. */
int wl_owl_outliers(workload *w, double m, double *frac /* [num_hidden_layers] */, char *err, size_t errlen);

/* Measures every layer's OWL outlier share (M = 5) on the model as it is now
 * (call it before any mask is applied: the dense model, as OWL does) into
 * w->dense_outlier; wl_profile then reports these values in its `outlier`
 * column, so the allocation prior stays fixed over a job and across resumes. */
int wl_measure_dense_outliers(workload *w, const wl_windows *calib, const engine_stop *stop, char *err,
                              size_t errlen);

/* The profile table over the eligible layers with the current masks: one
 * forward over `calib` for activations, `grad_windows` backward passes for
 * the gradient importance. table->layers heap-allocated (wl_table_clear). */
int wl_profile(workload *w, const wl_windows *calib, int grad_windows, const engine_stop *stop,
               Agentprune__V1__ProfileTable *table, char *err, size_t errlen);
void wl_table_clear(Agentprune__V1__ProfileTable *table);

#endif
