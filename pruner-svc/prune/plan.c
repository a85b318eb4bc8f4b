/* plan.c - baseline per-layer targets (see plan.h). */
#include "plan.h"

#include "prune_error.h"

static int in_unit(double x) { return x >= 0.0 && x <= 1.0; }

static int check_layers(const ap_plan_layer *layers, size_t n, const double *targets) {
  if (!layers || !targets || n == 0) return AP_PRUNE_EINVAL;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (!in_unit(layers[i].rho)) return AP_PRUNE_EINVAL;
    total += layers[i].params;
  }
  return total ? AP_PRUNE_OK : AP_PRUNE_EINVAL;
}

/* Parameter-weighted sparsity when every layer goes to max(t, rho). */
static double global_at(const ap_plan_layer *layers, size_t n, double t) {
  double p = 0.0, all = 0.0;
  for (size_t i = 0; i < n; i++) {
    double s = layers[i].rho > t ? layers[i].rho : t;
    p += s * (double)layers[i].params;
    all += (double)layers[i].params;
  }
  return p / all;
}

static double finish(const ap_plan_layer *layers, size_t n, double *targets) {
  double p = 0.0, all = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (layers[i].rho > targets[i]) targets[i] = layers[i].rho;
    p += targets[i] * (double)layers[i].params;
    all += (double)layers[i].params;
  }
  return p / all;
}

int ap_plan_uniform(const ap_plan_layer *layers, size_t n, double target, int compensate, double *targets,
                    double *global) {
  int rc = check_layers(layers, n, targets);
  if (rc) return rc;
  if (!in_unit(target)) return AP_PRUNE_EINVAL;
  double t = target;
  if (compensate && global_at(layers, n, target) > target) {
    /* global_at is continuous and non-decreasing in t: bisect for target */
    double lo = 0.0, hi = target;
    if (global_at(layers, n, 0.0) >= target) {
      hi = 0.0; /* already there: nobody needs to move */
    } else {
      while (hi - lo > 1e-12) {
        double mid = 0.5 * (lo + hi);
        if (global_at(layers, n, mid) < target) lo = mid;
        else hi = mid;
      }
    }
    t = hi;
  }
  for (size_t i = 0; i < n; i++) targets[i] = t;
  double g = finish(layers, n, targets);
  if (global) *global = g;
  return AP_PRUNE_OK;
}

int ap_plan_owl(const ap_plan_layer *layers, size_t n, const double *block_sparsity, size_t nblocks,
                double *targets, double *global) {
  int rc = check_layers(layers, n, targets);
  if (rc) return rc;
  if (!block_sparsity) return AP_PRUNE_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (layers[i].block >= nblocks || !in_unit(block_sparsity[layers[i].block])) return AP_PRUNE_EINVAL;
    targets[i] = block_sparsity[layers[i].block];
  }
  double g = finish(layers, n, targets);
  if (global) *global = g;
  return AP_PRUNE_OK;
}
