/*
 * Starting pruner-svc and agent-svc as child processes on loopback, for the
 * commands run without service addresses. The embedded mode is the same
 * architecture as a cluster deployment: the CLI still talks gRPC.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* Finds a service binary: $AP_<NAME>_BIN, next to agentprune, in the build tree, or on PATH. */
static int find_binary(const char *name, const char *env, char *out, size_t outlen) {
  const char *e = getenv(env);
  if (e && *e) {
    snprintf(out, outlen, "%s", e);
    return access(out, X_OK) == 0 ? 0 : -1;
  }
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    const char *rel[] = {"", "/../pruner-svc", "/../agent-svc"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
      if (snprintf(out, outlen, "%s%s/%s", self, rel[i], name) >= (int)outlen) continue;
      if (access(out, X_OK) == 0) return 0;
    }
  }
  const char *path = getenv("PATH");
  if (path) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
      if (snprintf(out, outlen, "%s/%s", dir, name) >= (int)outlen) continue;
      if (access(out, X_OK) == 0) return 0;
    }
  }
  return -1;
}

/* Waits for the child to write its bound port into port_file. */
static int wait_port(int pid, const char *port_file, const char *name, const char *log, char *addr,
                     size_t addrlen) {
  for (int i = 0; i < 600; i++) { /* 60 s: model-free start is sub-second */
    FILE *f = fopen(port_file, "r");
    if (f) {
      int port = 0;
      int ok = fscanf(f, "%d", &port) == 1 && port > 0;
      fclose(f);
      if (ok) {
        snprintf(addr, addrlen, "127.0.0.1:%d", port);
        return 0;
      }
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      cli_fail("%s exited during start-up (see %s)", name, log);
      return -1;
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  cli_fail("%s did not start within 60 s (see %s)", name, log);
  return -1;
}

static int spawn(const char *bin, char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    /* Own process group: a Ctrl-C at the terminal reaches only the CLI,
       which then cancels the job and stops the services in order. */
    setpgid(0, 0);
    /* `prune` blocks SIGINT and SIGTERM for its signal thread; a blocked
       mask survives exec, and the services would then ignore the SIGTERM
       that stops them (and be killed 15 s later). */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      dup2(fd, STDOUT_FILENO);
      close(fd);
    }
    /* Local services share the user's cores with everything else: spinning
       OpenMP/BLAS threads then cost several times their work (docs/engine.md). */
    setenv("OMP_WAIT_POLICY", "passive", 0);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execv(bin, argv);
    _exit(127);
  }
  return pid;
}

