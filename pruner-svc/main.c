/*
 * pruner-svc - the GPU worker of agentprune: loads models, profiles layer
 * sensitivity, applies masks, measures perplexity, runs pruning jobs in
 * dialogue with agent-svc, and keeps job state and mask checkpoints in LMDB
 * so that a restarted worker resumes every unfinished job.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "config.h"
#include "log.h"
#include "ap_gpu_mem.h"
#include "pruner.h"
#include "workload.h"

static ap_config_entry cfg[] = {
    {"--listen", "AP_PRUNER_LISTEN", "0.0.0.0:50051", "address to serve gRPC on (host:port; port 0 picks one)"},
    {"--port-file", "AP_PRUNER_PORT_FILE", NULL, "write the bound port to this file once serving"},
    {"--data-dir", "AP_PRUNER_DATA_DIR", "./pruner-data", "directory of the LMDB job and checkpoint store"},
    {"--data-roots", "AP_PRUNER_DATA_ROOTS", NULL, "colon-separated folders that request paths must lie in (required)"},
    {"--agent", "AP_PRUNER_AGENT", "", "default agent-svc address for jobs that name none"},
    {"--device", "AP_PRUNER_DEVICE", "auto", "compute device: auto | cpu | cuda"},
    {"--gpu-mem-limit", "AP_PRUNER_GPU_MEM_LIMIT", "", "GPU memory the CUDA backend may use, e.g. 40G (empty = the device's free memory)"},
    {"--max-running", "AP_PRUNER_MAX_RUNNING", "1", "jobs that run at once (one per GPU); more are queued"},
    {"--threads", "AP_PRUNER_THREADS", "0", "compute threads (0 = all cores)"},
    {"--handler-threads", "AP_PRUNER_HANDLER_THREADS", "8", "gRPC handler threads"},
    {"--max-message-bytes", "AP_PRUNER_MAX_MESSAGE_BYTES", "4194304", "largest request accepted"},
    {"--grace-ms", "AP_PRUNER_GRACE_MS", "10000", "drain time for in-flight calls on SIGTERM"},
    {"--log-level", "AP_PRUNER_LOG_LEVEL", "info", "debug | info | warn | error"},
    {"--log-json", "AP_PRUNER_LOG_JSON", "0", "log one JSON object per line", .is_switch = 1},
};
#define NCFG (sizeof cfg / sizeof cfg[0])

/* Test only (tests/pruner/test_resume.py): with AP_PRUNER_TEST_CKPT_PAUSE_DIR
   set, every checkpoint write transaction, once its layer masks are put and
   before its state, job and manifest are, creates the marker file
   <dir>/ckpt-<job ckpt no>-<pid> and sleeps AP_PRUNER_TEST_CKPT_PAUSE_MS
   (default 300) ms, so that a crash test can SIGKILL the process inside the
   transaction. Unset in production: no hook at all. */
static char test_pause_dir[1024];
static long test_pause_ms = 300;

static void test_ckpt_pause(void *arg, uint64_t ckpt_no, uint32_t part, uint32_t chunk) {
  (void)arg;
  if (part != AP_JS_PART_STATE || chunk != 0) return;
  char path[1200];
  snprintf(path, sizeof path, "%s/ckpt-%llu-%ld", test_pause_dir, (unsigned long long)ckpt_no, (long)getpid());
  FILE *f = fopen(path, "w");
  if (f) fclose(f);
  usleep((useconds_t)test_pause_ms * 1000);
}

