/*
 * main.c - agent-svc: the agentprune.v1.Agent gRPC service. Sessions and
 * their reflection history live in LMDB under --data-dir; decisions come
 * from the built-in rule policy or a foundation model (--llm-url).
 *
 * Shutdown: SIGTERM/SIGINT turn health NOT_SERVING, drain in-flight calls
 * for --grace-ms (the rpc layer), then the store is closed; every answered
 * call is already committed (synced) by then.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "llm_policy.h"
#include "log.h"
#include "rpc_server.h"
#include "service.h"
#include "store.h"

static ap_config_entry cfg[] = {
    {"--listen", "AP_AGENT_LISTEN", "0.0.0.0:50052", "address to serve on (host:0 picks a free port)"},
    {"--port-file", "AP_AGENT_PORT_FILE", NULL, "write the bound port to this file once serving"},
    {"--data-dir", "AP_AGENT_DATA_DIR", "./agent-data", "directory of the LMDB session store"},
    {"--store-map-mb", "AP_AGENT_STORE_MAP_MB", "64", "initial LMDB map size in MiB (doubles when full)"},
    {"--store-max-map-mb", "AP_AGENT_STORE_MAX_MAP_MB", "65536", "largest LMDB map in MiB"},
    {"--threads", "AP_AGENT_THREADS", "16", "gRPC handler threads (Decide calls on llm sessions wait on the model)"},
    {"--max-message-bytes", "AP_AGENT_MAX_MESSAGE_BYTES", "4194304", "largest request accepted"},
    {"--grace-ms", "AP_AGENT_GRACE_MS", "10000", "drain time for in-flight calls on SIGTERM"},
    {"--log-level", "AP_AGENT_LOG_LEVEL", "info", "debug | info | warn | error"},
    {"--log-json", "AP_AGENT_LOG_JSON", "0", "log one JSON object per line", .is_switch = 1},
    /* The llm settings: their environment variables (AP_LLM_URL, AP_LLM_MODEL,
     * AP_LLM_API_KEY, AP_LLM_API_KEY_FILE, AP_LLM_CONCURRENCY, ...) are read by
     * ap_llm_config_from_env; a flag overrides its variable. */
    {"--llm-url", NULL, NULL, "foundation model base URL, OpenAI-compatible (env AP_LLM_URL)"},
    {"--llm-model", NULL, NULL, "foundation model name (env AP_LLM_MODEL)"},
    {"--llm-api-key-file", NULL, NULL, "file holding the API key (env AP_LLM_API_KEY_FILE, or the key in AP_LLM_API_KEY)"},
    {"--llm-concurrency", NULL, NULL, "model requests in flight at most (env AP_LLM_CONCURRENCY, default 8)"},
    {"--llm-timeout-ms", NULL, NULL, "per request attempt (env AP_LLM_TIMEOUT_MS, default 120000)"},
    {"--llm-max-retries", NULL, NULL, "retries on 429/5xx/connection errors (env AP_LLM_MAX_RETRIES, default 3)"},
};
#define NCFG (sizeof cfg / sizeof cfg[0])

/* Reads an integer flag into *out; returns -1 with err on a bad value. */
static int get_int(const char *flag, int64_t lo, int64_t hi, int64_t *out, char *err, size_t errlen) {
  return ap_config_get_int(cfg, NCFG, flag, lo, hi, out, err, errlen);
}

/* Applies the --llm-* flags over the environment's llm settings. */
static int llm_flags(ap_llm_config *lc, char *err, size_t errlen) {
  const char *v;
  int64_t n;
  if ((v = ap_config_get(cfg, NCFG, "--llm-url"))) lc->base_url = v;
  if ((v = ap_config_get(cfg, NCFG, "--llm-model"))) lc->model = v;
  if ((v = ap_config_get(cfg, NCFG, "--llm-api-key-file")) &&
      ap_llm_config_read_key_file(lc, v, err, errlen) != 0)
    return -1;
  if (ap_config_get(cfg, NCFG, "--llm-concurrency")) {
    if (get_int("--llm-concurrency", 1, 4096, &n, err, errlen)) return -1;
    lc->concurrency = (int)n;
  }
  if (ap_config_get(cfg, NCFG, "--llm-timeout-ms")) {
    if (get_int("--llm-timeout-ms", 1, 3600000, &n, err, errlen)) return -1;
    lc->timeout_ms = (int)n;
  }
  if (ap_config_get(cfg, NCFG, "--llm-max-retries")) {
    if (get_int("--llm-max-retries", 0, 100, &n, err, errlen)) return -1;
    lc->max_retries = (int)n;
  }
  return 0;
}

