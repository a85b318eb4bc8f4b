#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc_server.h"
#include "workload.h"

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int engine_evaluate(const Agentprune__V1__EvalSpec *spec, const char *device, int threads,
                    Agentprune__V1__EvalResult *res, const engine_stop *stop, char *err, size_t errlen) {
  workload w;
  int rc = wl_open(&w, spec->model_dir, device, threads, NULL, NULL, err, errlen);
  if (rc != AP_OK) return rc;
  int L = spec->ctx ? (int)spec->ctx : ap_model_default_ctx(w.model);
  wl_windows win;
  rc = wl_windows_from_file(&w, spec->text_path, L, (int)spec->windows, 0, 0, &win, err, errlen);
  if (rc == AP_OK) {
    double t0 = seconds_now();
    int64_t predicted = 0;
    rc = wl_perplexity(&w, &win, stop, &res->ppl, &res->nll, &predicted, err, errlen);
    double dt = seconds_now() - t0;
    res->tokens = (uint64_t)predicted;
    res->windows = (uint32_t)win.n;
    res->ctx = (uint32_t)L;
    res->seconds = dt;
    res->tokens_per_s = dt > 0 ? (double)win.n * L / dt : 0;
    res->device = (char *)w.device;
    wl_windows_free(&win);
  }
  wl_close(&w);
  return rc;
}

int engine_profile(const Agentprune__V1__ProfileSpec *spec, const char *device, int threads,
                   Agentprune__V1__ProfileResult *res, const engine_stop *stop, char *err, size_t errlen) {
  workload w;
  int rc = wl_open(&w, spec->model_dir, device, threads, spec->include_pattern, spec->exclude_pattern, err, errlen);
  if (rc != AP_OK) return rc;
  int L = spec->ctx ? (int)spec->ctx : ap_model_default_ctx(w.model);
  int cw = spec->calib_windows ? (int)spec->calib_windows : 128;
  int gw = spec->grad_windows ? (int)spec->grad_windows : 16;
  wl_windows win;
  rc = wl_windows_from_file(&w, spec->calib_path, L, cw, spec->sample && !strcmp(spec->sample, "random"),
                            spec->seed, &win, err, errlen);
  if (rc == AP_OK) {
    double t0 = seconds_now();
    Agentprune__V1__ProfileTable *table = malloc(sizeof *table);
    if (!table) {
      snprintf(err, errlen, "out of memory");
      rc = AP_RESOURCE_EXHAUSTED;
    } else {
      agentprune__v1__profile_table__init(table);
      rc = wl_profile(&w, &win, gw, stop, table, err, errlen);
      if (rc == AP_OK) {
        res->table = table;
        res->seconds = seconds_now() - t0;
        res->calib_windows = (uint32_t)win.n;
        res->ctx = (uint32_t)L;
      } else {
        free(table);
      }
    }
    wl_windows_free(&win);
  }
  wl_close(&w);
  return rc;
}

void engine_profile_result_clear(Agentprune__V1__ProfileResult *res) {
  if (res->table) {
    wl_table_clear(res->table);
    free(res->table);
    res->table = NULL;
  }
}
