/*
 * paths.h - resolving user-supplied paths inside configured data roots.
 *
 * Services receive model folders and text files as paths on a shared
 * volume. Every such path goes through ap_path_resolve, which returns the
 * canonical path (symlinks resolved) only when it lies inside one of the
 * data roots, so "../", absolute paths elsewhere and symlinks pointing out
 * of a root are all refused.
 */
#ifndef AP_PATHS_H
#define AP_PATHS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of ap_path_resolve (all negative). */
enum {
  AP_PATH_EINVAL = -1,    /* NULL/empty path, no roots, a ".." component, a root that does not resolve */
  AP_PATH_ENOENT = -2,    /* must_exist and the path does not exist, or the parent of a new path does not */
  AP_PATH_EOUTSIDE = -3,  /* resolves outside every data root */
  AP_PATH_ETOOLONG = -4,  /* longer than PATH_MAX or than outlen */
  AP_PATH_EACCES = -5     /* realpath failed for another reason (permissions, loops: errno text in err) */
};

/*
 * Resolves `path` against `roots` (nroots directories; each is itself
 * canonicalized with realpath, so a root may be a symlink).
 *
 *  - A relative path is taken relative to roots[0].
 *  - A path with a ".." component is refused outright, even when it would
 *    stay inside a root: requests have no reason to use one.
 *  - must_exist = 1: the path must exist; the result is realpath(path).
 *  - must_exist = 0 (outputs): the path may exist or not; when it does not,
 *    its parent directory must exist and the result is realpath(parent) +
 *    "/" + last component. The last component must not be "." or "..".
 *  - The result must equal a root or lie below it ("/data2" is not inside
 *    "/data").
 *
 * On success writes the canonical path to out (outlen bytes) and returns 0.
 * On failure returns an AP_PATH_* code and, when err is not NULL, writes a
 * message naming the path to err (errlen bytes). Allocates nothing the
 * caller must free. Thread-safe.
 */
int ap_path_resolve(const char *const *roots, size_t nroots, const char *path, int must_exist, char *out,
                    size_t outlen, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