int cli_services_start(cli_services *s, int need_pruner, int need_agent, const char *device,
                       const char *const *extra_agent_args) {
  if (!s->data_dir[0]) {
    const char *tmp = getenv("TMPDIR");
    snprintf(s->data_dir, sizeof s->data_dir, "%s/agentprune-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(s->data_dir)) {
      cli_fail("cannot create a working folder in %s: %s", tmp ? tmp : "/tmp", strerror(errno));
      s->data_dir[0] = 0;
      return -1;
    }
    s->own_data_dir = 1;
  }
  char bin[PATH_MAX], port_file[PATH_MAX + 32], log[PATH_MAX + 32], dir[PATH_MAX + 32];

  if (need_agent && !s->agent_addr[0]) {
    if (find_binary("agent-svc", "AP_AGENT_SVC_BIN", bin, sizeof bin) < 0) {
      cli_fail("cannot find the agent-svc program (set AP_AGENT_SVC_BIN)");
      return -1;
    }
    snprintf(port_file, sizeof port_file, "%s/agent.port", s->data_dir);
    snprintf(log, sizeof log, "%s/agent-svc.log", s->data_dir);
    snprintf(dir, sizeof dir, "%s/agent", s->data_dir);
    unlink(port_file);
    const char *argv[32] = {"agent-svc", "--listen", "127.0.0.1:0", "--port-file", port_file,
                            "--data-dir", dir};
    int n = 7;
    for (int i = 0; extra_agent_args && extra_agent_args[i] && n < 30; i++) argv[n++] = extra_agent_args[i];
    argv[n] = NULL;
    s->agent_pid = spawn(bin, (char *const *)argv, log);
    if (s->agent_pid < 0 || wait_port(s->agent_pid, port_file, "agent-svc", log, s->agent_addr,
                                      sizeof s->agent_addr) < 0)
      return -1;
  }
  if (need_pruner && !s->pruner_addr[0]) {
    if (find_binary("pruner-svc", "AP_PRUNER_SVC_BIN", bin, sizeof bin) < 0) {
      cli_fail("cannot find the pruner-svc program (set AP_PRUNER_SVC_BIN)");
      return -1;
    }
    snprintf(port_file, sizeof port_file, "%s/pruner.port", s->data_dir);
    snprintf(log, sizeof log, "%s/pruner-svc.log", s->data_dir);
    snprintf(dir, sizeof dir, "%s/pruner", s->data_dir);
    unlink(port_file);
    /* The local worker serves this user's own files: every path is allowed. */
    const char *argv[16] = {"pruner-svc", "--listen", "127.0.0.1:0", "--port-file", port_file,
                            "--data-dir", dir, "--data-roots", "/"};
    int n = 9;
    if (s->agent_addr[0]) {
      argv[n++] = "--agent";
      argv[n++] = s->agent_addr;
    }
    if (device && *device) {
      argv[n++] = "--device";
      argv[n++] = device;
    }
    if (s->gpu_mem_limit && *s->gpu_mem_limit) {
      argv[n++] = "--gpu-mem-limit";
      argv[n++] = s->gpu_mem_limit;
    }
    argv[n] = NULL;
    s->pruner_pid = spawn(bin, (char *const *)argv, log);
    if (s->pruner_pid < 0 || wait_port(s->pruner_pid, port_file, "pruner-svc", log, s->pruner_addr,
                                       sizeof s->pruner_addr) < 0)
      return -1;
  }
  return 0;
}

static void stop_child(int *pid) {
  if (*pid <= 0) return;
  kill(*pid, SIGTERM);
  for (int i = 0; i < 150; i++) { /* 15 s, then SIGKILL */
    if (waitpid(*pid, NULL, WNOHANG) == *pid) {
      *pid = 0;
      return;
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, NULL, 0);
  *pid = 0;
}

static int rm_tree(const char *path) {
  char cmd[PATH_MAX + 32];
  /* The folder is one we created with mkdtemp; its name has no shell metacharacters. */
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  return system(cmd);
}

void cli_services_stop(cli_services *s) {
  stop_child(&s->pruner_pid); /* pruner first: it may still talk to the agent */
  stop_child(&s->agent_pid);
  if (s->own_data_dir && s->data_dir[0] && !getenv("AP_KEEP_WORKDIR")) {
    if (rm_tree(s->data_dir) != 0) cli_fail("could not remove %s", s->data_dir);
  }
}

int cli_pruner_unary(const char *pruner_addr, const char *device, const char *gpu_mem_limit, const char *method,
                     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                     ProtobufCMessage **resp, const char *what) {
  cli_services svc = {0};
  *resp = NULL;
  svc.gpu_mem_limit = gpu_mem_limit;
  if (pruner_addr) snprintf(svc.pruner_addr, sizeof svc.pruner_addr, "%s", pruner_addr);
  else if (cli_services_start(&svc, 1, 0, device, NULL) < 0) {
    cli_services_stop(&svc);
    return EXIT_OTHER;
  }
  int rc = EXIT_OK;
  ap_rpc_client *c = ap_rpc_client_new(svc.pruner_addr, &(ap_rpc_client_opts){.max_attempts = 3});
  ap_rpc_status st;
  int code = ap_rpc_unary(c, method, req, resp_desc, resp, 0, &st);
  if (code != 0) {
    cli_fail("%s failed: %s", what, st.message);
    rc = cli_exit_for_status(code);
  }
  ap_rpc_client_free(c);
  cli_services_stop(&svc);
  return rc;
}
