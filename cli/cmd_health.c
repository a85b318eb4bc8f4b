#include <string.h>

#include "cli.h"

static const cli_opt opts[] = {
    {"pruner", 0, "pruner-svc address host:port"},
    {"agent", 0, "agent-svc address host:port"},
    {"timeout-ms", 0, "deadline per check (default 3000)"},
    {"help", 1, "show this help"},
};
enum { O_PRUNER, O_AGENT, O_TIMEOUT, O_HELP, O_N };

static int check_one(const char *what, const char *addr, int64_t timeout_ms) {
  ap_rpc_client *c = ap_rpc_client_new(addr, NULL);
  if (!c) {
    printf("%-7s %-22s ERROR (cannot create a channel)\n", what, addr);
    return 0;
  }
  ap_rpc_status st;
  int s = ap_rpc_health_check(c, "", timeout_ms, &st);
  ap_rpc_client_free(c);
  if (s == 1) {
    printf("%-7s %-22s SERVING\n", what, addr);
    return 1;
  }
  if (s == 2) printf("%-7s %-22s NOT_SERVING\n", what, addr);
  else printf("%-7s %-22s DOWN (%s)\n", what, addr, st.message);
  return 0;
}

int cmd_health(int argc, char **argv) {
  cli_vals v;
  if (cli_opts_parse(argc, argv, opts, O_N, &v) < 0) return EXIT_USAGE;
  if (v.set[O_HELP]) {
    cli_opts_usage(stdout, "health", "Checks grpc.health.v1 of each service; exits 3 when one is down.", opts, O_N);
    return EXIT_OK;
  }
  if (!v.set[O_PRUNER] && !v.set[O_AGENT]) {
    cli_fail("give --pruner ADDR and/or --agent ADDR");
    return EXIT_USAGE;
  }
  uint32_t timeout = 3000;
  if (v.set[O_TIMEOUT] && cli_parse_u32("timeout-ms", v.value[O_TIMEOUT], 1, 600000, &timeout) < 0)
    return EXIT_USAGE;
  int up = 1;
  if (v.set[O_PRUNER]) up &= check_one("pruner", v.value[O_PRUNER], timeout);
  if (v.set[O_AGENT]) up &= check_one("agent", v.value[O_AGENT], timeout);
  if (!up) {
    cli_fail("a service is down");
    return EXIT_UNREACHABLE;
  }
  return EXIT_OK;
}
