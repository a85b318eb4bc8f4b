#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rpc_server.h"

int cli_exit_for_status(int code) {
  switch (code) {
  case AP_OK: return EXIT_OK;
  case AP_UNAVAILABLE:
  case AP_DEADLINE_EXCEEDED: return EXIT_UNREACHABLE;
  case AP_INVALID_ARGUMENT:
  case AP_NOT_FOUND:
  case AP_FAILED_PRECONDITION:
  case AP_OUT_OF_RANGE:
  case AP_ALREADY_EXISTS:
  case AP_UNAUTHENTICATED:
  case AP_PERMISSION_DENIED: return EXIT_USAGE;
  default: return EXIT_OTHER;
  }
}

void cli_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("agentprune: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int cli_opts_parse(int argc, char **argv, const cli_opt *spec, int nspec, cli_vals *out) {
  memset(out, 0, sizeof *out);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) != 0) {
      cli_fail("unexpected argument '%s' (options start with --)", a);
      return -1;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    int k = -1;
    for (int j = 0; j < nspec; j++)
      if (strlen(spec[j].name) == nlen && strncmp(spec[j].name, name, nlen) == 0) k = j;
    if (k < 0) {
      cli_fail("unknown option '--%.*s' (see --help)", (int)nlen, name);
      return -1;
    }
    out->set[k] = 1;
    if (spec[k].is_flag) {
      if (eq) {
        cli_fail("option --%s takes no value", spec[k].name);
        return -1;
      }
      out->value[k] = "1";
    } else if (eq) {
      out->value[k] = eq + 1;
    } else {
      if (i + 1 >= argc) {
        cli_fail("option --%s needs a value", spec[k].name);
        return -1;
      }
      out->value[k] = argv[++i];
    }
  }
  return 0;
}

void cli_opts_usage(FILE *f, const char *cmd, const char *summary, const cli_opt *spec, int nspec) {
  fprintf(f, "usage: agentprune %s [options]\n%s\n\noptions:\n", cmd, summary);
  for (int j = 0; j < nspec; j++)
    fprintf(f, "  --%-18s %s\n", spec[j].name, spec[j].help);
}

int cli_parse_double(const char *name, const char *s, double lo, double hi, double *out) {
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
    cli_fail("--%s must be a number in [%g, %g], got '%s'", name, lo, hi, s);
    return -1;
  }
  *out = v;
  return 0;
}

int cli_parse_u32(const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
    cli_fail("--%s must be an integer in [%u, %u], got '%s'", name, lo, hi, s);
    return -1;
  }
  *out = (uint32_t)v;
  return 0;
}

int cli_abs_path(const char *name, const char *path, int must_exist, char *out, size_t outlen) {
  char buf[PATH_MAX];
  if (!path || !*path) {
    cli_fail("--%s is empty", name);
    return -1;
  }
  if (realpath(path, buf)) {
    snprintf(out, outlen, "%s", buf);
    return 0;
  }
  if (must_exist) {
    cli_fail("--%s %s: %s", name, path, strerror(errno));
    return -1;
  }
  /* A new output folder: resolve its parent, which must exist. */
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", path);
  char *slash = strrchr(parent, '/');
  const char *base = path;
  if (slash) {
    *slash = 0;
    base = slash + 1;
    if (!*parent) snprintf(parent, sizeof parent, "/");
  } else {
    snprintf(parent, sizeof parent, ".");
  }
  if (!*base || !realpath(parent, buf)) {
    cli_fail("--%s %s: the parent folder does not exist", name, path);
    return -1;
  }
  snprintf(out, outlen, "%s/%s", strcmp(buf, "/") ? buf : "", base);
  return 0;
}
