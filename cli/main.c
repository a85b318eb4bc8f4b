/*
 * agentprune - the command line of the agent-guided LLM pruner.
 *
 *   agentprune prune   --model DIR --calib FILE --eval FILE --sparsity S --out DIR [...]
 *   agentprune eval    --model DIR --text FILE [--ctx L] [--windows N] [--json]
 *   agentprune profile --model DIR --calib FILE [--json]
 *   agentprune jobs    list|watch|cancel --pruner ADDR [...]
 *   agentprune health  --pruner ADDR --agent ADDR
 *
 * Exit codes: 0 success, 2 bad usage or input, 3 a service unreachable,
 * 1 anything else; the reason is one sentence on stderr.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
  fputs("usage: agentprune <command> [options]\n\n"
        "commands:\n"
        "  prune    prune a Hugging Face model to a target sparsity (agent-guided or a baseline)\n"
        "  eval     perplexity of a model folder on a text\n"
        "  profile  the per-layer sensitivity table of a model\n"
        "  jobs     list, watch or cancel the jobs of a pruner-svc\n"
        "  health   health of a pruner-svc and an agent-svc\n\n"
        "Run 'agentprune <command> --help' for its options.\n",
        f);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    usage(stdout);
    return EXIT_OK;
  }
  if (!strcmp(cmd, "--version")) {
    puts("agentprune 0.1.0");
    return EXIT_OK;
  }
  if (!strcmp(cmd, "health")) return cmd_health(argc - 2, argv + 2);
  if (!strcmp(cmd, "eval")) return cmd_eval(argc - 2, argv + 2);
  if (!strcmp(cmd, "profile")) return cmd_profile(argc - 2, argv + 2);
  if (!strcmp(cmd, "prune")) return cmd_prune(argc - 2, argv + 2);
  if (!strcmp(cmd, "jobs")) return cmd_jobs(argc - 2, argv + 2);
  cli_fail("unknown command '%s' (try 'agentprune --help')", cmd);
  return EXIT_USAGE;
}
