/*
 * engine.h - the pruner's compute entry points used by the gRPC handlers and
 * the job runner: open a model folder with its tokenizer, measure
 * perplexity, compute the sensitivity profile. Everything here runs on the
 * calling thread; long loops poll `stop` (may be NULL) and return
 * AP_CANCELLED when it says so.
 *
 * Return values are gRPC status codes (rpc_server.h AP_*) with a one-line
 * message in err: AP_INVALID_ARGUMENT for bad models or texts (unsupported
 * architecture, hostile safetensors, empty text...), AP_RESOURCE_EXHAUSTED
 * when memory runs out, AP_INTERNAL otherwise.
 */
#ifndef AP_ENGINE_H
#define AP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "agentprune/v1/pruner.pb-c.h"

typedef int (*engine_stop_fn)(void *arg);

typedef struct {
  engine_stop_fn fn;
  void *arg;
} engine_stop;

/* Perplexity of spec->model_dir on spec->text_path (paths already resolved).
 * Fills res (caller-initialised; res->device points at a static string). */
int engine_evaluate(const Agentprune__V1__EvalSpec *spec, const char *device, int threads,
                    Agentprune__V1__EvalResult *res, const engine_stop *stop, char *err, size_t errlen);

/* Sensitivity table of the dense model. Fills res: res->table and its rows
 * are heap-allocated; release with engine_profile_result_clear. */
int engine_profile(const Agentprune__V1__ProfileSpec *spec, const char *device, int threads,
                   Agentprune__V1__ProfileResult *res, const engine_stop *stop, char *err, size_t errlen);
void engine_profile_result_clear(Agentprune__V1__ProfileResult *res);

#endif
