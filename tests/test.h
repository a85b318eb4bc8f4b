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

/* Each operand is evaluated once: a failure prints the values that failed. */
#define CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                          \
    double t_a_ = (double)(a), t_b_ = (double)(b), t_tol_ = (double)(tol);      \
    CHECKF(fabs(t_a_ - t_b_) <= t_tol_, "%.9g vs %.9g (tol %g)", t_a_, t_b_, t_tol_); \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                      \
  do {                                                                          \
    long long t_a_ = (long long)(a), t_b_ = (long long)(b);                     \
    CHECKF(t_a_ == t_b_, "%s == %s: %lld vs %lld", #a, #b, t_a_, t_b_);         \
  } while (0)

#define CHECK_STR(a, b) CHECKF(strcmp((a), (b)) == 0, "\"%s\" vs \"%s\"", (a), (b))

#define TEST_DONE()                                                             \
  do {                                                                          \
    printf("%d passed, %d failed\n", t_passed, t_failed);                       \
    return t_failed ? 1 : 0;                                                    \
  } while (0)

#endif
