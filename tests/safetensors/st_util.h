/*
 * st_util.h - file helpers shared by the safetensors tests: scratch folders
 * and raw safetensors files built byte by byte (so hostile layouts are easy).
 */
#ifndef AP_ST_TEST_UTIL_H
#define AP_ST_TEST_UTIL_H

#include <fcntl.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fresh folder under $TMPDIR (or /tmp); the caller frees the string. */
static inline char *st_mkdtemp(const char *tag) {
  const char *base = getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  size_t n = strlen(base) + strlen(tag) + 16;
  char *p = malloc(n);
  if (!p) return NULL;
  snprintf(p, n, "%s/%s.XXXXXX", base, tag);
  if (!mkdtemp(p)) { free(p); return NULL; }
  return p;
}

/* Removes a folder tree made by the tests (no symlinks are followed). */
static inline void st_rmtree(const char *dir) {
  if (!dir) return;
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      size_t n = strlen(dir) + strlen(e->d_name) + 2;
      char *p = malloc(n);
      if (!p) break;
      snprintf(p, n, "%s/%s", dir, e->d_name);
      struct stat sb;
      if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) st_rmtree(p);
      else unlink(p);
      free(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

static inline char *st_path(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static inline int st_write_bytes(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t k = n ? fwrite(p, 1, n, f) : 0;
  return (fclose(f) == 0 && k == n) ? 0 : -1;
}

/* Reads a whole file; *n gets its size. NULL on failure. */
static inline unsigned char *st_read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
  if (b && len > 0 && fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
  fclose(f);
  if (b) *n = (size_t)len;
  return b;
}

/* Writes a safetensors file: u64 length (hdr_len_field, or strlen(header)
 * when it is UINT64_MAX), the header text, then data_len bytes of `data`
 * (zeros when data is NULL). */
static inline int st_write_raw(const char *path, const char *header, uint64_t hdr_len_field, const void *data,
                               size_t data_len) {
  size_t hl = strlen(header);
  uint64_t field = hdr_len_field == UINT64_MAX ? (uint64_t)hl : hdr_len_field;
  size_t n = 8 + hl + data_len;
  unsigned char *b = calloc(1, n);
  if (!b) return -1;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(field >> (8 * i));
  memcpy(b + 8, header, hl);
  if (data) memcpy(b + 8 + hl, data, data_len);
  int rc = st_write_bytes(path, b, n);
  free(b);
  return rc;
}

#endif
