#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "cli.h"
#include "rpc_server.h"
#include "watch.h"

static const cli_opt opts[] = {
    {"model", 0, "Hugging Face model folder (config.json, *.safetensors, tokenizer.json)"},
    {"calib", 0, "calibration text"},
    {"eval", 0, "validation text for the loop's checks"},
    {"test", 0, "held-out text, measured only at the end (honest numbers)"},
    {"sparsity", 0, "global target sparsity over eligible layers, in (0, 1)"},
    {"out", 0, "output folder (must not exist or be empty)"},
    {"policy", 0, "rule (default) | llm | wanda | owl | magnitude"},
    {"structure", 0, "unstructured (default) | N:M such as 2:4"},
    {"compare", 0, "baselines to run for the report, e.g. wanda,owl"},
    {"calib-windows", 0, "calibration windows (default 128)"},
    {"eval-windows", 0, "eval windows per check (default 64)"},
    {"grad-windows", 0, "windows for gradient importance (default 16)"},
    {"ctx", 0, "window length"},
    {"sample", 0, "first (default) | random"},
    {"seed", 0, "seed (default 0)"},
    {"tau", 0, "roll back when ppl rises more than this fraction (default 0.05)"},
    {"max-iterations", 0, "default 60"},
    {"max-rollbacks", 0, "stop after this many consecutive rollbacks (default 4)"},
    {"step-cap", 0, "max sparsity increase of a layer per iteration (default 0.10)"},
    {"ceiling", 0, "max sparsity of any layer (default 0.90)"},
    {"owl-m", 0, "OWL outlier threshold M (default 5)"},
    {"owl-lambda", 0, "OWL ratio spread lambda (default 0.08)"},
    {"include", 0, "PCRE2 pattern: only layers whose name matches"},
    {"exclude", 0, "PCRE2 pattern: skip layers whose name matches"},
    {"agent-fallback", 0, "rule: decide locally while the agent is unreachable"},
    {"device", 0, "auto|cpu|cuda"},
    {"gpu-mem-limit", 0, "GPU memory a local pruner-svc may use, e.g. 40G"},
    {"pruner", 0, "address of a running pruner-svc (default: start a local one)"},
    {"agent", 0, "address of a running agent-svc (default: the pruner's, or a local one)"},
    {"llm-url", 0, "OpenAI-compatible base URL for --policy llm (local agent only)"},
    {"llm-model", 0, "model name for --policy llm (local agent only)"},
    {"detach", 1, "submit the job, print its id and return"},
    {"json", 1, "machine-readable summary on stdout"},
    {"help", 1, "show this help"},
};
enum {
  O_MODEL, O_CALIB, O_EVAL, O_TEST, O_SPARSITY, O_OUT, O_POLICY, O_STRUCTURE, O_COMPARE, O_CW, O_EW,
  O_GW, O_CTX, O_SAMPLE, O_SEED, O_TAU, O_MAXIT, O_MAXRB, O_STEP, O_CEIL, O_OWLM, O_OWLL, O_INC, O_EXC,
  O_FALLBACK, O_DEVICE, O_GPU_MEM, O_PRUNER, O_AGENT, O_LLMURL, O_LLMMODEL, O_DETACH, O_JSON, O_HELP, O_N
};

/* Ctrl-C: the first cancels the job cleanly (it keeps its last accepted
   checkpoint); a second one stops at once. */
typedef struct {
  char pruner_addr[128];
  char job_id[128];
  cli_services *svc;
  sigset_t set;
} sig_ctx;

static void *signal_thread(void *arg) {
  sig_ctx *ctx = arg;
  int sig, count = 0;
  while (sigwait(&ctx->set, &sig) == 0) {
    if (++count == 1 && ctx->job_id[0]) {
      fprintf(stderr, "\nagentprune: cancelling job %s (Ctrl-C again to stop at once)\n", ctx->job_id);
      ap_rpc_client *c = ap_rpc_client_new(ctx->pruner_addr, NULL);
      Agentprune__V1__CancelJobRequest req = AGENTPRUNE__V1__CANCEL_JOB_REQUEST__INIT;
      req.job_id = ctx->job_id;
      ProtobufCMessage *resp = NULL;
      ap_rpc_status st;
      if (ap_rpc_unary(c, "/agentprune.v1.Pruner/CancelJob", &req.base, &agentprune__v1__job__descriptor,
                       &resp, 10000, &st) != 0)
        fprintf(stderr, "agentprune: cancel failed: %s\n", st.message);
      if (resp) protobuf_c_message_free_unpacked(resp, NULL);
      ap_rpc_client_free(c);
    } else {
      cli_services_stop(ctx->svc);
      _exit(130);
    }
  }
  return NULL;
}

