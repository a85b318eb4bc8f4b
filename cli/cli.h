/*
 * cli.h - shared pieces of the agentprune command: exit codes, option
 * parsing helpers, connecting to (or starting) the services.
 */
#ifndef AP_CLI_H
#define AP_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "rpc_client.h"

/* Exit codes (DESIGN.md section 6). */
enum { EXIT_OK = 0, EXIT_OTHER = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

/* Maps a final gRPC status to the CLI's exit code. */
int cli_exit_for_status(int code);

/* Prints "agentprune: <sentence>" to stderr. */
void cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Option parsing. Options are "--name value" or "--name=value"; flags have no
 * value. cli_opts_parse fills `values` by the index of each spec and refuses
 * unknown options, missing values, and positional arguments.
 */
typedef struct {
  const char *name;   /* without "--" */
  int is_flag;        /* 1: no value */
  const char *help;
} cli_opt;

typedef struct {
  const char *value[48];
  int set[48];
} cli_vals;

int cli_opts_parse(int argc, char **argv, const cli_opt *spec, int nspec, cli_vals *out);
void cli_opts_usage(FILE *f, const char *cmd, const char *summary, const cli_opt *spec, int nspec);

/* Parses numbers strictly; returns -1 with a message on bad input. */
int cli_parse_double(const char *name, const char *s, double lo, double hi, double *out);
int cli_parse_u32(const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *out);

/* realpath of an existing file or folder (or of the parent of a new one); -1 with a message. */
int cli_abs_path(const char *name, const char *path, int must_exist, char *out, size_t outlen);

/*
 * Local services. When the user gives no --pruner (and, where needed, no
 * --agent), the CLI starts pruner-svc and agent-svc as child processes on
 * loopback ports in a private data directory, and stops them on exit.
 */
typedef struct {
  int pruner_pid, agent_pid;
  char pruner_addr[128], agent_addr[128];
  char data_dir[512];
  int own_data_dir;
  const char *gpu_mem_limit; /* --gpu-mem-limit for a local pruner-svc (NULL: its default) */
} cli_services;

/*
 * Starts what is missing: pruner (when need_pruner and *pruner_addr is
 * empty) and agent (when need_agent and *agent_addr is empty). extra_agent_args
 * are passed to agent-svc (e.g. --llm-url). Returns 0, or -1 with a message.
 */
int cli_services_start(cli_services *s, int need_pruner, int need_agent, const char *device,
                       const char *const *extra_agent_args);
void cli_services_stop(cli_services *s);

/*
 * One unary call of `method` on the pruner at `pruner_addr`, or, when it is
 * NULL, on a local pruner-svc started for the call (with `device` and
 * `gpu_mem_limit`, either may be NULL) and stopped after it. On success
 * *resp holds the reply (caller frees with protobuf_c_message_free_unpacked)
 * and EXIT_OK is returned; otherwise a sentence naming `what` is on stderr
 * and the exit code for the failure is returned.
 */
int cli_pruner_unary(const char *pruner_addr, const char *device, const char *gpu_mem_limit, const char *method,
                     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                     ProtobufCMessage **resp, const char *what);

/* Sub-commands. */
int cmd_health(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_jobs(int argc, char **argv);

#endif
