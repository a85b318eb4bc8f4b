/*
 * test.h - the minimal assertion helpers of our C tests. Each test program
 * runs its cases, prints one line per failure, and ends with
 * "N passed, N failed"; its exit status is non-zero when anything failed.
 */
#ifndef AP_TEST_H
#define AP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (cond) t_passed++;                                                       \
    else { t_failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
  } while (0)

#define CHECKF(cond, ...)                                                       \
  do {                                                                          \
    if (cond) t_passed++;                                                       \
    else { t_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); }                 \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
  CHECKF(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a), (double)(b), (double)(tol))

#define CHECK_EQ_INT(a, b) CHECKF((long long)(a) == (long long)(b), "%lld vs %lld", (long long)(a), (long long)(b))

#define CHECK_STR(a, b) CHECKF(strcmp((a), (b)) == 0, "\"%s\" vs \"%s\"", (a), (b))

#define TEST_DONE()                                                             \
  do {                                                                          \
    printf("%d passed, %d failed\n", t_passed, t_failed);                       \
    return t_failed ? 1 : 0;                                                    \
  } while (0)

#endif
