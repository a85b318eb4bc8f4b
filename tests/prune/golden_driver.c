/*
 * golden_driver.c - command-line access to ap_prune for golden_test.py, which
 * compares the results with a torch/numpy reimplementation of locuslab/wanda
 * and luuyin/OWL. Raw little-endian files: weights F32, xsq F64, masks as
 * ap_bitmap words. "-" stands for "none".
 *
 *   rows|layer ROWS COLS TARGET W XSQ|- MASK_IN|- MASK_OUT
 *   nm ROWS COLS N M W XSQ|- MASK_IN|- MASK_OUT
 *   pct ROWS COLS P W XSQ MASK|-            prints the percentile
 *   outlier M NLAYERS {ROWS COLS W XSQ}...  prints the pooled outlier fraction
 *   owl TARGET LAMBDA O1 O2 ...             prints one sparsity per block
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "mask.h"
#include "owl.h"
#include "prune_error.h"
#include "stats.h"

static void *read_file(const char *path, size_t bytes) {
  if (strcmp(path, "-") == 0) return NULL;
  FILE *f = fopen(path, "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
  void *p = calloc(1, bytes ? bytes : 1);
  if (!p || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "short read %s\n", path); exit(2); }
  fclose(f);
  return p;
}

static void fail(int rc) {
  fprintf(stderr, "ap_prune: %s\n", ap_prune_strerror(rc));
  exit(1);
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: see golden_driver.c\n"); return 2; }
  const char *cmd = argv[1];
  if ((!strcmp(cmd, "rows") || !strcmp(cmd, "layer") || !strcmp(cmd, "nm")) && argc == (strcmp(cmd, "nm") ? 9 : 10)) {
    int nm = !strcmp(cmd, "nm");
    size_t rows = strtoull(argv[2], NULL, 10), cols = strtoull(argv[3], NULL, 10), n = rows * cols;
    int a = nm ? 6 : 5;
    float *w = read_file(argv[a], n * 4);
    double *xsq = read_file(argv[a + 1], cols * 8);
    uint64_t *m = read_file(argv[a + 2], ap_bitmap_bytes(n));
    if (!m) m = ap_bitmap_alloc(n);
    int rc;
    ap_mask_report rep;
    if (nm) rc = ap_mask_nm(w, xsq, rows, cols, (unsigned)atoi(argv[4]), (unsigned)atoi(argv[5]), m, &rep);
    else if (!strcmp(cmd, "rows")) rc = ap_mask_rows(w, xsq, rows, cols, atof(argv[4]), m, &rep);
    else rc = ap_mask_layer(w, xsq, rows, cols, atof(argv[4]), m, &rep);
    if (rc) fail(rc);
    FILE *f = fopen(argv[a + 3], "wb");
    if (!f || fwrite(m, 1, ap_bitmap_bytes(n), f) != ap_bitmap_bytes(n)) return 2;
    fclose(f);
    printf("%zu %zu %zu\n", rep.pruned_before, rep.pruned_after, rep.units_over);
    free(w); free(xsq); free(m);
    return 0;
  }
  if (!strcmp(cmd, "pct") && argc == 8) {
    size_t rows = strtoull(argv[2], NULL, 10), cols = strtoull(argv[3], NULL, 10), n = rows * cols;
    ap_layer_ref l = {read_file(argv[5], n * 4), read_file(argv[6], cols * 8), read_file(argv[7], ap_bitmap_bytes(n)),
                      rows, cols};
    double out;
    int rc = ap_stats_score_percentile(&l, atof(argv[4]), &out);
    if (rc) fail(rc);
    printf("%.17g\n", out);
    free((void *)l.w); free((void *)l.xsq); free((void *)l.mask);
    return 0;
  }
  if (!strcmp(cmd, "outlier") && argc >= 4) {
    size_t nl = strtoull(argv[3], NULL, 10);
    if ((size_t)argc != 4 + 4 * nl) return 2;
    ap_layer_ref *l = calloc(nl, sizeof *l);
    for (size_t i = 0; i < nl; i++) {
      char **a = argv + 4 + 4 * i;
      size_t rows = strtoull(a[0], NULL, 10), cols = strtoull(a[1], NULL, 10);
      l[i] = (ap_layer_ref){read_file(a[2], rows * cols * 4), read_file(a[3], cols * 8), NULL, rows, cols};
    }
    double frac;
    int rc = ap_stats_outlier_fraction(l, nl, atof(argv[2]), &frac);
    if (rc) fail(rc);
    printf("%.17g\n", frac);
    for (size_t i = 0; i < nl; i++) { free((void *)l[i].w); free((void *)l[i].xsq); }
    free(l);
    return 0;
  }
  if (!strcmp(cmd, "owl") && argc >= 5) {
    size_t nb = (size_t)argc - 4;
    double *o = malloc(nb * 8), *s = malloc(nb * 8);
    for (size_t i = 0; i < nb; i++) o[i] = atof(argv[4 + i]);
    int rc = ap_owl_sparsities(o, nb, atof(argv[2]), atof(argv[3]), s);
    if (rc) fail(rc);
    for (size_t i = 0; i < nb; i++) printf("%.17g\n", s[i]);
    free(o); free(s);
    return 0;
  }
  fprintf(stderr, "bad command line\n");
  return 2;
}