int main(int argc, char **argv) {
  char err[512];
  int rc = ap_config_parse(cfg, NCFG, argc, argv, err, sizeof err);
  if (rc == AP_CONFIG_HELP) {
    ap_config_usage(stdout, "pruner-svc", "The agentprune GPU worker (gRPC service agentprune.v1.Pruner).", cfg, NCFG);
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, "pruner-svc: %s\n", err);
    return 2;
  }
  int level = ap_log_level_parse(ap_config_get(cfg, NCFG, "--log-level"));
  if (level < 0) {
    fprintf(stderr, "pruner-svc: --log-level must be debug, info, warn or error\n");
    return 2;
  }
  ap_log_init("pruner-svc", (ap_log_level)level, !strcmp(ap_config_get(cfg, NCFG, "--log-json"), "1"));

  static pruner p;
  pthread_mutex_init(&p.lock, NULL);
  pthread_cond_init(&p.changed, NULL);
  int64_t v;
  if (ap_config_get_int(cfg, NCFG, "--max-running", 1, 64, &v, err, sizeof err) < 0) goto usage;
  p.max_running = (int)v;
  if (ap_config_get_int(cfg, NCFG, "--threads", 0, 1024, &v, err, sizeof err) < 0) goto usage;
  p.threads = (int)v;
  int64_t handler_threads, max_msg, grace;
  if (ap_config_get_int(cfg, NCFG, "--handler-threads", 1, 1024, &handler_threads, err, sizeof err) < 0 ||
      ap_config_get_int(cfg, NCFG, "--max-message-bytes", 1024, 1 << 30, &max_msg, err, sizeof err) < 0 ||
      ap_config_get_int(cfg, NCFG, "--grace-ms", 0, 3600000, &grace, err, sizeof err) < 0)
    goto usage;
  p.agent_addr = ap_config_get(cfg, NCFG, "--agent");
  p.device = ap_config_get(cfg, NCFG, "--device");
  if (strcmp(p.device, "auto") && strcmp(p.device, "cpu") && strcmp(p.device, "cuda")) {
    snprintf(err, sizeof err, "--device must be auto, cpu or cuda");
    goto usage;
  }
  const char *gpu_mem = ap_config_get(cfg, NCFG, "--gpu-mem-limit");
  if (gpu_mem && *gpu_mem) {
    uint64_t bytes = 0;
    if (apk_parse_mem_size(gpu_mem, &bytes) != 0 || bytes == 0) {
      snprintf(err, sizeof err, "--gpu-mem-limit must be a size such as 40G, 512M or a byte count, got '%.40s'",
               gpu_mem);
      goto usage;
    }
    wl_set_gpu_mem_limit(bytes);
  }

  const char *roots = ap_config_get(cfg, NCFG, "--data-roots");
  if (!roots || !*roots) {
    snprintf(err, sizeof err, "--data-roots is required: the folders that hold models and texts");
    goto usage;
  }
  static char roots_buf[8192];
  snprintf(roots_buf, sizeof roots_buf, "%s", roots);
  for (char *save = NULL, *r = strtok_r(roots_buf, ":", &save); r; r = strtok_r(NULL, ":", &save)) {
    if (p.n_roots == PRUNER_MAX_ROOTS) {
      snprintf(err, sizeof err, "--data-roots: at most %d folders", PRUNER_MAX_ROOTS);
      goto usage;
    }
    struct stat st;
    if (stat(r, &st) != 0 || !S_ISDIR(st.st_mode)) {
      snprintf(err, sizeof err, "--data-roots: %s is not a folder", r);
      goto usage;
    }
    p.roots[p.n_roots++] = r;
  }

  snprintf(p.data_dir, sizeof p.data_dir, "%s", ap_config_get(cfg, NCFG, "--data-dir"));
  if (mkdir(p.data_dir, 0755) != 0 && errno != EEXIST) {
    AP_ERROR("cannot create data dir %s: %s", p.data_dir, strerror(errno));
    return 1;
  }
  ap_js_options js_opt = {0};
  const char *pause_dir = getenv("AP_PRUNER_TEST_CKPT_PAUSE_DIR");
  if (pause_dir && *pause_dir) {
    snprintf(test_pause_dir, sizeof test_pause_dir, "%s", pause_dir);
    const char *ms = getenv("AP_PRUNER_TEST_CKPT_PAUSE_MS");
    if (ms && *ms) test_pause_ms = atol(ms) > 0 && atol(ms) < 60000 ? atol(ms) : 300;
    js_opt.test_hook = test_ckpt_pause;
    AP_WARN("test hook: pausing %ld ms inside every checkpoint transaction (AP_PRUNER_TEST_CKPT_PAUSE_DIR)",
            test_pause_ms);
  }
  rc = ap_js_open(p.data_dir, &js_opt, &p.store);
  if (rc != 0) {
    AP_ERROR("cannot open the job store in %s: %s", p.data_dir, ap_js_strerror(rc));
    return 1;
  }

  ap_rpc_server_config scfg = {.listen_addr = ap_config_get(cfg, NCFG, "--listen"),
                               .handler_threads = (int)handler_threads,
                               .max_message_bytes = (int)max_msg,
                               .grace_ms = (int)grace,
                               .name = "pruner-svc"};
  p.srv = ap_rpc_server_new(&scfg);
  if (!p.srv || pruner_register_service(&p) < 0) {
    AP_ERROR("cannot set up the gRPC server");
    ap_js_close(p.store);
    return 1;
  }
  ap_rpc_server_set_health(p.srv, "agentprune.v1.Pruner", 1);
  ap_rpc_install_signal_handlers();
  int port = ap_rpc_server_start(p.srv);
  if (port < 0) {
    AP_ERROR("cannot listen on %s", scfg.listen_addr);
    ap_rpc_server_free(p.srv);
    ap_js_close(p.store);
    return 1;
  }
  const char *port_file = ap_config_get(cfg, NCFG, "--port-file");
  if (port_file && *port_file && ap_write_port_file(port_file, port) != 0)
    AP_WARN("cannot write port file %s: %s", port_file, strerror(errno));
  AP_INFO("pruner-svc listening on %s port %d (device %s, data roots %s, store %s)", scfg.listen_addr, port,
          p.device, roots, p.data_dir);

  jobs_resume_all(&p);
  rc = ap_rpc_server_run(p.srv);
  /* Runners stop at their next safe point without finishing their jobs:
     the jobs stay unfinished in the store and resume after a restart. */
  jobs_shutdown(&p);
  ap_rpc_server_free(p.srv);
  ap_js_close(p.store);
  AP_INFO("pruner-svc stopped");
  return rc;

usage:
  fprintf(stderr, "pruner-svc: %s\n", err);
  return 2;
}
