#include <string.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "cli.h"
#include "watch.h"

static const cli_opt opts[] = {
    {"pruner", 0, "pruner-svc address host:port (required)"},
    {"job", 0, "job id (watch, cancel)"},
    {"limit", 0, "list at most N jobs (default 100)"},
    {"help", 1, "show this help"},
};
enum { O_PRUNER, O_JOB, O_LIMIT, O_HELP, O_N };

static void print_job_line(const Agentprune__V1__Job *j) {
  const Agentprune__V1__JobState *s = j->state;
  printf("%-34s %-10s %-10s target %.3f  sparsity %.4f  iter %3u  rollbacks %2u  ppl %.4f  %s\n", j->id,
         cli_job_status_name(j->status), j->spec ? j->spec->policy : "", j->spec ? j->spec->target_sparsity : 0,
         s ? s->global_sparsity : 0, s ? s->iteration : 0, s ? s->rollbacks : 0, j->ppl, j->stop_reason);
}

int cmd_jobs(int argc, char **argv) {
  if (argc < 1 || (strcmp(argv[0], "list") && strcmp(argv[0], "watch") && strcmp(argv[0], "cancel"))) {
    if (argc >= 1 && !strcmp(argv[0], "--help")) {
      cli_opts_usage(stdout, "jobs list|watch|cancel", "Lists, follows or cancels the jobs of a pruner-svc.", opts, O_N);
      return EXIT_OK;
    }
    cli_fail("usage: agentprune jobs list|watch|cancel --pruner ADDR [--job ID]");
    return EXIT_USAGE;
  }
  const char *sub = argv[0];
  cli_vals v;
  if (cli_opts_parse(argc - 1, argv + 1, opts, O_N, &v) < 0) return EXIT_USAGE;
  if (v.set[O_HELP]) {
    cli_opts_usage(stdout, "jobs list|watch|cancel", "Lists, follows or cancels the jobs of a pruner-svc.", opts, O_N);
    return EXIT_OK;
  }
  if (!v.set[O_PRUNER]) {
    cli_fail("jobs needs --pruner ADDR");
    return EXIT_USAGE;
  }
  if (strcmp(sub, "list") && !v.set[O_JOB]) {
    cli_fail("jobs %s needs --job ID", sub);
    return EXIT_USAGE;
  }
  ap_rpc_client *c = ap_rpc_client_new(v.value[O_PRUNER], &(ap_rpc_client_opts){.max_attempts = 2});
  ap_rpc_status st;
  int code, rc = EXIT_OK;
  if (!strcmp(sub, "list")) {
    Agentprune__V1__ListJobsRequest req = AGENTPRUNE__V1__LIST_JOBS_REQUEST__INIT;
    req.limit = 100;
    if (v.set[O_LIMIT] && cli_parse_u32("limit", v.value[O_LIMIT], 1, 100000, &req.limit) < 0) {
      ap_rpc_client_free(c);
      return EXIT_USAGE;
    }
    Agentprune__V1__ListJobsResponse *resp = NULL;
    code = ap_rpc_unary(c, "/agentprune.v1.Pruner/ListJobs", &req.base,
                        &agentprune__v1__list_jobs_response__descriptor, (ProtobufCMessage **)&resp, 10000, &st);
    if (code == 0) {
      for (size_t i = 0; i < resp->n_jobs; i++) print_job_line(resp->jobs[i]);
      protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
  } else if (!strcmp(sub, "cancel")) {
    Agentprune__V1__CancelJobRequest req = AGENTPRUNE__V1__CANCEL_JOB_REQUEST__INIT;
    req.job_id = (char *)v.value[O_JOB];
    Agentprune__V1__Job *job = NULL;
    code = ap_rpc_unary(c, "/agentprune.v1.Pruner/CancelJob", &req.base, &agentprune__v1__job__descriptor,
                        (ProtobufCMessage **)&job, 10000, &st);
    if (code == 0) {
      print_job_line(job);
      protobuf_c_message_free_unpacked(&job->base, NULL);
    }
  } else {
    int final_status = 0;
    code = cli_watch_job(c, v.value[O_JOB], &final_status, &st);
    /* As for `prune`: 0 only when the job succeeded, so scripts can chain on it. */
    if (code == 0 && final_status != AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED) {
      cli_fail("job %s ended %s", v.value[O_JOB], cli_job_status_name(final_status));
      rc = EXIT_OTHER;
    }
  }
  if (code != 0) {
    cli_fail("jobs %s failed: %s", sub, st.message);
    rc = cli_exit_for_status(code);
  }
  ap_rpc_client_free(c);
  return rc;
}