static int valid_structure(const char *s) {
  if (!strcmp(s, "unstructured")) return 1;
  unsigned n, m;
  char tail;
  return sscanf(s, "%u:%u%c", &n, &m, &tail) == 2 && n > 0 && n < m && m <= 64;
}

static void print_summary(const Agentprune__V1__Job *job, int json) {
  const Agentprune__V1__JobState *s = job->state;
  if (json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "job_id", job->id);
    cJSON_AddStringToObject(o, "status", cli_job_status_name(job->status));
    cJSON_AddNumberToObject(o, "dense_ppl", job->dense_ppl);
    cJSON_AddNumberToObject(o, "ppl", job->ppl);
    if (job->has_test) {
      cJSON_AddNumberToObject(o, "dense_test_ppl", job->dense_test_ppl);
      cJSON_AddNumberToObject(o, "test_ppl", job->test_ppl);
    }
    cJSON_AddNumberToObject(o, "sparsity", s ? s->global_sparsity : 0);
    cJSON_AddNumberToObject(o, "iterations", s ? s->iteration : 0);
    cJSON_AddNumberToObject(o, "rollbacks", s ? s->rollbacks : 0);
    cJSON_AddStringToObject(o, "stop_reason", job->stop_reason);
    cJSON_AddStringToObject(o, "out", job->out_dir);
    if (job->error && *job->error) cJSON_AddStringToObject(o, "error", job->error);
    cJSON *layers = cJSON_AddObjectToObject(o, "layers");
    for (size_t i = 0; i < job->n_layers; i++)
      cJSON_AddNumberToObject(layers, job->layers[i]->name, job->layers[i]->sparsity);
    char *txt = cJSON_PrintUnformatted(o);
    puts(txt);
    cJSON_free(txt);
    cJSON_Delete(o);
    return;
  }
  fprintf(stderr, "job %s %s (%s)\n", job->id, cli_job_status_name(job->status), job->stop_reason);
  fprintf(stderr, "  sparsity %.4f after %u iterations, %u rollbacks\n", s ? s->global_sparsity : 0,
          s ? s->iteration : 0, s ? s->rollbacks : 0);
  if (job->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED)
    fprintf(stderr, "  eval ppl  dense %.4f  pruned %.4f\n", job->dense_ppl, job->ppl);
  else /* the final measurement happens only for a finished job */
    fprintf(stderr, "  eval ppl  dense %.4f  pruned: not measured (the job did not finish)\n", job->dense_ppl);
  if (job->has_test)
    fprintf(stderr, "  test ppl  dense %.4f  pruned %.4f\n", job->dense_test_ppl, job->test_ppl);
  if (job->out_dir && *job->out_dir) fprintf(stderr, "  output    %s\n", job->out_dir);
  if (job->error && *job->error) fprintf(stderr, "  error     %s\n", job->error);
}

