/*
 * fixture.h - starting and stopping rpc_test_server from the C tests.
 * Header-only (static functions) because each test program is one file.
 */
#ifndef AP_TEST_FIXTURE_H
#define AP_TEST_FIXTURE_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef struct {
  pid_t pid;
  int port;
  char addr[64];
} fixture;

static double fx_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void fx_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/*
 * Spawns `exe` with the NULL-terminated extra args and waits up to 60 s
 * (valgrind start-up is slow) for its "PORT <n>" line. Returns 0 and fills
 * *fx, or -1 (the child is killed).
 */
static int fixture_start(fixture *fx, const char *exe, const char *const *extra) {
  memset(fx, 0, sizeof *fx);
  int pipefd[2];
  if (pipe(pipefd) != 0) return -1;
  const char *argv[32];
  int argc = 0;
  argv[argc++] = exe;
  for (int i = 0; extra && extra[i] && argc < 31; i++) argv[argc++] = extra[i];
  argv[argc] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_addclose(&fa, pipefd[0]);
  posix_spawn_file_actions_addclose(&fa, pipefd[1]);
  int rc = posix_spawn(&fx->pid, exe, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pipefd[1]);
  if (rc != 0) {
    close(pipefd[0]);
    fprintf(stderr, "fixture: cannot spawn %s: %s\n", exe, strerror(rc));
    return -1;
  }
  char line[256];
  size_t len = 0;
  double t0 = fx_now_ms();
  while (fx_now_ms() - t0 < 60000) {
    struct pollfd p = {pipefd[0], POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    ssize_t n = read(pipefd[0], line + len, sizeof line - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
    line[len] = '\0';
    char *nl = strchr(line, '\n');
    if (nl && sscanf(line, "PORT %d", &fx->port) == 1) break;
    if (len == sizeof line - 1) break;
  }
  close(pipefd[0]);
  if (fx->port <= 0) {
    fprintf(stderr, "fixture: %s printed no port\n", exe);
    kill(fx->pid, SIGKILL);
    waitpid(fx->pid, NULL, 0);
    return -1;
  }
  snprintf(fx->addr, sizeof fx->addr, "127.0.0.1:%d", fx->port);
  return 0;
}

/* Waits up to timeout_ms for the child; returns its wait status, or -1 (then kills it). */
static int fixture_wait(fixture *fx, int timeout_ms) {
  double t0 = fx_now_ms();
  for (;;) {
    int status;
    pid_t r = waitpid(fx->pid, &status, WNOHANG);
    if (r == fx->pid) return status;
    if (fx_now_ms() - t0 > timeout_ms) break;
    fx_sleep_ms(10);
  }
  kill(fx->pid, SIGKILL);
  waitpid(fx->pid, NULL, 0);
  return -1;
}

/* SIGTERM, then wait; returns 1 when it exited with status 0. */
static int fixture_stop(fixture *fx, int timeout_ms) {
  kill(fx->pid, SIGTERM);
  int st = fixture_wait(fx, timeout_ms);
  if (st == -1) fprintf(stderr, "fixture: pid %d did not exit in %d ms\n", (int)fx->pid, timeout_ms);
  else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fprintf(stderr, "fixture: pid %d ended with status 0x%x\n", (int)fx->pid, st);
  return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

#endif
