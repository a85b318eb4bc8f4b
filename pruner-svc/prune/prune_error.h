/*
 * prune_error.h - return codes shared by every ap_prune module.
 *
 * All functions of the pruning library return 0 on success and one of the
 * negative codes below on bad input or resource failure; they never abort on
 * bad input. ap_prune_strerror() turns a code into one sentence for the user.
 */
#ifndef AP_PRUNE_ERROR_H
#define AP_PRUNE_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
  AP_PRUNE_OK = 0,
  AP_PRUNE_EINVAL = -1,  /* a NULL pointer, a zero or mismatched size, a ratio outside [0,1], N > M */
  AP_PRUNE_ENOMEM = -2,  /* an allocation failed */
  AP_PRUNE_ENAN = -3,    /* a weight, activation statistic or value is NaN (or a sum of squares is negative) */
  AP_PRUNE_EMASK = -4    /* a mask is inconsistent with the request (a bit beyond the end, a mask that shrank) */
};

/*
 * Returns a static, human-readable sentence for a code returned by this
 * library ("unknown error code" for anything else). Never NULL; not freed.
 */
const char *ap_prune_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
