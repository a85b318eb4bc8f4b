/*
 * test_restart.c - agent-svc as a child process: 16 pruner-like client
 * threads run sessions; the agent is killed with SIGKILL in the middle of
 * the run and restarted on the same data directory. Every session comes back
 * with its whole history: every decision and outcome a client saw
 * acknowledged is stored, byte for byte, and the sessions continue (a retried
 * Decide of an unreflected iteration gets the stored decision). Finally
 * SIGTERM stops the agent cleanly (exit status 0).
 *
 * Usage: agent_test_restart /path/to/agent-svc
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../test.h"
#include "agent_client.h"
#include "rpc_server.h"

#define N_SESS 16
#define MAX_IT 40

static const char *agent_bin;
static char data_dir[256], port_file[300], log_file[300];

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Starts agent-svc and waits for its port file. Returns the pid, port in *port. */
static pid_t start_agent(int *port) {
  unlink(port_file);
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log_file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    execl(agent_bin, "agent-svc", "--listen", "127.0.0.1:0", "--port-file", port_file, "--data-dir", data_dir,
          "--log-level", "warn", "--grace-ms", "3000", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 300; i++) {
    FILE *f = fopen(port_file, "r");
    if (f) {
      int p = 0;
      int ok = fscanf(f, "%d", &p) == 1;
      fclose(f);
      if (ok && p > 0) {
        *port = p;
        return pid;
      }
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return -1;
    sleep_ms(50);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

typedef struct {
  int idx;
  char job[32], sid[40];
  ap_rpc_client *c;
  /* What the client saw acknowledged. */
  Agentprune__V1__Decision *decided[MAX_IT + 1];
  Agentprune__V1__Outcome reflected[MAX_IT + 1];
  char notes[MAX_IT + 1][48];
  int n_decided, n_reflected;
  Agentprune__V1__ProfileTable *t;
} sess;

static sess S[N_SESS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int acked_ops;

static void free_msg(void *m) {
  if (m) protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
}

static void *worker(void *p) {
  sess *s = p;
  ap_rpc_status st;
  Agentprune__V1__DecideRequest *req = fx_request(s->sid, 1, s->t, 0.6);
  for (uint32_t it = 1; it <= MAX_IT; it++) {
    req->iteration = req->state->iteration = it;
    req->state->global_sparsity = fx_global(s->t);
    Agentprune__V1__Decision *d = NULL;
    if (ac_decide(s->c, req, &d, &st) != AP_OK) break; /* the agent died */
    s->decided[it] = d;
    s->n_decided = (int)it;
    ac_apply(s->t, d);
    snprintf(s->notes[it], sizeof s->notes[it], "%s/%u", s->job, it);
    Agentprune__V1__Outcome o = AGENTPRUNE__V1__OUTCOME__INIT;
    o.session_id = s->sid;
    o.iteration = it;
    o.accepted = it % 4 != 0;
    o.ppl_before = 10 + it;
    o.ppl_after = 10.2 + it;
    o.global_sparsity = fx_global(s->t);
    o.note = s->notes[it];
    Agentprune__V1__Ack *ack = NULL;
    pthread_mutex_lock(&mu);
    acked_ops++;
    pthread_mutex_unlock(&mu);
    if (ac_reflect(s->c, &o, &ack, &st) != AP_OK) break;
    free_msg(ack);
    s->reflected[it] = o;
    s->n_reflected = (int)it;
    pthread_mutex_lock(&mu);
    acked_ops++;
    pthread_mutex_unlock(&mu);
  }
  req->profile = NULL;
  free_msg(req);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s /path/to/agent-svc\n", argv[0]);
    return 2;
  }
  agent_bin = argv[1];
  char root[] = "/tmp/ap-agent-restart-XXXXXX";
  if (!mkdtemp(root)) return 1;
  snprintf(data_dir, sizeof data_dir, "%s/data", root);
  snprintf(port_file, sizeof port_file, "%s/port", root);
  snprintf(log_file, sizeof log_file, "%s/agent.log", root);

  int port = 0;
  pid_t pid = start_agent(&port);
  CHECK(pid > 0);
  if (pid <= 0) TEST_DONE();
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  ap_rpc_status st;
  for (int i = 0; i < N_SESS; i++) {
    S[i].idx = i;
    S[i].c = c;
    snprintf(S[i].job, sizeof S[i].job, "restart-%02d", i);
    Agentprune__V1__Session *se = NULL;
    CHECK_EQ_INT(ac_open(c, S[i].job, "", 0.6, &se, &st), AP_OK);
    snprintf(S[i].sid, sizeof S[i].sid, "%s", se ? se->session_id : "");
    free_msg(se);
    S[i].t = fx_table(4, 0);
    uint64_t rng = 77 + (uint64_t)i;
    for (size_t k = 0; k < S[i].t->n_layers; k++) S[i].t->layers[k]->z_s = fx_normal(&rng);
  }
  pthread_t th[N_SESS];
  for (int i = 0; i < N_SESS; i++) pthread_create(&th[i], NULL, worker, &S[i]);
  /* Kill -9 mid-run: after some progress, well before the sessions finish. */
  for (int waited = 0; waited < 30000; waited += 10) {
    pthread_mutex_lock(&mu);
    int n = acked_ops;
    pthread_mutex_unlock(&mu);
    if (n >= N_SESS * 12) break;
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  for (int i = 0; i < N_SESS; i++) pthread_join(th[i], NULL);
  ap_rpc_client_free(c);
  int unfinished = 0, total_decided = 0;
  for (int i = 0; i < N_SESS; i++) {
    total_decided += S[i].n_decided;
    if (S[i].n_decided < MAX_IT) unfinished++;
  }
  CHECKF(unfinished == N_SESS, "%d of %d sessions were still running at the kill", unfinished, N_SESS);
  printf("killed after %d acknowledged decisions\n", total_decided);

  /* The startup line on stderr. */
  FILE *lf = fopen(log_file, "r");
  char line[512];
  int saw_line = 0;
  while (lf && fgets(line, sizeof line, lf))
    if (strstr(line, "agent-svc listening on 127.0.0.1:0 port ")) saw_line = 1;
  if (lf) fclose(lf);
  CHECK(saw_line);

  pid = start_agent(&port);
  CHECK(pid > 0);
  if (pid <= 0) TEST_DONE();
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  c = ap_rpc_client_new(addr, NULL);
  int missing = 0, differ = 0, continued = 0;
  for (int i = 0; i < N_SESS; i++) {
    sess *s = &S[i];
    Agentprune__V1__Session *se = NULL;
    CHECK_EQ_INT(ac_open(c, s->job, "", 0.6, &se, &st), AP_OK);
    if (se) CHECK_STR(se->session_id, s->sid);
    free_msg(se);
    Agentprune__V1__History *h = NULL;
    if (ac_history(c, s->sid, &h, &st) != AP_OK || !h) {
      missing++;
      continue;
    }
    /* Stored may run one ahead of what the client saw (reply lost in the kill), never behind. */
    if ((int)h->n_entries < s->n_decided || (int)h->n_entries > s->n_decided + 1) missing++;
    for (size_t k = 0; k < h->n_entries; k++) {
      const Agentprune__V1__HistoryEntry *e = h->entries[k];
      uint32_t it = (uint32_t)k + 1;
      if (e->iteration != it) differ++;
      if ((int)it <= s->n_decided && !ac_same(&e->decision->base, &s->decided[it]->base)) differ++;
      if ((int)it <= s->n_reflected && (!e->outcome || !ac_same(&e->outcome->base, &s->reflected[it].base))) differ++;
      if ((int)it < (int)h->n_entries && !e->outcome) differ++; /* only the last may lack an outcome */
    }
    /* Continue like a resumed pruner: finish the pending iteration, then one more. */
    uint32_t n = (uint32_t)h->n_entries;
    int pending = n > 0 && !h->entries[n - 1]->outcome;
    uint32_t next = pending ? n : n + 1;
    CHECK_EQ_INT(h->session->next_iteration, next);
    Agentprune__V1__DecideRequest *req = fx_request(s->sid, next, s->t, 0.6);
    Agentprune__V1__Decision *d = NULL;
    int ok = ac_decide(c, req, &d, &st) == AP_OK;
    if (ok && pending) ok = ac_same(&d->base, &h->entries[n - 1]->decision->base);
    Agentprune__V1__Outcome o = AGENTPRUNE__V1__OUTCOME__INIT;
    o.session_id = s->sid;
    o.iteration = next;
    o.accepted = 1;
    o.ppl_before = 1;
    o.ppl_after = 1;
    o.global_sparsity = 0.3;
    Agentprune__V1__Ack *ack = NULL;
    if (ok) ok = ac_reflect(c, &o, &ack, &st) == AP_OK;
    free_msg(ack);
    if (ok) ac_apply(s->t, d);
    free_msg(d);
    d = NULL;
    if (ok) {
      req->state->global_sparsity = fx_global(s->t);
      req->iteration = req->state->iteration = next + 1;
      ok = ac_decide(c, req, &d, &st) == AP_OK && d->iteration == next + 1;
      free_msg(d);
    }
    continued += ok;
    req->profile = NULL;
    free_msg(req);
    free_msg(h);
  }
  CHECK_EQ_INT(missing, 0);
  CHECK_EQ_INT(differ, 0);
  CHECK_EQ_INT(continued, N_SESS);
  ap_rpc_client_free(c);

  kill(pid, SIGTERM);
  status = -1;
  waitpid(pid, &status, 0);
  CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);

  for (int i = 0; i < N_SESS; i++) {
    for (int k = 0; k <= MAX_IT; k++) free_msg(S[i].decided[k]);
    free_msg(S[i].t);
  }
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (t_failed == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
  if (t_failed) fprintf(stderr, "agent log kept in %s\n", log_file);
  TEST_DONE();
}
