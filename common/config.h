/*
 * config.h - service settings from flags, environment, or defaults.
 *
 * A service describes its settings in a table:
 *
 *   ap_config_entry cfg[] = {
 *     {"--listen", "AP_PRUNER_LISTEN", "0.0.0.0:50051", "address to serve on"},
 *     {"--verbose", "AP_PRUNER_VERBOSE", "0", "log at debug level", .is_switch = 1},
 *   };
 *   char err[256];
 *   int rc = ap_config_parse(cfg, 2, argc, argv, err, sizeof err);
 *   if (rc == AP_CONFIG_HELP) { ap_config_usage(stdout, argv[0], "pruner worker", cfg, 2); return 0; }
 *   if (rc != 0) { fprintf(stderr, "%s\n", err); return 2; }
 *   const char *listen = ap_config_get(cfg, 2, "--listen");
 *
 * Precedence per setting: a flag on the command line ("--listen ADDR" or
 * "--listen=ADDR"), else the environment variable when set (even to ""),
 * else the default. A switch takes no value on the command line: present
 * means "1" ("--flag=0" turns it off).
 *
 * Ownership: values point into argv, into the environment (valid until
 * the variable is changed) or at the default string; nothing is allocated.
 */
#ifndef AP_CONFIG_H
#define AP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AP_CONFIG_FROM_DEFAULT = 0, AP_CONFIG_FROM_ENV = 1, AP_CONFIG_FROM_FLAG = 2 } ap_config_source;

typedef struct {
  const char *flag;  /* "--listen" */
  const char *env;   /* "AP_PRUNER_LISTEN", or NULL */
  const char *def;   /* default value, or NULL (unset) */
  const char *help;  /* one line for the usage text */
  int is_switch;     /* 1: takes no value on the command line */
  /* filled by ap_config_parse */
  const char *value; /* NULL when unset everywhere */
  ap_config_source source;
} ap_config_entry;

#define AP_CONFIG_HELP 1

/*
 * Fills every entry's value from argv[1..argc-1], the environment and the
 * defaults. Returns 0; AP_CONFIG_HELP when -h or --help was given; -1 on
 * an unknown flag, a positional argument, or a flag missing its value, with
 * a message in err (errlen bytes).
 */
int ap_config_parse(ap_config_entry *entries, size_t n, int argc, char **argv, char *err, size_t errlen);

/* Value of `flag` after parsing; NULL when unset or when no entry has that flag. */
const char *ap_config_get(const ap_config_entry *entries, size_t n, const char *flag);

/*
 * Parses the value of `flag` as a base-10 integer in [min, max] into *out.
 * Returns 0; -1 with a message in err when unset, malformed or out of range.
 */
int ap_config_get_int(const ap_config_entry *entries, size_t n, const char *flag, int64_t min, int64_t max,
                      int64_t *out, char *err, size_t errlen);

/* Prints "usage: prog [options]", the summary, and one line per entry with its env variable and default. */
void ap_config_usage(FILE *f, const char *prog, const char *summary, const ap_config_entry *entries, size_t n);

/*
 * Writes `port` to `path` through a temporary file and rename, so a process
 * waiting for the file never reads a half-written number (services' --port-file).
 * Returns 0, or -1 (errno set) when the file cannot be written.
 */
int ap_write_port_file(const char *path, int port);

#ifdef __cplusplus
}
#endif
#endif