int main(int argc, char **argv) {
  char err[512];
  int rc = ap_config_parse(cfg, NCFG, argc, argv, err, sizeof err);
  if (rc == AP_CONFIG_HELP) {
    ap_config_usage(stdout, "agent-svc",
                    "The agentprune agent (gRPC service agentprune.v1.Agent): sessions, reflection history, "
                    "decision policies.",
                    cfg, NCFG);
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, "agent-svc: %s\n", err);
    return 2;
  }
  int level = ap_log_level_parse(ap_config_get(cfg, NCFG, "--log-level"));
  if (level < 0) {
    fprintf(stderr, "agent-svc: --log-level must be debug, info, warn or error\n");
    return 2;
  }
  ap_log_init("agent-svc", (ap_log_level)level, strcmp(ap_config_get(cfg, NCFG, "--log-json"), "1") == 0);

  int64_t threads, max_msg, grace, map_mb, max_map_mb;
  if (get_int("--threads", 1, 1024, &threads, err, sizeof err) ||
      get_int("--max-message-bytes", 1024, INT_MAX, &max_msg, err, sizeof err) ||
      get_int("--grace-ms", 0, 3600000, &grace, err, sizeof err) ||
      get_int("--store-map-mb", 1, 1 << 24, &map_mb, err, sizeof err) ||
      get_int("--store-max-map-mb", 1, 1 << 24, &max_map_mb, err, sizeof err)) {
    fprintf(stderr, "agent-svc: %s\n", err);
    return 2;
  }

  ap_llm_config lc;
  ap_llm *llm = NULL;
  ap_store *store = NULL;
  ap_agent *agent = NULL;
  ap_rpc_server *srv = NULL;
  int exit_code = 1;
  if (ap_llm_config_from_env(&lc, err, sizeof err) != 0 || llm_flags(&lc, err, sizeof err) != 0) {
    fprintf(stderr, "agent-svc: %s\n", err);
    ap_llm_config_clear(&lc);
    return 2;
  }
  int want_llm = (lc.base_url && *lc.base_url) || (lc.model && *lc.model);
  if (want_llm && ap_llm_new(&lc, &llm, err, sizeof err) != 0) {
    fprintf(stderr, "agent-svc: foundation model settings: %s\n", err);
    ap_llm_config_clear(&lc);
    return 2;
  }
  ap_llm_config_clear(&lc); /* ap_llm_new copied what it needs, the key included */

  const char *data_dir = ap_config_get(cfg, NCFG, "--data-dir");
  ap_store_opts so = {.initial_map_bytes = (size_t)map_mb << 20, .max_map_bytes = (size_t)max_map_mb << 20};
  if (ap_store_open(data_dir, &so, &store, err, sizeof err) != 0) {
    fprintf(stderr, "agent-svc: %s\n", err);
    goto out;
  }

  ap_agent_config ac = {.store = store, .llm = llm};
  agent = ap_agent_new(&ac);
  ap_rpc_server_config scfg = {
      .listen_addr = ap_config_get(cfg, NCFG, "--listen"),
      .handler_threads = (int)threads,
      .max_message_bytes = (int)max_msg,
      /* 0 means "default" to the rpc layer; 1 ms is as close to no drain as it gets. */
      .grace_ms = grace > 0 ? (int)grace : 1,
      .name = "agent-svc",
  };
  srv = agent ? ap_rpc_server_new(&scfg) : NULL;
  if (!srv || ap_agent_register(agent, srv) != 0) {
    fprintf(stderr, "agent-svc: cannot set up the gRPC server\n");
    goto out;
  }
  ap_rpc_install_signal_handlers();
  int port = ap_rpc_server_start(srv);
  if (port < 0) {
    fprintf(stderr, "agent-svc: cannot listen on %s\n", scfg.listen_addr);
    goto out;
  }
  const char *port_file = ap_config_get(cfg, NCFG, "--port-file");
  if (port_file && *port_file && ap_write_port_file(port_file, port) != 0)
    AP_WARN("cannot write port file %s: %s", port_file, strerror(errno));
  AP_INFO("store %s, policies rule%s", data_dir, llm ? " and llm" : " (llm: no foundation model configured)");
  fprintf(stderr, "agent-svc listening on %s port %d\n", scfg.listen_addr, port);
  fflush(stderr);

  rc = ap_rpc_server_run(srv);
  exit_code = rc == 0 ? 0 : 1;
  AP_INFO("agent-svc stopped");

out:
  ap_rpc_server_free(srv);
  ap_agent_free(agent);
  ap_llm_free(llm);
  ap_store_close(store);
  return exit_code;
}
