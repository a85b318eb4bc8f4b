/* owl.c - OWL ratio mapping; formula and source in owl.h. */
#include "owl.h"

#include "prune_error.h"

int ap_owl_sparsities(const double *outlier, size_t nblocks, double target, double lambda, double *sparsity) {
  if (!outlier || !sparsity || nblocks == 0) return AP_PRUNE_EINVAL;
  if (!(target >= 0.0 && target <= 1.0) || !(lambda >= 0.0)) return AP_PRUNE_EINVAL;
  double lo = outlier[0], hi = outlier[0];
  for (size_t i = 0; i < nblocks; i++) {
    if (outlier[i] != outlier[i]) return AP_PRUNE_ENAN;
    if (outlier[i] < lo) lo = outlier[i];
    if (outlier[i] > hi) hi = outlier[i];
  }
  if (hi == lo) {
    for (size_t i = 0; i < nblocks; i++) sparsity[i] = target;
    return AP_PRUNE_OK;
  }
  /* same operation order as the numpy expression, so results match bit for bit in practice */
  double scale = 1.0 / (hi - lo) * lambda * 2.0;
  double mean = 0.0;
  for (size_t i = 0; i < nblocks; i++) {
    sparsity[i] = (outlier[i] - lo) * scale; /* r_i, reused as storage */
    mean += sparsity[i];
  }
  mean /= (double)nblocks;
  for (size_t i = 0; i < nblocks; i++) {
    double density = sparsity[i] - mean + (1.0 - target);
    double s = 1.0 - density;
    if (s <= 0.0) s = 0.01;
    if (s > 1.0) s = 1.0;
    sparsity[i] = s;
  }
  return AP_PRUNE_OK;
}