int cmd_prune(int argc, char **argv) {
  cli_vals v;
  if (cli_opts_parse(argc, argv, opts, O_N, &v) < 0) return EXIT_USAGE;
  if (v.set[O_HELP]) {
    cli_opts_usage(stdout, "prune",
                   "Prunes a model to a target sparsity; the agent chooses per-layer steps, or a\n"
                   "baseline (wanda, owl, magnitude) runs one shot under the same protocol.",
                   opts, O_N);
    return EXIT_OK;
  }
  if (!v.set[O_MODEL] || !v.set[O_CALIB] || !v.set[O_EVAL] || !v.set[O_SPARSITY] || !v.set[O_OUT]) {
    cli_fail("prune needs --model DIR --calib FILE --eval FILE --sparsity S --out DIR");
    return EXIT_USAGE;
  }
  Agentprune__V1__JobSpec spec = AGENTPRUNE__V1__JOB_SPEC__INIT;
  char model[PATH_MAX], calib[PATH_MAX], eval[PATH_MAX], test[PATH_MAX], out[PATH_MAX];
  if (cli_abs_path("model", v.value[O_MODEL], 1, model, sizeof model) < 0 ||
      cli_abs_path("calib", v.value[O_CALIB], 1, calib, sizeof calib) < 0 ||
      cli_abs_path("eval", v.value[O_EVAL], 1, eval, sizeof eval) < 0 ||
      cli_abs_path("out", v.value[O_OUT], 0, out, sizeof out) < 0)
    return EXIT_USAGE;
  spec.model_dir = model;
  spec.calib_path = calib;
  spec.eval_path = eval;
  spec.out_dir = out;
  if (v.set[O_TEST]) {
    if (cli_abs_path("test", v.value[O_TEST], 1, test, sizeof test) < 0) return EXIT_USAGE;
    spec.test_path = test;
  }
  if (cli_parse_double("sparsity", v.value[O_SPARSITY], 0, 1, &spec.target_sparsity) < 0) return EXIT_USAGE;
  if (spec.target_sparsity <= 0 || spec.target_sparsity >= 1) {
    cli_fail("--sparsity must be strictly between 0 and 1");
    return EXIT_USAGE;
  }
  const char *policy = v.set[O_POLICY] ? v.value[O_POLICY] : "rule";
  const char *policies[] = {"rule", "llm", "wanda", "owl", "magnitude"};
  int known = 0;
  for (int i = 0; i < 5; i++) known |= !strcmp(policy, policies[i]);
  if (!known) {
    cli_fail("--policy must be rule, llm, wanda, owl or magnitude, got '%s'", policy);
    return EXIT_USAGE;
  }
  spec.policy = (char *)policy;
  if (v.set[O_STRUCTURE]) {
    if (!valid_structure(v.value[O_STRUCTURE])) {
      cli_fail("--structure must be 'unstructured' or N:M with 0 < N < M (e.g. 2:4), got '%s'",
               v.value[O_STRUCTURE]);
      return EXIT_USAGE;
    }
    spec.structure = (char *)v.value[O_STRUCTURE];
  }
  uint32_t u = 0;
  if (v.set[O_CW] && cli_parse_u32("calib-windows", v.value[O_CW], 1, 1u << 20, &spec.calib_windows) < 0) return EXIT_USAGE;
  if (v.set[O_EW] && cli_parse_u32("eval-windows", v.value[O_EW], 1, 1u << 20, &spec.eval_windows) < 0) return EXIT_USAGE;
  if (v.set[O_GW] && cli_parse_u32("grad-windows", v.value[O_GW], 1, 1u << 20, &spec.grad_windows) < 0) return EXIT_USAGE;
  if (v.set[O_CTX] && cli_parse_u32("ctx", v.value[O_CTX], 2, 1u << 20, &spec.ctx) < 0) return EXIT_USAGE;
  if (v.set[O_SEED]) {
    if (cli_parse_u32("seed", v.value[O_SEED], 0, UINT32_MAX, &u) < 0) return EXIT_USAGE;
    spec.seed = u;
  }
  if (v.set[O_TAU] && cli_parse_double("tau", v.value[O_TAU], 1e-6, 10, &spec.tau) < 0) return EXIT_USAGE;
  if (v.set[O_MAXIT] && cli_parse_u32("max-iterations", v.value[O_MAXIT], 1, 100000, &spec.max_iterations) < 0) return EXIT_USAGE;
  if (v.set[O_MAXRB] && cli_parse_u32("max-rollbacks", v.value[O_MAXRB], 1, 1000, &spec.max_consecutive_rollbacks) < 0) return EXIT_USAGE;
  if (v.set[O_STEP] && cli_parse_double("step-cap", v.value[O_STEP], 1e-6, 1, &spec.step_cap) < 0) return EXIT_USAGE;
  if (v.set[O_CEIL] && cli_parse_double("ceiling", v.value[O_CEIL], 1e-6, 1, &spec.ceiling) < 0) return EXIT_USAGE;
  if (v.set[O_OWLM] && cli_parse_double("owl-m", v.value[O_OWLM], 1e-6, 1e6, &spec.owl_m) < 0) return EXIT_USAGE;
  if (v.set[O_OWLL] && cli_parse_double("owl-lambda", v.value[O_OWLL], 1e-9, 1, &spec.owl_lambda) < 0) return EXIT_USAGE;
  if (v.set[O_SAMPLE]) {
    if (strcmp(v.value[O_SAMPLE], "first") && strcmp(v.value[O_SAMPLE], "random")) {
      cli_fail("--sample must be first or random");
      return EXIT_USAGE;
    }
    spec.sample = (char *)v.value[O_SAMPLE];
  }
  if (v.set[O_INC]) spec.include_pattern = (char *)v.value[O_INC];
  if (v.set[O_EXC]) spec.exclude_pattern = (char *)v.value[O_EXC];
  if (v.set[O_COMPARE]) spec.compare = (char *)v.value[O_COMPARE];
  if (v.set[O_FALLBACK]) {
    if (strcmp(v.value[O_FALLBACK], "rule")) {
      cli_fail("--agent-fallback accepts only 'rule'");
      return EXIT_USAGE;
    }
    spec.agent_fallback = (char *)v.value[O_FALLBACK];
  }
  if (v.set[O_DEVICE]) spec.device = (char *)v.value[O_DEVICE];
  /* Local services stop (and their store is removed) when the CLI exits:
     a detached job there would never run. */
  if (v.set[O_DETACH] && !v.set[O_PRUNER]) {
    cli_fail("--detach needs --pruner ADDR: the local services stop when agentprune exits");
    return EXIT_USAGE;
  }
  int agent_policy = !strcmp(policy, "rule") || !strcmp(policy, "llm");
  if (!strcmp(policy, "llm") && !v.set[O_AGENT] && !v.set[O_PRUNER] && !v.set[O_LLMURL] && !getenv("AP_LLM_URL")) {
    cli_fail("--policy llm needs --llm-url URL (or AP_LLM_URL), or an --agent that is configured for it");
    return EXIT_USAGE;
  }

  /* Signals go to a dedicated thread: block them before any thread exists. */
  sig_ctx sctx = {0};
  sigemptyset(&sctx.set);
  sigaddset(&sctx.set, SIGINT);
  sigaddset(&sctx.set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sctx.set, NULL);

  cli_services svc = {0};
  if (v.set[O_GPU_MEM]) svc.gpu_mem_limit = v.value[O_GPU_MEM];
  sctx.svc = &svc;
  if (v.set[O_PRUNER]) snprintf(svc.pruner_addr, sizeof svc.pruner_addr, "%s", v.value[O_PRUNER]);
  if (v.set[O_AGENT]) snprintf(svc.agent_addr, sizeof svc.agent_addr, "%s", v.value[O_AGENT]);
  const char *agent_args[8] = {0};
  int na = 0;
  if (v.set[O_LLMURL]) {
    agent_args[na++] = "--llm-url";
    agent_args[na++] = v.value[O_LLMURL];
  }
  if (v.set[O_LLMMODEL]) {
    agent_args[na++] = "--llm-model";
    agent_args[na++] = v.value[O_LLMMODEL];
  }
  /* A local pruner needs an agent for agent policies; a remote pruner has its own. */
  int need_agent = agent_policy && !v.set[O_PRUNER] && !v.set[O_AGENT];
  if (cli_services_start(&svc, 1, need_agent, spec.device, agent_args) < 0) {
    cli_services_stop(&svc);
    return EXIT_OTHER;
  }
  if (v.set[O_AGENT] || need_agent) spec.agent_addr = svc.agent_addr;
  snprintf(sctx.pruner_addr, sizeof sctx.pruner_addr, "%s", svc.pruner_addr);

  int rc = EXIT_OTHER;
  ap_rpc_client *c = ap_rpc_client_new(svc.pruner_addr, &(ap_rpc_client_opts){.max_attempts = 3});
  Agentprune__V1__Job *job = NULL, *final = NULL;
  ap_rpc_status st;
  int code = ap_rpc_unary(c, "/agentprune.v1.Pruner/SubmitJob", &spec.base, &agentprune__v1__job__descriptor,
                          (ProtobufCMessage **)&job, 60000, &st);
  if (code != 0) {
    cli_fail("the job was refused: %s", st.message);
    /* SubmitJob answers FAILED_PRECONDITION only when the job's agent is
       unreachable: a service unreachable (3), not bad input (2). */
    rc = code == AP_FAILED_PRECONDITION ? EXIT_UNREACHABLE : cli_exit_for_status(code);
    goto done;
  }
  if (v.set[O_DETACH]) {
    printf("%s\n", job->id);
    rc = EXIT_OK;
    goto done;
  }
  snprintf(sctx.job_id, sizeof sctx.job_id, "%s", job->id);
  pthread_t th;
  pthread_create(&th, NULL, signal_thread, &sctx);
  pthread_detach(th);
  fprintf(stderr, "job %s submitted (policy %s, target %.3f)\n", job->id, policy, spec.target_sparsity);

  int final_status = 0;
  code = cli_watch_job(c, job->id, &final_status, &st);
  if (code != 0) {
    cli_fail("lost the job's event stream: %s", st.message);
    rc = cli_exit_for_status(code);
    goto done;
  }
  Agentprune__V1__GetJobRequest get = AGENTPRUNE__V1__GET_JOB_REQUEST__INIT;
  get.job_id = job->id;
  code = ap_rpc_unary(c, "/agentprune.v1.Pruner/GetJob", &get.base, &agentprune__v1__job__descriptor,
                      (ProtobufCMessage **)&final, 30000, &st);
  if (code != 0) {
    cli_fail("cannot read the finished job: %s", st.message);
    rc = cli_exit_for_status(code);
    goto done;
  }
  print_summary(final, v.set[O_JSON]);
  if (final->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED) rc = EXIT_OK;
  else if (final->status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED) {
    cli_fail("the job was cancelled; its last accepted checkpoint is kept");
    rc = EXIT_OTHER;
  } else {
    cli_fail("the job failed: %s", final->error);
    rc = EXIT_OTHER;
  }
done:
  if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
  if (final) protobuf_c_message_free_unpacked(&final->base, NULL);
  ap_rpc_client_free(c);
  sctx.job_id[0] = 0;
  cli_services_stop(&svc);
  return rc;
}
