/* test_paths_config - ap_path_resolve against a scratch tree, ap_config parsing. */
#include "../test.h"

#include "config.h"
#include "paths.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[PATH_MAX];

static void mk(const char *rel) {
  char p[PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
  mkdir(p, 0755);
}

static void touch_file(const char *rel) {
  char p[PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
  FILE *f = fopen(p, "w");
  if (f) fclose(f);
}

static void link_to(const char *target, const char *rel) {
  char p[PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
  if (symlink(target, p) != 0) perror("symlink");
}

static int resolve(const char *const *roots, size_t n, const char *rel_or_abs, int must_exist, char *out, char *err) {
  char p[PATH_MAX + 64];
  if (rel_or_abs[0] == '@') snprintf(p, sizeof p, "%s/%s", g_tmp, rel_or_abs + 1); /* '@' = under the scratch dir */
  else snprintf(p, sizeof p, "%s", rel_or_abs);
  return ap_path_resolve(roots, n, p, must_exist, out, PATH_MAX, err, 256);
}

static void test_paths(void) {
  char tmpl[] = "/tmp/ap_paths_XXXXXX";
  char *d = mkdtemp(tmpl);
  CHECK(d != NULL);
  if (!d) return;
  /* Canonical form of the scratch dir (/tmp may itself be a symlink). */
  CHECK(realpath(d, g_tmp) != NULL);
  mk("data");
  mk("data/models");
  mk("data/models/m1");
  touch_file("data/models/m1/config.json");
  mk("data2");
  touch_file("data2/secret.txt");
  mk("other");
  touch_file("other/passwd");
  link_to("../other", "data/escape");              /* symlink escaping the root */
  link_to("models/m1", "data/inner");              /* symlink staying inside */
  link_to("../other/new.txt", "data/dangling");    /* dangling, pointing out */
  link_to("data", "rootlink");                     /* a root given through a symlink */

  char root[PATH_MAX + 16], rootlink[PATH_MAX + 16];
  snprintf(root, sizeof root, "%s/data", g_tmp);
  snprintf(rootlink, sizeof rootlink, "%s/rootlink", g_tmp);
  const char *roots[] = {root};
  char out[PATH_MAX], err[256], want[PATH_MAX + 64];

  snprintf(want, sizeof want, "%s/data/models/m1/config.json", g_tmp);
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/m1/config.json", 1, out, err), 0);
  CHECK_STR(out, want);
  /* Relative paths are taken from the first root; duplicate slashes and "." are fine. */
  CHECK_EQ_INT(resolve(roots, 1, "models//m1/./config.json", 1, out, err), 0);
  CHECK_STR(out, want);
  /* A symlink inside the root that stays inside resolves to its target. */
  CHECK_EQ_INT(resolve(roots, 1, "@data/inner/config.json", 1, out, err), 0);
  CHECK_STR(out, want);
  /* The root itself is inside. */
  CHECK_EQ_INT(resolve(roots, 1, "@data", 1, out, err), 0);

  CHECK_EQ_INT(resolve(roots, 1, "@data/escape/passwd", 1, out, err), AP_PATH_EOUTSIDE);
  CHECKF(strstr(err, "outside the data roots") != NULL, "err \"%s\"", err);
  CHECK_EQ_INT(resolve(roots, 1, "@data/../other/passwd", 1, out, err), AP_PATH_EINVAL);
  CHECKF(strstr(err, "..") != NULL, "err \"%s\"", err);
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/..", 0, out, err), AP_PATH_EINVAL);
  CHECK_EQ_INT(resolve(roots, 1, "@data2/secret.txt", 1, out, err), AP_PATH_EOUTSIDE); /* prefix, not a parent */
  CHECK_EQ_INT(resolve(roots, 1, "/etc/passwd", 1, out, err), AP_PATH_EOUTSIDE);
  CHECK_EQ_INT(resolve(roots, 1, "", 1, out, err), AP_PATH_EINVAL);
  CHECK_EQ_INT(ap_path_resolve(roots, 1, NULL, 1, out, sizeof out, err, sizeof err), AP_PATH_EINVAL);
  CHECK_EQ_INT(ap_path_resolve(roots, 0, "/x", 1, out, sizeof out, err, sizeof err), AP_PATH_EINVAL);
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/nope", 1, out, err), AP_PATH_ENOENT);
  CHECKF(strstr(err, "no such file") != NULL, "err \"%s\"", err);

  /* Outputs that do not exist yet: the parent must resolve inside a root. */
  snprintf(want, sizeof want, "%s/data/models/out1", g_tmp);
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/out1", 0, out, err), 0);
  CHECK_STR(out, want);
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/out1/", 0, out, err), 0);
  CHECK_STR(out, want);
  CHECK_EQ_INT(resolve(roots, 1, "@data/escape/new", 0, out, err), AP_PATH_EOUTSIDE);
  CHECK_EQ_INT(resolve(roots, 1, "@data/dangling", 0, out, err), AP_PATH_EOUTSIDE);
  CHECK_EQ_INT(resolve(roots, 1, "@data/missing/deeper", 0, out, err), AP_PATH_ENOENT);
  /* An existing output is fine too. */
  CHECK_EQ_INT(resolve(roots, 1, "@data/models/m1", 0, out, err), 0);

  /* Several roots, one given through a symlink. */
  char root2[PATH_MAX + 16];
  snprintf(root2, sizeof root2, "%s/other", g_tmp);
  const char *two[] = {rootlink, root2};
  CHECK_EQ_INT(resolve(two, 2, "@other/passwd", 1, out, err), 0);
  CHECK_EQ_INT(resolve(two, 2, "@data/escape/passwd", 1, out, err), 0); /* now inside the second root */
  CHECK_EQ_INT(resolve(two, 2, "models/m1", 1, out, err), 0);
  const char *missing_root[] = {"/no/such/root"};
  CHECK_EQ_INT(resolve(missing_root, 1, "/etc/passwd", 1, out, err), AP_PATH_EINVAL);

  /* Output buffer too small. */
  char tiny[8];
  CHECK_EQ_INT(ap_path_resolve(roots, 1, "models", 1, tiny, sizeof tiny, err, sizeof err), AP_PATH_ETOOLONG);

  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  CHECK_EQ_INT(system(cmd), 0);
}

static void test_config(void) {
  ap_config_entry cfg[] = {
      {"--listen", "AP_TEST_CFG_LISTEN", "0.0.0.0:50051", "address"},
      {"--threads", "AP_TEST_CFG_THREADS", "8", "handler threads"},
      {"--roots", "AP_TEST_CFG_ROOTS", NULL, "data roots"},
      {"--verbose", NULL, "0", "debug logs", 1},
  };
  size_t n = 4;
  char err[256];
  unsetenv("AP_TEST_CFG_LISTEN");
  setenv("AP_TEST_CFG_THREADS", "3", 1);
  unsetenv("AP_TEST_CFG_ROOTS");
  char *argv1[] = {"prog", "--listen", "127.0.0.1:1", "--verbose", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 4, argv1, err, sizeof err), 0);
  CHECK_STR(ap_config_get(cfg, n, "--listen"), "127.0.0.1:1");
  CHECK_EQ_INT(cfg[0].source, AP_CONFIG_FROM_FLAG);
  CHECK_STR(ap_config_get(cfg, n, "--threads"), "3");
  CHECK_EQ_INT(cfg[1].source, AP_CONFIG_FROM_ENV);
  CHECK(ap_config_get(cfg, n, "--roots") == NULL);
  CHECK_STR(ap_config_get(cfg, n, "--verbose"), "1");
  int64_t v = 0;
  CHECK_EQ_INT(ap_config_get_int(cfg, n, "--threads", 1, 64, &v, err, sizeof err), 0);
  CHECK_EQ_INT(v, 3);
  CHECK_EQ_INT(ap_config_get_int(cfg, n, "--listen", 1, 64, &v, err, sizeof err), -1);
  CHECKF(strstr(err, "not an integer") != NULL, "err \"%s\"", err);

  /* "--flag=value" beats the environment; defaults when nothing is set. */
  unsetenv("AP_TEST_CFG_THREADS");
  char *argv2[] = {"prog", "--threads=100", "--verbose=0", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 3, argv2, err, sizeof err), 0);
  CHECK_STR(ap_config_get(cfg, n, "--listen"), "0.0.0.0:50051");
  CHECK_EQ_INT(cfg[0].source, AP_CONFIG_FROM_DEFAULT);
  CHECK_STR(ap_config_get(cfg, n, "--verbose"), "0");
  CHECK_EQ_INT(ap_config_get_int(cfg, n, "--threads", 1, 64, &v, err, sizeof err), -1);
  CHECKF(strstr(err, "out of range") != NULL, "err \"%s\"", err);

  char *argv3[] = {"prog", "--bogus", "1", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 3, argv3, err, sizeof err), -1);
  CHECKF(strstr(err, "unknown option \"--bogus\"") != NULL, "err \"%s\"", err);
  char *argv4[] = {"prog", "--listen", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 2, argv4, err, sizeof err), -1);
  CHECKF(strstr(err, "needs a value") != NULL, "err \"%s\"", err);
  char *argv5[] = {"prog", "positional", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 2, argv5, err, sizeof err), -1);
  char *argv6[] = {"prog", "--threads", "2", "--help", NULL};
  CHECK_EQ_INT(ap_config_parse(cfg, n, 4, argv6, err, sizeof err), AP_CONFIG_HELP);

  /* The usage text names every flag, env variable and default. */
  char buf[4096] = {0};
  FILE *f = fmemopen(buf, sizeof buf - 1, "w");
  ap_config_usage(f, "prog", "A test program.", cfg, n);
  fclose(f);
  CHECK(strstr(buf, "usage: prog [options]") != NULL);
  CHECK(strstr(buf, "--listen VALUE") != NULL);
  CHECK(strstr(buf, "env AP_TEST_CFG_LISTEN; default \"0.0.0.0:50051\"") != NULL);
  CHECK(strstr(buf, "--verbose ") != NULL && strstr(buf, "--verbose VALUE") == NULL);
}

int main(void) {
  test_paths();
  test_config();
  TEST_DONE();
}
