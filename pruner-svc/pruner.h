/*
 * pruner.h - the state of one pruner-svc process, shared by its gRPC
 * handlers (service.c) and its job runners (runner.c).
 */
#ifndef AP_PRUNER_H
#define AP_PRUNER_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>

#include "job_store.h"
#include "rpc_server.h"

#define PRUNER_MAX_ROOTS 16

typedef struct job_runner job_runner;

typedef struct pruner {
  /* configuration (immutable after start) */
  const char *roots[PRUNER_MAX_ROOTS];  /* data roots: every request path must lie inside one */
  size_t n_roots;
  char data_dir[PATH_MAX];              /* LMDB store of jobs and checkpoints */
  const char *agent_addr;               /* default agent for jobs that name none; may be "" */
  const char *device;                   /* auto | cpu | cuda */
  int max_running;                      /* jobs running at once (one per GPU) */
  int threads;                          /* compute threads (0 = all cores) */

  ap_js *store;
  ap_rpc_server *srv;

  /* running jobs (runner.c) */
  pthread_mutex_t lock;
  pthread_cond_t changed;
  job_runner *runners;                  /* linked list */
  int running;
  int stopping;
} pruner;

/* ---- runner.c ------------------------------------------------------------ */

/* Starts (or queues, when max_running jobs already run) the runner of a
 * stored job; used for new jobs and for unfinished jobs at start-up.
 * Returns 0, or a gRPC status code with a message in err. */
int jobs_start(pruner *p, const char *job_id, char *err, size_t errlen);

/* Asks the runner of job_id to stop at its next safe point and mark the job
 * cancelled (keeping its last accepted checkpoint). Returns 1 when a runner
 * was found, 0 when the job is not running. */
int jobs_cancel(pruner *p, const char *job_id);

/* Resumes every unfinished job of the store (start-up). */
void jobs_resume_all(pruner *p);

/* Stops every runner at its next safe point WITHOUT marking jobs finished
 * (they resume after a restart), and waits for them. */
void jobs_shutdown(pruner *p);

/* ---- service.c ----------------------------------------------------------- */

/* Registers the Pruner service's methods on p->srv. Returns 0 or -1. */
int pruner_register_service(pruner *p);

#endif
