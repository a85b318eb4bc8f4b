/* prune_error.c - messages for the ap_prune return codes. */
#include "prune_error.h"

const char *ap_prune_strerror(int code) {
  switch (code) {
  case AP_PRUNE_OK: return "success";
  case AP_PRUNE_EINVAL: return "invalid argument (NULL pointer, empty or mismatched shape, ratio outside [0,1], or N:M with N > M)";
  case AP_PRUNE_ENOMEM: return "out of memory";
  case AP_PRUNE_ENAN: return "non-finite input: a weight or statistic is NaN, or a sum of squares is negative";
  case AP_PRUNE_EMASK: return "inconsistent mask (bits set beyond the matrix, or a mask that lost bits)";
  default: return "unknown error code";
  }
}
