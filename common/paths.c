/* paths.c - see paths.h. */
#include "paths.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int fail(int code, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int fail(int code, char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* 1 when some component of `p` is exactly "..". */
static int has_dotdot(const char *p) {
  const char *s = p;
  while (*s) {
    while (*s == '/') s++;
    const char *e = s;
    while (*e && *e != '/') e++;
    if (e - s == 2 && s[0] == '.' && s[1] == '.') return 1;
    s = e;
  }
  return 0;
}

/* 1 when canonical `p` is `root` or below it (both canonical). */
static int inside(const char *root, const char *p) {
  size_t n = strlen(root);
  if (n == 1 && root[0] == '/') return p[0] == '/';
  return strncmp(root, p, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

static int realpath_error(int e, const char *what, char *err, size_t errlen) {
  if (e == ENOENT || e == ENOTDIR) return fail(AP_PATH_ENOENT, err, errlen, "%s: no such file or directory", what);
  if (e == ENAMETOOLONG) return fail(AP_PATH_ETOOLONG, err, errlen, "%s: path too long", what);
  return fail(AP_PATH_EACCES, err, errlen, "%s: %s", what, strerror(e));
}

int ap_path_resolve(const char *const *roots, size_t nroots, const char *path, int must_exist, char *out,
                    size_t outlen, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (!out || outlen == 0) return fail(AP_PATH_EINVAL, err, errlen, "no output buffer");
  out[0] = '\0';
  if (!path || !path[0]) return fail(AP_PATH_EINVAL, err, errlen, "empty path");
  if (!roots || nroots == 0) return fail(AP_PATH_EINVAL, err, errlen, "%s: no data roots are configured", path);
  if (has_dotdot(path)) return fail(AP_PATH_EINVAL, err, errlen, "%s: \"..\" is not allowed in paths", path);
  if (strlen(path) >= PATH_MAX) return fail(AP_PATH_ETOOLONG, err, errlen, "path too long (%zu bytes)", strlen(path));

  char abs[PATH_MAX];
  if (path[0] == '/') {
    snprintf(abs, sizeof abs, "%s", path);
  } else {
    if (!roots[0] || !roots[0][0]) return fail(AP_PATH_EINVAL, err, errlen, "%s: the first data root is empty", path);
    if ((size_t)snprintf(abs, sizeof abs, "%s/%s", roots[0], path) >= sizeof abs)
      return fail(AP_PATH_ETOOLONG, err, errlen, "%s: path too long", path);
  }

  char resolved[PATH_MAX];
  if (realpath(abs, resolved)) {
    /* exists: nothing more to do */
  } else if (must_exist || errno != ENOENT) {
    return realpath_error(errno, path, err, errlen);
  } else {
    /* A new output: canonicalize the parent, keep the last component. */
    size_t len = strlen(abs);
    while (len > 1 && abs[len - 1] == '/') abs[--len] = '\0';
    char *slash = strrchr(abs, '/');
    const char *base = slash + 1;
    if (!base[0] || strcmp(base, ".") == 0)
      return fail(AP_PATH_EINVAL, err, errlen, "%s: names no file or directory", path);
    char parent[PATH_MAX];
    if (slash == abs) snprintf(parent, sizeof parent, "/");
    else snprintf(parent, sizeof parent, "%.*s", (int)(slash - abs), abs);
    char rparent[PATH_MAX];
    if (!realpath(parent, rparent)) {
      int e = errno;
      char what[PATH_MAX + 32];
      snprintf(what, sizeof what, "%s (parent directory)", path);
      return realpath_error(e, what, err, errlen);
    }
    /* A dangling symlink would be followed by whoever writes the output. */
    struct stat st;
    if (lstat(abs, &st) == 0)
      return fail(AP_PATH_EOUTSIDE, err, errlen, "%s: is a symlink to a missing target", path);
    const char *sep = strcmp(rparent, "/") == 0 ? "" : "/";
    if ((size_t)snprintf(resolved, sizeof resolved, "%s%s%s", rparent, sep, base) >= sizeof resolved)
      return fail(AP_PATH_ETOOLONG, err, errlen, "%s: path too long", path);
  }

  for (size_t i = 0; i < nroots; i++) {
    if (!roots[i] || !roots[i][0]) continue;
    char rroot[PATH_MAX];
    if (!realpath(roots[i], rroot)) {
      int e = errno;
      return fail(AP_PATH_EINVAL, err, errlen, "data root %s does not resolve: %s", roots[i], strerror(e));
    }
    if (inside(rroot, resolved)) {
      if (strlen(resolved) >= outlen) return fail(AP_PATH_ETOOLONG, err, errlen, "%s: output buffer too small", path);
      memcpy(out, resolved, strlen(resolved) + 1);
      return 0;
    }
  }
  return fail(AP_PATH_EOUTSIDE, err, errlen, "%s resolves to %s, outside the data roots", path, resolved);
}
