#include <limits.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "agentprune/v1/pruner.pb-c.h"
#include "cli.h"

static const cli_opt opts[] = {
    {"model", 0, "Hugging Face model folder"},
    {"calib", 0, "calibration text"},
    {"calib-windows", 0, "calibration windows (default 128)"},
    {"grad-windows", 0, "windows for gradient importance (default 16)"},
    {"ctx", 0, "window length"},
    {"sample", 0, "first|random (default first)"},
    {"seed", 0, "seed for --sample random"},
    {"include", 0, "PCRE2 pattern: only layers whose name matches"},
    {"exclude", 0, "PCRE2 pattern: skip layers whose name matches"},
    {"device", 0, "auto|cpu|cuda"},
    {"gpu-mem-limit", 0, "GPU memory a local pruner-svc may use, e.g. 40G"},
    {"pruner", 0, "address of a running pruner-svc (default: start a local one)"},
    {"json", 1, "machine-readable output on stdout"},
    {"help", 1, "show this help"},
};
enum { O_MODEL, O_CALIB, O_CW, O_GW, O_CTX, O_SAMPLE, O_SEED, O_INC, O_EXC, O_DEVICE, O_GPU_MEM, O_PRUNER, O_JSON, O_HELP, O_N };

static const char *kind_name(int k) {
  static const char *const names[] = {"?", "q", "k", "v", "o", "gate", "up", "down"};
  return k >= 0 && k <= 7 ? names[k] : "?";
}

int cmd_profile(int argc, char **argv) {
  cli_vals v;
  if (cli_opts_parse(argc, argv, opts, O_N, &v) < 0) return EXIT_USAGE;
  if (v.set[O_HELP]) {
    cli_opts_usage(stdout, "profile", "Per-layer sensitivity table (DESIGN.md section 1, step 3).", opts, O_N);
    return EXIT_OK;
  }
  if (!v.set[O_MODEL] || !v.set[O_CALIB]) {
    cli_fail("profile needs --model DIR and --calib FILE");
    return EXIT_USAGE;
  }
  char model[PATH_MAX], calib[PATH_MAX];
  if (cli_abs_path("model", v.value[O_MODEL], 1, model, sizeof model) < 0) return EXIT_USAGE;
  if (cli_abs_path("calib", v.value[O_CALIB], 1, calib, sizeof calib) < 0) return EXIT_USAGE;
  Agentprune__V1__ProfileSpec spec = AGENTPRUNE__V1__PROFILE_SPEC__INIT;
  spec.model_dir = model;
  spec.calib_path = calib;
  if (v.set[O_CW] && cli_parse_u32("calib-windows", v.value[O_CW], 1, 1u << 20, &spec.calib_windows) < 0)
    return EXIT_USAGE;
  if (v.set[O_GW] && cli_parse_u32("grad-windows", v.value[O_GW], 1, 1u << 20, &spec.grad_windows) < 0)
    return EXIT_USAGE;
  if (v.set[O_CTX] && cli_parse_u32("ctx", v.value[O_CTX], 2, 1u << 20, &spec.ctx) < 0) return EXIT_USAGE;
  uint32_t seed = 0;
  if (v.set[O_SEED] && cli_parse_u32("seed", v.value[O_SEED], 0, UINT32_MAX, &seed) < 0) return EXIT_USAGE;
  spec.seed = seed;
  if (v.set[O_SAMPLE]) spec.sample = (char *)v.value[O_SAMPLE];
  if (v.set[O_INC]) spec.include_pattern = (char *)v.value[O_INC];
  if (v.set[O_EXC]) spec.exclude_pattern = (char *)v.value[O_EXC];
  if (v.set[O_DEVICE]) spec.device = (char *)v.value[O_DEVICE];

  Agentprune__V1__ProfileResult *res = NULL;
  int rc = cli_pruner_unary(v.set[O_PRUNER] ? v.value[O_PRUNER] : NULL, spec.device,
                            v.set[O_GPU_MEM] ? v.value[O_GPU_MEM] : NULL, "/agentprune.v1.Pruner/Profile",
                            &spec.base, &agentprune__v1__profile_result__descriptor, (ProtobufCMessage **)&res,
                            "profile");
  if (rc != EXIT_OK) return rc;
  size_t n = res->table ? res->table->n_layers : 0;
  if (v.set[O_JSON]) {
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "layers");
    for (size_t i = 0; i < n; i++) {
      const Agentprune__V1__LayerProfile *l = res->table->layers[i];
      cJSON *e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "name", l->name);
      cJSON_AddStringToObject(e, "kind", kind_name(l->kind));
      cJSON_AddNumberToObject(e, "block", l->block);
      cJSON_AddNumberToObject(e, "params", (double)l->params);
      cJSON_AddNumberToObject(e, "s", l->s);
      cJSON_AddNumberToObject(e, "g", l->g);
      cJSON_AddNumberToObject(e, "z_s", l->z_s);
      cJSON_AddNumberToObject(e, "z_g", l->z_g);
      cJSON_AddNumberToObject(e, "rho", l->rho);
      cJSON_AddItemToArray(arr, e);
    }
    cJSON_AddNumberToObject(o, "seconds", res->seconds);
    cJSON_AddNumberToObject(o, "calib_windows", res->calib_windows);
    cJSON_AddNumberToObject(o, "ctx", res->ctx);
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    cJSON_free(s);
    cJSON_Delete(o);
  } else {
    printf("%-40s %-5s %5s %10s %12s %12s %8s %8s %6s\n", "layer", "kind", "block", "params", "s", "g",
           "z_s", "z_g", "rho");
    for (size_t i = 0; i < n; i++) {
      const Agentprune__V1__LayerProfile *l = res->table->layers[i];
      printf("%-40s %-5s %5u %10llu %12.5g %12.5g %8.3f %8.3f %6.3f\n", l->name, kind_name(l->kind),
             l->block, (unsigned long long)l->params, l->s, l->g, l->z_s, l->z_g, l->rho);
    }
    fprintf(stderr, "%zu layers, %u calibration windows of %u tokens, %.2f s\n", n, res->calib_windows,
            res->ctx, res->seconds);
  }
  protobuf_c_message_free_unpacked(&res->base, NULL);
  return EXIT_OK;
}
