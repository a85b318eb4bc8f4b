/* config.c - see config.h. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static ap_config_entry *find(ap_config_entry *entries, size_t n, const char *flag, size_t flag_len) {
  for (size_t i = 0; i < n; i++)
    if (entries[i].flag && strlen(entries[i].flag) == flag_len && strncmp(entries[i].flag, flag, flag_len) == 0)
      return &entries[i];
  return NULL;
}

int ap_config_parse(ap_config_entry *entries, size_t n, int argc, char **argv, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    const char *env = entries[i].env ? getenv(entries[i].env) : NULL;
    entries[i].value = env ? env : entries[i].def;
    entries[i].source = env ? AP_CONFIG_FROM_ENV : AP_CONFIG_FROM_DEFAULT;
  }
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) return AP_CONFIG_HELP;
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
      return fail(err, errlen, "unexpected argument \"%s\" (see --help)", arg);
    const char *eq = strchr(arg, '=');
    size_t flag_len = eq ? (size_t)(eq - arg) : strlen(arg);
    ap_config_entry *e = find(entries, n, arg, flag_len);
    if (!e) return fail(err, errlen, "unknown option \"%.*s\" (see --help)", (int)flag_len, arg);
    if (eq) {
      e->value = eq + 1;
    } else if (e->is_switch) {
      e->value = "1";
    } else {
      if (a + 1 >= argc) return fail(err, errlen, "option %s needs a value", e->flag);
      e->value = argv[++a];
    }
    e->source = AP_CONFIG_FROM_FLAG;
  }
  return 0;
}

const char *ap_config_get(const ap_config_entry *entries, size_t n, const char *flag) {
  if (!flag) return NULL;
  const ap_config_entry *e = find((ap_config_entry *)entries, n, flag, strlen(flag));
  return e ? e->value : NULL;
}

int ap_config_get_int(const ap_config_entry *entries, size_t n, const char *flag, int64_t min, int64_t max,
                      int64_t *out, char *err, size_t errlen) {
  const char *v = ap_config_get(entries, n, flag);
  if (!v || !v[0]) return fail(err, errlen, "%s is not set", flag);
  errno = 0;
  char *end = NULL;
  long long x = strtoll(v, &end, 10);
  if (errno || *end != '\0') return fail(err, errlen, "%s: \"%s\" is not an integer", flag, v);
  if (x < min || x > max)
    return fail(err, errlen, "%s: %lld is out of range [%lld, %lld]", flag, x, (long long)min, (long long)max);
  *out = (int64_t)x;
  return 0;
}

void ap_config_usage(FILE *f, const char *prog, const char *summary, const ap_config_entry *entries, size_t n) {
  fprintf(f, "usage: %s [options]\n", prog ? prog : "prog");
  if (summary && summary[0]) fprintf(f, "%s\n", summary);
  fprintf(f, "\noptions (flag, else environment variable, else default):\n");
  for (size_t i = 0; i < n; i++) {
    const ap_config_entry *e = &entries[i];
    char left[128];
    snprintf(left, sizeof left, "%s%s", e->flag ? e->flag : "?", e->is_switch ? "" : " VALUE");
    fprintf(f, "  %-28s %s\n", left, e->help ? e->help : "");
    if (e->env || e->def) {
      fprintf(f, "  %-28s", "");
      if (e->env) fprintf(f, " env %s", e->env);
      if (e->def) fprintf(f, "%s default \"%s\"", e->env ? ";" : "", e->def);
      fputc('\n', f);
    }
  }
  fprintf(f, "  %-28s %s\n", "-h, --help", "print this help");
}

int ap_write_port_file(const char *path, int port) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) return -1;
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  fprintf(f, "%d\n", port);
  if (fclose(f) != 0) return -1;
  return rename(tmp, path);
}
