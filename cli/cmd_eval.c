#include <limits.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "cli.h"

static const cli_opt opts[] = {
    {"model", 0, "Hugging Face model folder"},
    {"text", 0, "text file to measure perplexity on"},
    {"ctx", 0, "window length (default min(2048, max_position_embeddings))"},
    {"windows", 0, "use only the first N windows (default: every window)"},
    {"device", 0, "auto|cpu|cuda (default auto)"},
    {"gpu-mem-limit", 0, "GPU memory a local pruner-svc may use, e.g. 40G"},
    {"pruner", 0, "address of a running pruner-svc (default: start a local one)"},
    {"json", 1, "machine-readable output on stdout"},
    {"help", 1, "show this help"},
};
enum { O_MODEL, O_TEXT, O_CTX, O_WINDOWS, O_DEVICE, O_GPU_MEM, O_PRUNER, O_JSON, O_HELP, O_N };

int cmd_eval(int argc, char **argv) {
  cli_vals v;
  if (cli_opts_parse(argc, argv, opts, O_N, &v) < 0) return EXIT_USAGE;
  if (v.set[O_HELP]) {
    cli_opts_usage(stdout, "eval", "Perplexity of a model on a text (DESIGN.md section 2).", opts, O_N);
    return EXIT_OK;
  }
  if (!v.set[O_MODEL] || !v.set[O_TEXT]) {
    cli_fail("eval needs --model DIR and --text FILE");
    return EXIT_USAGE;
  }
  char model[PATH_MAX], text[PATH_MAX];
  if (cli_abs_path("model", v.value[O_MODEL], 1, model, sizeof model) < 0) return EXIT_USAGE;
  if (cli_abs_path("text", v.value[O_TEXT], 1, text, sizeof text) < 0) return EXIT_USAGE;
  Agentprune__V1__EvalSpec spec = AGENTPRUNE__V1__EVAL_SPEC__INIT;
  spec.model_dir = model;
  spec.text_path = text;
  if (v.set[O_CTX] && cli_parse_u32("ctx", v.value[O_CTX], 2, 1u << 20, &spec.ctx) < 0) return EXIT_USAGE;
  if (v.set[O_WINDOWS] && cli_parse_u32("windows", v.value[O_WINDOWS], 1, 1u << 24, &spec.windows) < 0)
    return EXIT_USAGE;
  if (v.set[O_DEVICE]) spec.device = (char *)v.value[O_DEVICE];

  Agentprune__V1__EvalResult *res = NULL;
  int rc = cli_pruner_unary(v.set[O_PRUNER] ? v.value[O_PRUNER] : NULL, spec.device,
                            v.set[O_GPU_MEM] ? v.value[O_GPU_MEM] : NULL, "/agentprune.v1.Pruner/Evaluate",
                            &spec.base, &agentprune__v1__eval_result__descriptor, (ProtobufCMessage **)&res,
                            "evaluate");
  if (rc != EXIT_OK) return rc;
  if (v.set[O_JSON]) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ppl", res->ppl);
    cJSON_AddNumberToObject(o, "nll", res->nll);
    cJSON_AddNumberToObject(o, "tokens", (double)res->tokens);
    cJSON_AddNumberToObject(o, "windows", res->windows);
    cJSON_AddNumberToObject(o, "ctx", res->ctx);
    cJSON_AddNumberToObject(o, "tokens_per_s", res->tokens_per_s);
    cJSON_AddNumberToObject(o, "seconds", res->seconds);
    cJSON_AddStringToObject(o, "device", res->device);
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    cJSON_free(s);
    cJSON_Delete(o);
  } else {
    printf("ppl %.6f  nll %.6f  tokens %llu  windows %u  ctx %u  %.0f tokens/s (%s)\n", res->ppl,
           res->nll, (unsigned long long)res->tokens, res->windows, res->ctx, res->tokens_per_s,
           res->device);
  }
  protobuf_c_message_free_unpacked(&res->base, NULL);
  return EXIT_OK;
}
