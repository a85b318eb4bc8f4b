#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int has_suffix(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && !strcmp(s + n - m, suf);
}

/* Files that hold weights, which the pruned safetensors replace. */
static int is_weight_file(const char *name) {
  return has_suffix(name, ".safetensors") || !strcmp(name, "model.safetensors.index.json") ||
         has_suffix(name, ".bin") || has_suffix(name, ".pt") || has_suffix(name, ".pth") ||
         has_suffix(name, ".gguf") || has_suffix(name, ".bin.index.json");
}

static int copy_file(const char *src, const char *dst, char *err, size_t errlen) {
  int in = open(src, O_RDONLY), out = -1, rc = -1;
  if (in < 0) goto fail;
  out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) goto fail;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0) goto fail;
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0) goto fail;
      off += w;
    }
  }
  if (fsync(out) != 0) goto fail;
  rc = 0;
fail:
  if (rc) snprintf(err, errlen, "export: copying %s to %s: %s", src, dst, strerror(errno));
  if (in >= 0) close(in);
  if (out >= 0 && close(out) != 0 && rc == 0) {
    snprintf(err, errlen, "export: closing %s: %s", dst, strerror(errno));
    rc = -1;
  }
  return rc;
}

static int copy_side_files(const char *model_dir, const char *out_dir, char *err, size_t errlen) {
  DIR *d = opendir(model_dir);
  if (!d) {
    snprintf(err, errlen, "export: cannot list %s: %s", model_dir, strerror(errno));
    return -1;
  }
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d))) {
    if (e->d_name[0] == '.' || is_weight_file(e->d_name)) continue;
    char src[PATH_MAX], dst[PATH_MAX];
    if (snprintf(src, sizeof src, "%s/%s", model_dir, e->d_name) >= (int)sizeof src ||
        snprintf(dst, sizeof dst, "%s/%s", out_dir, e->d_name) >= (int)sizeof dst) {
      snprintf(err, errlen, "export: path too long for %s", e->d_name);
      rc = -1;
      break;
    }
    struct stat st;
    if (stat(src, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    rc = copy_file(src, dst, err, errlen);
  }
  closedir(d);
  return rc;
}

int export_model(const char *model_dir, const ap_st *st, const export_layer *layers, size_t n_layers,
                 const char *out_dir, char *err, size_t errlen) {
  size_t n = ap_st_count(st);
  ap_st_out_tensor *out = calloc(n ? n : 1, sizeof *out);
  void **owned = calloc(n_layers ? n_layers : 1, sizeof *owned);
  int rc = -1;
  if (!out || !owned) {
    snprintf(err, errlen, "export: out of memory");
    goto fail;
  }
  if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "export: cannot create %s: %s", out_dir, strerror(errno));
    goto fail;
  }
  ap_st_out_from_input(st, out);
  for (size_t l = 0; l < n_layers; l++) {
    char name[512];
    snprintf(name, sizeof name, "%s.weight", layers[l].name);
    size_t k = n;
    for (size_t i = 0; i < n; i++)
      if (!strcmp(out[i].name, name)) k = i;
    if (k == n) {
      snprintf(err, errlen, "export: the input has no tensor %s", name);
      goto fail;
    }
    if (out[k].ndim != 2 || (size_t)out[k].shape[0] != layers[l].rows || (size_t)out[k].shape[1] != layers[l].cols) {
      snprintf(err, errlen, "export: %s has another shape than the pruned layer (%zux%zu)", name, layers[l].rows,
               layers[l].cols);
      goto fail;
    }
    size_t esz = ap_dtype_size(out[k].dtype);
    unsigned char *buf = malloc(out[k].nbytes);
    if (!buf) {
      snprintf(err, errlen, "export: out of memory for %s", name);
      goto fail;
    }
    owned[l] = buf;
    memcpy(buf, out[k].data, out[k].nbytes);
    /* All-zero bits are +0.0 in F32, F16 and BF16 alike. */
    size_t count = layers[l].rows * layers[l].cols;
    for (size_t i = 0; i < count; i++)
      if (layers[l].mask[i >> 6] >> (i & 63) & 1) memset(buf + i * esz, 0, esz);
    out[k].data = buf;
  }
  if (ap_st_write_dir(out_dir, out, n, NULL, ap_st_has_index(st), err, errlen) != 0) goto fail;
  if (copy_side_files(model_dir, out_dir, err, errlen) != 0) goto fail;
  rc = 0;
fail:
  if (owned)
    for (size_t l = 0; l < n_layers; l++) free(owned[l]);
  free(owned);
  free(out);
  return rc;
}
