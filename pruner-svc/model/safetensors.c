/*
 * safetensors.c - see safetensors.h. Every header is checked completely at
 * open time so that later code can trust ap_st_tensor without re-validating.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
/* JSON numbers are doubles; integers beyond 2^53 cannot be represented exactly. */
#define MAX_JSON_INT 9007199254740992.0

typedef struct meta_kv {
  char *key;
  char *value;
} meta_kv;

typedef struct shard {
  char *name;        /* relative to the folder */
  char *path;        /* as opened */
  const unsigned char *map;
  size_t map_len;
  size_t data_start; /* 8 + header length */
  meta_kv *meta;
  size_t nmeta;
} shard;

struct ap_st {
  shard *shards;
  size_t nshards;
  ap_st_tensor *tensors; /* shard order, then file offset */
  size_t ntensors;
  const ap_st_tensor **by_name; /* sorted by name */
  int has_index;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

const char *ap_st_strerror(int code) {
  switch (code) {
    case AP_ST_OK: return "ok";
    case AP_ST_EARG: return "invalid argument";
    case AP_ST_ENOMEM: return "out of memory";
    case AP_ST_EIO: return "I/O error";
    case AP_ST_ENOMODEL: return "no model.safetensors or model.safetensors.index.json";
    case AP_ST_ETRUNC: return "file too short for a safetensors header";
    case AP_ST_EHDRLEN: return "header length out of range";
    case AP_ST_EJSON: return "header is not a JSON object";
    case AP_ST_EENTRY: return "malformed tensor entry";
    case AP_ST_EDTYPE: return "unsupported dtype";
    case AP_ST_EUNKDTYPE: return "unknown dtype";
    case AP_ST_ESHAPE: return "invalid shape";
    case AP_ST_EOFFSET: return "data offsets outside the data area";
    case AP_ST_EBEGINEND: return "data offsets begin > end";
    case AP_ST_ESIZE: return "tensor byte size does not match shape and dtype";
    case AP_ST_EOVERLAP: return "tensors overlap";
    case AP_ST_EDUP: return "duplicate tensor name";
    case AP_ST_EINDEX: return "invalid model.safetensors.index.json";
    case AP_ST_ESHARDMISSING: return "shard file missing";
    case AP_ST_ETENSORMISSING: return "tensor missing from its shard";
    case AP_ST_EUNLISTED: return "tensor not listed for its shard in the index";
    case AP_ST_ENONFINITE: return "NaN or Inf in weights";
    default: return "unknown error";
  }
}

/* Dtypes of the safetensors format that we recognise but do not compute with. */
static int is_safetensors_dtype(const char *s) {
  static const char *const known[] = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
                                      "F64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4",
                                      "F6_E2M3", "F6_E3M2"};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(s, known[i]) == 0) return 1;
  return 0;
}

static char *path_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  size_t k = a;
  if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
  memcpy(p + k, name, b + 1);
  return p;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* A shard or output file name must stay inside the model folder. */
static int safe_file_name(const char *s) {
  return s && s[0] && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\');
}

/* Exact non-negative integer below 2^53, or -1. */
static int json_uint(const cJSON *n, uint64_t *out) {
  if (!cJSON_IsNumber(n)) return -1;
  double d = n->valuedouble;
  if (!(d >= 0.0) || d >= MAX_JSON_INT || d != (double)(uint64_t)d) return -1;
  *out = (uint64_t)d;
  return 0;
}

static int mul_overflow_size(size_t a, size_t b, size_t *out) {
  if (a != 0 && b > SIZE_MAX / a) return 1;
  *out = a * b;
  return 0;
}

/* ------------------------------------------------------------------ reading */

static void shard_free(shard *s) {
  if (s->map) munmap((void *)s->map, s->map_len);
  for (size_t i = 0; i < s->nmeta; i++) {
    free(s->meta[i].key);
    free(s->meta[i].value);
  }
  free(s->meta);
  free(s->name);
  free(s->path);
  memset(s, 0, sizeof *s);
}

void ap_st_close(ap_st *st) {
  if (!st) return;
  for (size_t i = 0; i < st->nshards; i++) shard_free(&st->shards[i]);
  for (size_t i = 0; i < st->ntensors; i++) free((char *)st->tensors[i].name);
  free(st->shards);
  free(st->tensors);
  free(st->by_name);
  free(st);
}

static int map_file(shard *s, char *err, size_t errlen, int missing_code) {
  int fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    set_err(err, errlen, "%s: %s", s->path, strerror(e));
    return e == ENOENT ? missing_code : AP_ST_EIO;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    set_err(err, errlen, "%s: fstat: %s", s->path, strerror(errno));
    close(fd);
    return AP_ST_EIO;
  }
  if (!S_ISREG(sb.st_mode)) {
    set_err(err, errlen, "%s: not a regular file", s->path);
    close(fd);
    return AP_ST_EIO;
  }
  if (sb.st_size < 8) {
    set_err(err, errlen, "%s: %lld bytes, shorter than the 8-byte header length", s->path, (long long)sb.st_size);
    close(fd);
    return AP_ST_ETRUNC;
  }
  if ((uint64_t)sb.st_size > SIZE_MAX) {
    set_err(err, errlen, "%s: too large to map", s->path);
    close(fd);
    return AP_ST_EIO;
  }
  void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd); /* the mapping keeps the file alive */
  if (m == MAP_FAILED) {
    set_err(err, errlen, "%s: mmap: %s", s->path, strerror(e));
    return AP_ST_EIO;
  }
  s->map = m;
  s->map_len = (size_t)sb.st_size;
  return 0;
}

typedef struct tensor_list {
  ap_st_tensor *v;
  size_t n, cap;
} tensor_list;

static int tl_push(tensor_list *l, const ap_st_tensor *t) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    ap_st_tensor *v = realloc(l->v, cap * sizeof *v);
    if (!v) return -1;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = *t;
  return 0;
}

static int cmp_by_offset(const void *a, const void *b) {
  const ap_st_tensor *x = a, *y = b;
  if (x->file_offset != y->file_offset) return x->file_offset < y->file_offset ? -1 : 1;
  if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int parse_metadata(shard *s, const cJSON *md, char *err, size_t errlen) {
  if (!cJSON_IsObject(md)) {
    set_err(err, errlen, "%s: __metadata__ is not an object", s->path);
    return AP_ST_EENTRY;
  }
  size_t n = (size_t)cJSON_GetArraySize(md);
  s->meta = calloc(n ? n : 1, sizeof *s->meta);
  if (!s->meta) return AP_ST_ENOMEM;
  for (const cJSON *kv = md->child; kv; kv = kv->next) {
    if (!cJSON_IsString(kv) || !kv->string) {
      set_err(err, errlen, "%s: __metadata__ value of '%s' is not a string", s->path, kv->string ? kv->string : "?");
      return AP_ST_EENTRY;
    }
    meta_kv *e = &s->meta[s->nmeta];
    e->key = strdup(kv->string);
    e->value = strdup(kv->valuestring);
    s->nmeta++;
    if (!e->key || !e->value) return AP_ST_ENOMEM;
  }
  return 0;
}

/* Parses one tensor entry into *t (name not yet set). */
static int parse_entry(const shard *s, const char *name, const cJSON *e, size_t data_len, ap_st_tensor *t,
                       char *err, size_t errlen) {
  if (!cJSON_IsObject(e)) {
    set_err(err, errlen, "%s: tensor '%s': entry is not an object", s->path, name);
    return AP_ST_EENTRY;
  }
  const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo)) {
    set_err(err, errlen, "%s: tensor '%s': needs string \"dtype\", array \"shape\" and array \"data_offsets\"",
            s->path, name);
    return AP_ST_EENTRY;
  }
  if (ap_dtype_from_name(jd->valuestring, &t->dtype) != 0) {
    int known = is_safetensors_dtype(jd->valuestring);
    set_err(err, errlen, "%s: tensor '%s': %s dtype '%.32s' (only F32, F16, BF16)", s->path, name,
            known ? "unsupported" : "unknown", jd->valuestring);
    return known ? AP_ST_EDTYPE : AP_ST_EUNKDTYPE;
  }
  int ndim = cJSON_GetArraySize(js);
  if (ndim > AP_ST_MAX_DIMS) {
    set_err(err, errlen, "%s: tensor '%s': %d dims, at most %d supported", s->path, name, ndim, AP_ST_MAX_DIMS);
    return AP_ST_ESHAPE;
  }
  t->ndim = ndim;
  size_t numel = 1;
  int overflow = 0, i = 0;
  for (const cJSON *d = js->child; d; d = d->next, i++) {
    uint64_t v;
    if (json_uint(d, &v) != 0) {
      set_err(err, errlen, "%s: tensor '%s': shape[%d] is not a non-negative integer", s->path, name, i);
      return AP_ST_ESHAPE;
    }
    t->shape[i] = (int64_t)v;
    if ((uint64_t)(size_t)v != v || mul_overflow_size(numel, (size_t)v, &numel)) overflow = 1;
  }
  size_t nbytes = 0;
  if (overflow || mul_overflow_size(numel, ap_dtype_size(t->dtype), &nbytes)) {
    set_err(err, errlen, "%s: tensor '%s': element count of the shape overflows", s->path, name);
    return AP_ST_ESIZE;
  }
  uint64_t begin, end;
  if (cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &begin) != 0 || json_uint(jo->child->next, &end) != 0) {
    set_err(err, errlen, "%s: tensor '%s': data_offsets must be two non-negative integers", s->path, name);
    return AP_ST_EOFFSET;
  }
  if (begin > end) {
    set_err(err, errlen, "%s: tensor '%s': data_offsets begin %" PRIu64 " > end %" PRIu64, s->path, name, begin, end);
    return AP_ST_EBEGINEND;
  }
  if (end > data_len) {
    set_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] outside the data area of %zu bytes",
            s->path, name, begin, end, data_len);
    return AP_ST_EOFFSET;
  }
  if (end - begin != nbytes) {
    set_err(err, errlen, "%s: tensor '%s': %" PRIu64 " bytes in file, shape and %s imply %zu", s->path, name,
            end - begin, ap_dtype_name(t->dtype), nbytes);
    return AP_ST_ESIZE;
  }
  t->numel = numel;
  t->nbytes = nbytes;
  t->file_offset = s->data_start + begin;
  t->data = s->map + t->file_offset;
  t->aligned = ((uintptr_t)t->data % ap_dtype_size(t->dtype)) == 0;
  return 0;
}

/* Maps and validates one shard, appending its tensors to *out (sorted by offset). */
static int load_shard(shard *s, int shard_idx, tensor_list *out, char *err, size_t errlen, int missing_code) {
  int rc = map_file(s, err, errlen, missing_code);
  if (rc) return rc;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | s->map[i];
  if (hlen > AP_ST_MAX_HEADER || hlen > s->map_len - 8) {
    set_err(err, errlen, "%s: header length %" PRIu64 " exceeds %s (%zu bytes)", s->path, hlen,
            hlen > AP_ST_MAX_HEADER ? "the 100 MB limit" : "the file", s->map_len - 8);
    return AP_ST_EHDRLEN;
  }
  s->data_start = 8 + (size_t)hlen;
  size_t data_len = s->map_len - s->data_start;

  /* A private NUL-terminated copy: the parser never reads past the header. */
  char *text = malloc((size_t)hlen + 1);
  if (!text) return AP_ST_ENOMEM;
  memcpy(text, s->map + 8, (size_t)hlen);
  text[hlen] = 0;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
  int bad_tail = 0;
  if (root && end) {
    /* Padding after the object may only be whitespace; a NUL inside the header is garbage too. */
    for (const char *p = end; p < text + hlen; p++)
      if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') { bad_tail = 1; break; }
  }
  if (!root || bad_tail || !cJSON_IsObject(root)) {
    set_err(err, errlen, "%s: header is not %s", s->path, root && !bad_tail ? "a JSON object" : "valid JSON");
    cJSON_Delete(root);
    free(text);
    return AP_ST_EJSON;
  }
  size_t first = out->n;
  rc = 0;
  for (const cJSON *e = root->child; e; e = e->next) {
    const char *name = e->string ? e->string : "";
    if (strcmp(name, "__metadata__") == 0) {
      if (s->meta) {
        set_err(err, errlen, "%s: __metadata__ appears twice", s->path);
        rc = AP_ST_EENTRY;
        break;
      }
      if ((rc = parse_metadata(s, e, err, errlen)) != 0) break;
      continue;
    }
    ap_st_tensor t;
    memset(&t, 0, sizeof t);
    if ((rc = parse_entry(s, name, e, data_len, &t, err, errlen)) != 0) break;
    t.shard = shard_idx;
    t.name = strdup(name);
    if (!t.name || tl_push(out, &t) != 0) {
      free((char *)t.name);
      rc = AP_ST_ENOMEM;
      break;
    }
  }
  cJSON_Delete(root);
  free(text);
  if (rc) return rc;

  size_t n = out->n - first;
  if (n == 0) return 0;
  ap_st_tensor *v = out->v + first;
  qsort(v, n, sizeof *v, cmp_by_offset);
  const ap_st_tensor *prev = NULL; /* the non-empty tensor reaching furthest so far */
  for (size_t i = 0; i < n; i++) {
    if (v[i].nbytes == 0) continue;
    if (prev && v[i].file_offset < prev->file_offset + prev->nbytes) {
      set_err(err, errlen, "%s: tensors '%s' and '%s' overlap", s->path, prev->name, v[i].name);
      return AP_ST_EOVERLAP;
    }
    if (!prev || v[i].file_offset + v[i].nbytes > prev->file_offset + prev->nbytes) prev = &v[i];
  }
  return 0;
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
  const ap_st_tensor *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct wm_entry {
  const char *name;
  const char *file;
  int shard;
} wm_entry;

static int cmp_wm(const void *a, const void *b) {
  return strcmp(((const wm_entry *)a)->name, ((const wm_entry *)b)->name);
}

static int read_small_file(const char *path, char **out, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_err(err, errlen, "%s: %s", path, strerror(errno));
    return AP_ST_EIO;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) {
    fclose(f);
    return AP_ST_ENOMEM;
  }
  for (;;) {
    if (n + 1 >= cap) {
      if (cap >= AP_ST_MAX_HEADER) {
        set_err(err, errlen, "%s: larger than 100 MB", path);
        free(buf);
        fclose(f);
        return AP_ST_EINDEX;
      }
      char *b = realloc(buf, cap * 2);
      if (!b) {
        free(buf);
        fclose(f);
        return AP_ST_ENOMEM;
      }
      buf = b;
      cap *= 2;
    }
    size_t k = fread(buf + n, 1, cap - 1 - n, f);
    n += k;
    if (k == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    set_err(err, errlen, "%s: read error", path);
    free(buf);
    return AP_ST_EIO;
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

/* Finishes an ap_st whose shards and tensor list are loaded: global duplicate
 * check and the by-name index. */
static int finish(ap_st *st, tensor_list *tl, char *err, size_t errlen) {
  st->tensors = tl->v;
  st->ntensors = tl->n;
  tl->v = NULL;
  tl->n = tl->cap = 0;
  st->by_name = malloc((st->ntensors ? st->ntensors : 1) * sizeof *st->by_name);
  if (!st->by_name) return AP_ST_ENOMEM;
  for (size_t i = 0; i < st->ntensors; i++) st->by_name[i] = &st->tensors[i];
  qsort(st->by_name, st->ntensors, sizeof *st->by_name, cmp_tensor_ptr_name);
  for (size_t i = 1; i < st->ntensors; i++) {
    const ap_st_tensor *a = st->by_name[i - 1], *b = st->by_name[i];
    if (strcmp(a->name, b->name) == 0) {
      set_err(err, errlen, "tensor '%s' appears twice (in %s and %s)", a->name, st->shards[a->shard].path,
              st->shards[b->shard].path);
      return AP_ST_EDUP;
    }
  }
  return 0;
}

static int open_indexed(ap_st *st, const char *dir, tensor_list *tl, char *err, size_t errlen) {
  char *ipath = path_join(dir, INDEX_NAME);
  char *text = NULL;
  size_t len = 0;
  cJSON *root = NULL;
  wm_entry *wm = NULL;
  const char **files = NULL;
  int rc;
  if (!ipath) return AP_ST_ENOMEM;
  if ((rc = read_small_file(ipath, &text, &len, err, errlen)) != 0) goto done;
  const char *end = NULL;
  root = cJSON_ParseWithOpts(text, &end, 0);
  int bad_tail = 0;
  if (root && end)
    for (const char *p = end; p < text + len; p++)
      if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') { bad_tail = 1; break; }
  const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
  if (!root || bad_tail || !cJSON_IsObject(root) || !cJSON_IsObject(map)) {
    set_err(err, errlen, "%s: %s", ipath, !root || bad_tail ? "not valid JSON" : "no object \"weight_map\"");
    rc = AP_ST_EINDEX;
    goto done;
  }
  size_t nwm = (size_t)cJSON_GetArraySize(map);
  wm = calloc(nwm ? nwm : 1, sizeof *wm);
  files = calloc(nwm ? nwm : 1, sizeof *files);
  if (!wm || !files) { rc = AP_ST_ENOMEM; goto done; }
  size_t k = 0;
  for (const cJSON *e = map->child; e; e = e->next, k++) {
    if (!cJSON_IsString(e) || !safe_file_name(e->valuestring)) {
      set_err(err, errlen, "%s: weight_map entry '%s' is not a plain file name in the folder", ipath,
              e->string ? e->string : "?");
      rc = AP_ST_EINDEX;
      goto done;
    }
    wm[k].name = e->string ? e->string : "";
    wm[k].file = e->valuestring;
    files[k] = e->valuestring;
  }
  qsort(wm, nwm, sizeof *wm, cmp_wm);
  for (size_t i = 1; i < nwm; i++)
    if (strcmp(wm[i - 1].name, wm[i].name) == 0) {
      set_err(err, errlen, "%s: tensor '%s' listed twice in weight_map", ipath, wm[i].name);
      rc = AP_ST_EINDEX;
      goto done;
    }
  /* Distinct shard files, sorted. */
  qsort(files, nwm, sizeof *files, cmp_str_ptr);
  size_t nfiles = 0;
  for (size_t i = 0; i < nwm; i++)
    if (nfiles == 0 || strcmp(files[nfiles - 1], files[i]) != 0) files[nfiles++] = files[i];
  st->shards = calloc(nfiles ? nfiles : 1, sizeof *st->shards);
  if (!st->shards) { rc = AP_ST_ENOMEM; goto done; }
  for (size_t i = 0; i < nfiles; i++) {
    shard *s = &st->shards[st->nshards++];
    s->name = strdup(files[i]);
    s->path = path_join(dir, files[i]);
    if (!s->name || !s->path) { rc = AP_ST_ENOMEM; goto done; }
    if ((rc = load_shard(s, (int)i, tl, err, errlen, AP_ST_ESHARDMISSING)) != 0) {
      if (rc == AP_ST_ESHARDMISSING) {
        char inner[256];
        snprintf(inner, sizeof inner, "%s", err ? err : "");
        set_err(err, errlen, "%s names shard %s: %s", ipath, files[i], inner);
      }
      goto done;
    }
  }
  for (size_t i = 0; i < nwm; i++) {
    const char **f = bsearch(&wm[i].file, files, nfiles, sizeof *files, cmp_str_ptr);
    wm[i].shard = (int)(f - files);
  }
  if ((rc = finish(st, tl, err, errlen)) != 0) goto done;
  /* Every mapped tensor lives in its shard, and every shard tensor is mapped there. */
  for (size_t i = 0; i < nwm; i++) {
    const ap_st_tensor *t = ap_st_find(st, wm[i].name);
    if (!t || t->shard != wm[i].shard) {
      set_err(err, errlen, "%s maps tensor '%s' to %s, which lacks it", ipath, wm[i].name, wm[i].file);
      rc = AP_ST_ETENSORMISSING;
      goto done;
    }
  }
  for (size_t i = 0; i < st->ntensors; i++) {
    const ap_st_tensor *t = &st->tensors[i];
    wm_entry key = {t->name, NULL, 0};
    const wm_entry *w = bsearch(&key, wm, nwm, sizeof *wm, cmp_wm);
    if (!w || w->shard != t->shard) {
      set_err(err, errlen, "%s: tensor '%s' is not mapped to this shard by %s", st->shards[t->shard].path, t->name,
              INDEX_NAME);
      rc = AP_ST_EUNLISTED;
      goto done;
    }
  }
  st->has_index = 1;
  rc = 0;
done:
  free(files);
  free(wm);
  cJSON_Delete(root);
  free(text);
  free(ipath);
  return rc;
}

int ap_st_open(const char *path, ap_st **out, char *err, size_t errlen) {
  if (out) *out = NULL;
  if (!path || !out) {
    set_err(err, errlen, "ap_st_open: NULL argument");
    return AP_ST_EARG;
  }
  set_err(err, errlen, "ok");
  ap_st *st = calloc(1, sizeof *st);
  tensor_list tl = {0};
  int rc;
  if (!st) return AP_ST_ENOMEM;
  struct stat sb;
  if (stat(path, &sb) != 0) {
    set_err(err, errlen, "%s: %s", path, strerror(errno));
    rc = errno == ENOENT ? AP_ST_ENOMODEL : AP_ST_EIO;
    goto fail;
  }
  if (S_ISDIR(sb.st_mode)) {
    /* transformers prefers the single file when both exist; so do we. */
    char *single = path_join(path, SINGLE_NAME);
    char *index = path_join(path, INDEX_NAME);
    if (!single || !index) {
      free(single);
      free(index);
      rc = AP_ST_ENOMEM;
      goto fail;
    }
    int have_single = access(single, F_OK) == 0, have_index = access(index, F_OK) == 0;
    free(index);
    if (have_single) {
      st->shards = calloc(1, sizeof *st->shards);
      if (!st->shards) { free(single); rc = AP_ST_ENOMEM; goto fail; }
      st->nshards = 1;
      st->shards[0].path = single;
      st->shards[0].name = strdup(SINGLE_NAME);
      if (!st->shards[0].name) { rc = AP_ST_ENOMEM; goto fail; }
      if ((rc = load_shard(&st->shards[0], 0, &tl, err, errlen, AP_ST_EIO)) != 0) goto fail;
      if ((rc = finish(st, &tl, err, errlen)) != 0) goto fail;
    } else if (have_index) {
      free(single);
      if ((rc = open_indexed(st, path, &tl, err, errlen)) != 0) goto fail;
    } else {
      free(single);
      set_err(err, errlen, "%s: no %s or %s", path, SINGLE_NAME, INDEX_NAME);
      rc = AP_ST_ENOMODEL;
      goto fail;
    }
  } else {
    st->shards = calloc(1, sizeof *st->shards);
    if (!st->shards) { rc = AP_ST_ENOMEM; goto fail; }
    st->nshards = 1;
    st->shards[0].path = strdup(path);
    st->shards[0].name = strdup(base_name(path));
    if (!st->shards[0].path || !st->shards[0].name) { rc = AP_ST_ENOMEM; goto fail; }
    if ((rc = load_shard(&st->shards[0], 0, &tl, err, errlen, AP_ST_EIO)) != 0) goto fail;
    if ((rc = finish(st, &tl, err, errlen)) != 0) goto fail;
  }
  *out = st;
  return 0;
fail:
  if (rc == AP_ST_ENOMEM) set_err(err, errlen, "%s: out of memory", path);
  for (size_t i = 0; i < tl.n; i++) free((char *)tl.v[i].name);
  free(tl.v);
  ap_st_close(st);
  return rc;
}

size_t ap_st_count(const ap_st *st) { return st ? st->ntensors : 0; }

const ap_st_tensor *ap_st_get(const ap_st *st, size_t i) {
  return st && i < st->ntensors ? &st->tensors[i] : NULL;
}

const ap_st_tensor *ap_st_find(const ap_st *st, const char *name) {
  if (!st || !name || !st->by_name) return NULL;
  size_t lo = 0, hi = st->ntensors;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(st->by_name[mid]->name, name);
    if (c == 0) return st->by_name[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

size_t ap_st_shard_count(const ap_st *st) { return st ? st->nshards : 0; }

const char *ap_st_shard_name(const ap_st *st, size_t i) {
  return st && i < st->nshards ? st->shards[i].name : NULL;
}

int ap_st_has_index(const ap_st *st) { return st ? st->has_index : 0; }

const char *ap_st_metadata(const ap_st *st, size_t shard_idx, const char *key) {
  if (!st || shard_idx >= st->nshards || !key) return NULL;
  const shard *s = &st->shards[shard_idx];
  for (size_t i = 0; i < s->nmeta; i++)
    if (strcmp(s->meta[i].key, key) == 0) return s->meta[i].value;
  return NULL;
}

/* Converts and returns the index of the first non-finite element, or SIZE_MAX.
 * One pass that only ORs a flag; the index is searched for only on failure.
 * Large tensors are split over OpenMP threads (7B-scale weights convert at
 * memory bandwidth instead of one core's speed). */
static size_t convert_f32(const ap_st_tensor *t, float *dst) {
  const unsigned char *src = t->data;
  const ptrdiff_t n = (ptrdiff_t)t->numel;
  const ap_dtype dt = t->dtype;
  unsigned any = 0;
#pragma omp parallel for reduction(| : any) schedule(static) if (n > (1 << 20))
  for (ptrdiff_t i = 0; i < n; i++) {
    uint32_t u;
    if (dt == AP_F32) {
      memcpy(&u, src + 4 * i, 4);
    } else {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      u = ap_f32_bits(dt == AP_BF16 ? ap_bf16_to_f32(h) : ap_f16_to_f32(h));
    }
    any |= (u & 0x7f800000u) == 0x7f800000u;
    memcpy(&dst[i], &u, 4);
  }
  if (!any) return SIZE_MAX;
  for (ptrdiff_t i = 0; i < n; i++)
    if ((ap_f32_bits(dst[i]) & 0x7f800000u) == 0x7f800000u) return (size_t)i;
  return SIZE_MAX;
}

int ap_st_tensor_to_f32_err(const ap_st_tensor *t, float *dst, char *err, size_t errlen) {
  if (!t || !dst) {
    set_err(err, errlen, "ap_st_tensor_to_f32: NULL argument");
    return AP_ST_EARG;
  }
  size_t bad = convert_f32(t, dst);
  if (bad != SIZE_MAX) {
    set_err(err, errlen, "tensor '%s': element %zu is %s", t->name, bad,
            dst[bad] != dst[bad] ? "NaN" : "Inf");
    return AP_ST_ENONFINITE;
  }
  return 0;
}

int ap_st_tensor_to_f32(const ap_st_tensor *t, float *dst) { return ap_st_tensor_to_f32_err(t, dst, NULL, 0); }

int ap_st_check_finite(const ap_st *st, char *err, size_t errlen) {
  if (!st) return AP_ST_EARG;
  for (size_t k = 0; k < st->ntensors; k++) {
    const ap_st_tensor *t = &st->tensors[k];
    const unsigned char *p = t->data;
    size_t es = ap_dtype_size(t->dtype);
    for (size_t i = 0; i < t->numel; i++) {
      int nonfinite;
      if (es == 4) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        nonfinite = (u & 0x7f800000u) == 0x7f800000u;
      } else {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        nonfinite = t->dtype == AP_BF16 ? (h & 0x7f80u) == 0x7f80u : (h & 0x7c00u) == 0x7c00u;
      }
      if (nonfinite) {
        set_err(err, errlen, "%s: tensor '%s': element %zu is NaN or Inf", st->shards[t->shard].path, t->name, i);
        return AP_ST_ENONFINITE;
      }
    }
  }
  return 0;
}

void ap_f32_to_dtype(ap_dtype t, const float *src, void *dst, size_t n) {
  unsigned char *d = dst;
  if (t == AP_F32) {
    if (n) memcpy(d, src, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h = t == AP_BF16 ? ap_f32_to_bf16(src[i]) : ap_f32_to_f16(src[i]);
    memcpy(d + 2 * i, &h, 2);
  }
}

/* ------------------------------------------------------------------ writing */

typedef struct sbuf {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (b->n + n + 1 > cap) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return; }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k > 0) sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static void sb_json_str(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char e[2] = {'\\', (char)*p};
      sb_put(b, e, 2);
    } else if (*p < 0x20) {
      sb_fmt(b, "\\u%04x", *p);
    } else {
      sb_put(b, (const char *)p, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static int cmp_out_ptr_name(const void *a, const void *b) {
  const ap_st_out_tensor *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

/* Checks a list of output tensors; `need_shard` for the folder writer. */
static int validate_out(const ap_st_out_tensor *ts, size_t n, int need_shard, char *err, size_t errlen) {
  if (n && !ts) {
    set_err(err, errlen, "NULL tensor list");
    return AP_ST_EARG;
  }
  for (size_t i = 0; i < n; i++) {
    const ap_st_out_tensor *t = &ts[i];
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0) {
      set_err(err, errlen, "tensor %zu: name must be non-empty and not __metadata__", i);
      return AP_ST_EARG;
    }
    size_t es = ap_dtype_size(t->dtype);
    if (es == 0) {
      set_err(err, errlen, "tensor '%s': invalid dtype %d", t->name, (int)t->dtype);
      return AP_ST_EARG;
    }
    if (t->ndim < 0 || t->ndim > AP_ST_MAX_DIMS) {
      set_err(err, errlen, "tensor '%s': ndim %d out of range", t->name, t->ndim);
      return AP_ST_EARG;
    }
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      if (t->shape[d] < 0 || (double)t->shape[d] >= MAX_JSON_INT ||
          mul_overflow_size(numel, (size_t)t->shape[d], &numel)) {
        set_err(err, errlen, "tensor '%s': shape[%d] = %" PRId64 " invalid or overflowing", t->name, d, t->shape[d]);
        return AP_ST_EARG;
      }
    }
    size_t nbytes;
    if (mul_overflow_size(numel, es, &nbytes) || nbytes != t->nbytes) {
      set_err(err, errlen, "tensor '%s': nbytes %zu, shape and %s imply %zu", t->name, t->nbytes,
              ap_dtype_name(t->dtype), numel * es);
      return AP_ST_EARG;
    }
    if (t->nbytes && !t->data) {
      set_err(err, errlen, "tensor '%s': NULL data", t->name);
      return AP_ST_EARG;
    }
    if (need_shard) {
      size_t L = t->shard ? strlen(t->shard) : 0;
      if (!safe_file_name(t->shard) || L < 12 || strcmp(t->shard + L - 12, ".safetensors") != 0 ||
          strcmp(t->shard, INDEX_NAME) == 0) {
        set_err(err, errlen, "tensor '%s': shard '%s' is not a plain *.safetensors file name", t->name,
                t->shard ? t->shard : "(null)");
        return AP_ST_EARG;
      }
    }
  }
  const ap_st_out_tensor **sorted = malloc((n ? n : 1) * sizeof *sorted);
  if (!sorted) return AP_ST_ENOMEM;
  for (size_t i = 0; i < n; i++) sorted[i] = &ts[i];
  qsort(sorted, n, sizeof *sorted, cmp_out_ptr_name);
  for (size_t i = 1; i < n; i++)
    if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
      set_err(err, errlen, "tensor '%s' given twice", sorted[i]->name);
      free(sorted);
      return AP_ST_EARG;
    }
  free(sorted);
  return 0;
}

/* Parses metadata (NULL -> {"format":"pt"}) and appends it as "__metadata__":{...}. */
static int put_metadata(sbuf *b, const char *metadata_json, char *err, size_t errlen) {
  if (!metadata_json) {
    sb_str(b, "\"__metadata__\":{\"format\":\"pt\"}");
    return 0;
  }
  cJSON *m = cJSON_Parse(metadata_json);
  if (!cJSON_IsObject(m)) {
    set_err(err, errlen, "metadata is not a JSON object");
    cJSON_Delete(m);
    return AP_ST_EARG;
  }
  sb_str(b, "\"__metadata__\":{");
  int first = 1;
  for (const cJSON *kv = m->child; kv; kv = kv->next) {
    if (!cJSON_IsString(kv) || !kv->string) {
      set_err(err, errlen, "metadata value of '%s' is not a string", kv->string ? kv->string : "?");
      cJSON_Delete(m);
      return AP_ST_EARG;
    }
    if (!first) sb_put(b, ",", 1);
    first = 0;
    sb_json_str(b, kv->string);
    sb_put(b, ":", 1);
    sb_json_str(b, kv->valuestring);
  }
  sb_put(b, "}", 1);
  cJSON_Delete(m);
  return 0;
}

static int write_all(int fd, const void *p, size_t n) {
  const unsigned char *c = p;
  while (n) {
    size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
    ssize_t k = write(fd, c, chunk);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += k;
    n -= (size_t)k;
  }
  return 0;
}

static char *dir_of(const char *path) {
  const char *s = strrchr(path, '/');
  if (!s) return strdup(".");
  if (s == path) return strdup("/");
  return strndup(path, (size_t)(s - path));
}

static int fsync_dir(const char *path, char *err, size_t errlen) {
  char *d = dir_of(path);
  if (!d) return AP_ST_ENOMEM;
  int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = 0;
  if (fd < 0 || fsync(fd) != 0) {
    set_err(err, errlen, "%s: fsync of folder: %s", d, strerror(errno));
    rc = AP_ST_EIO;
  }
  if (fd >= 0) close(fd);
  free(d);
  return rc;
}

/* Writes `bytes` (and optionally tensors) to a fresh temporary next to `path`,
 * fsync'ed; *tmp_out receives its malloc'd name. */
static int write_tmp(const char *path, const void *head, size_t headlen, const ap_st_out_tensor *const *ts, size_t n,
                     char **tmp_out, char *err, size_t errlen) {
  size_t L = strlen(path);
  char *tmp = malloc(L + 16);
  if (!tmp) return AP_ST_ENOMEM;
  memcpy(tmp, path, L);
  memcpy(tmp + L, ".tmp.XXXXXX", 12);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    set_err(err, errlen, "%s: create temporary: %s", tmp, strerror(errno));
    free(tmp);
    return AP_ST_EIO;
  }
  const char *what = "write";
  int ok = fchmod(fd, 0644) == 0 && write_all(fd, head, headlen) == 0;
  for (size_t i = 0; ok && i < n; i++) ok = write_all(fd, ts[i]->data, ts[i]->nbytes) == 0;
  if (ok && fsync(fd) != 0) { ok = 0; what = "fsync"; }
  int e = errno;
  if (close(fd) != 0 && ok) { ok = 0; what = "close"; e = errno; }
  if (!ok) {
    set_err(err, errlen, "%s: %s: %s", tmp, what, strerror(e));
    unlink(tmp);
    free(tmp);
    return AP_ST_EIO;
  }
  *tmp_out = tmp;
  return 0;
}

/* Builds the 8-byte length + padded header for ts[0..n). */
static int build_header(const ap_st_out_tensor *const *ts, size_t n, const char *metadata_json, sbuf *out,
                        char *err, size_t errlen) {
  sbuf h = {0};
  sb_str(&h, "{");
  int rc = put_metadata(&h, metadata_json, err, errlen);
  if (rc) { free(h.p); return rc; }
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const ap_st_out_tensor *t = ts[i];
    sb_put(&h, ",", 1);
    sb_json_str(&h, t->name);
    sb_fmt(&h, ":{\"dtype\":\"%s\",\"shape\":[", ap_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++) sb_fmt(&h, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
    sb_fmt(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
    off += t->nbytes;
  }
  sb_str(&h, "}");
  while (h.n % 8) sb_put(&h, " ", 1);
  if (h.oom) { free(h.p); return AP_ST_ENOMEM; }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(((uint64_t)h.n >> (8 * i)) & 0xff);
  sb_put(out, (const char *)len8, 8);
  sb_put(out, h.p, h.n);
  free(h.p);
  return out->oom ? AP_ST_ENOMEM : 0;
}

int ap_st_write(const char *path, const ap_st_out_tensor *tensors, size_t n, const char *metadata_json, char *err,
                size_t errlen) {
  if (!path) {
    set_err(err, errlen, "ap_st_write: NULL path");
    return AP_ST_EARG;
  }
  int rc = validate_out(tensors, n, 0, err, errlen);
  if (rc) return rc;
  const ap_st_out_tensor **ts = malloc((n ? n : 1) * sizeof *ts);
  sbuf head = {0};
  char *tmp = NULL;
  if (!ts) return AP_ST_ENOMEM;
  for (size_t i = 0; i < n; i++) ts[i] = &tensors[i];
  if ((rc = build_header(ts, n, metadata_json, &head, err, errlen)) != 0) goto done;
  if ((rc = write_tmp(path, head.p, head.n, ts, n, &tmp, err, errlen)) != 0) goto done;
  if (rename(tmp, path) != 0) {
    set_err(err, errlen, "rename %s -> %s: %s", tmp, path, strerror(errno));
    unlink(tmp);
    rc = AP_ST_EIO;
    goto done;
  }
  rc = fsync_dir(path, err, errlen);
done:
  free(tmp);
  free(head.p);
  free(ts);
  return rc;
}

int ap_st_write_dir(const char *dir, const ap_st_out_tensor *tensors, size_t n, const char *metadata_json,
                    int write_index, char *err, size_t errlen) {
  if (!dir) {
    set_err(err, errlen, "ap_st_write_dir: NULL folder");
    return AP_ST_EARG;
  }
  int rc = validate_out(tensors, n, 1, err, errlen);
  if (rc) return rc;

  /* Distinct shard names in order of first appearance. */
  const char **names = malloc((n ? n : 1) * sizeof *names);
  const ap_st_out_tensor **ts = malloc((n ? n : 1) * sizeof *ts);
  const ap_st_out_tensor **sorted = malloc((n ? n : 1) * sizeof *sorted);
  char **tmps = calloc(n ? n : 1, sizeof *tmps);
  char **finals = calloc(n ? n : 1, sizeof *finals);
  char *index_tmp = NULL, *index_path = NULL;
  sbuf head = {0}, idx = {0};
  size_t nshards = 0;
  if (!names || !ts || !sorted || !tmps || !finals) { rc = AP_ST_ENOMEM; goto done; }
  for (size_t i = 0; i < n; i++) {
    size_t j = 0;
    while (j < nshards && strcmp(names[j], tensors[i].shard) != 0) j++;
    if (j == nshards) names[nshards++] = tensors[i].shard;
  }
  if (!write_index && (nshards > 1 || (nshards == 1 && strcmp(names[0], SINGLE_NAME) != 0))) {
    set_err(err, errlen, "without an index the folder must hold exactly one %s", SINGLE_NAME);
    rc = AP_ST_EARG;
    goto done;
  }
  for (size_t s = 0; s < nshards; s++) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      if (strcmp(tensors[i].shard, names[s]) == 0) ts[k++] = &tensors[i];
    head.n = 0;
    if ((rc = build_header(ts, k, metadata_json, &head, err, errlen)) != 0) goto done;
    if (!(finals[s] = path_join(dir, names[s]))) { rc = AP_ST_ENOMEM; goto done; }
    if ((rc = write_tmp(finals[s], head.p, head.n, ts, k, &tmps[s], err, errlen)) != 0) goto done;
  }
  if (write_index) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
      total += tensors[i].nbytes;
      sorted[i] = &tensors[i];
    }
    qsort(sorted, n, sizeof *sorted, cmp_out_ptr_name);
    sb_fmt(&idx, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {", total);
    for (size_t i = 0; i < n; i++) {
      sb_str(&idx, i ? ",\n    " : "\n    ");
      sb_json_str(&idx, sorted[i]->name);
      sb_str(&idx, ": ");
      sb_json_str(&idx, sorted[i]->shard);
    }
    sb_str(&idx, "\n  }\n}\n");
    if (idx.oom) { rc = AP_ST_ENOMEM; goto done; }
    if (!(index_path = path_join(dir, INDEX_NAME))) { rc = AP_ST_ENOMEM; goto done; }
    if ((rc = write_tmp(index_path, idx.p, idx.n, NULL, 0, &index_tmp, err, errlen)) != 0) goto done;
  }
  for (size_t s = 0; s < nshards; s++) {
    if (rename(tmps[s], finals[s]) != 0) {
      set_err(err, errlen, "rename %s -> %s: %s", tmps[s], finals[s], strerror(errno));
      rc = AP_ST_EIO;
      goto done;
    }
    free(tmps[s]);
    tmps[s] = NULL;
  }
  if (index_tmp) {
    if (rename(index_tmp, index_path) != 0) {
      set_err(err, errlen, "rename %s -> %s: %s", index_tmp, index_path, strerror(errno));
      rc = AP_ST_EIO;
      goto done;
    }
    free(index_tmp);
    index_tmp = NULL;
  }
  if (nshards || write_index) {
    char *probe = path_join(dir, "x");
    if (!probe) { rc = AP_ST_ENOMEM; goto done; }
    rc = fsync_dir(probe, err, errlen);
    free(probe);
  }
done:
  for (size_t s = 0; tmps && s < nshards; s++)
    if (tmps[s]) { unlink(tmps[s]); free(tmps[s]); }
  for (size_t s = 0; finals && s < nshards; s++) free(finals[s]);
  if (index_tmp) { unlink(index_tmp); free(index_tmp); }
  free(index_path);
  free(head.p);
  free(idx.p);
  free(finals);
  free(tmps);
  free(sorted);
  free(ts);
  free(names);
  return rc;
}

void ap_st_out_from_input(const ap_st *in, ap_st_out_tensor *out) {
  if (!in || !out) return;
  for (size_t i = 0; i < in->ntensors; i++) {
    const ap_st_tensor *t = &in->tensors[i];
    ap_st_out_tensor *o = &out[i];
    memset(o, 0, sizeof *o);
    o->name = t->name;
    o->dtype = t->dtype;
    o->ndim = t->ndim;
    memcpy(o->shape, t->shape, sizeof o->shape);
    o->data = t->data;
    o->nbytes = t->nbytes;
    o->shard = in->shards[t->shard].name;
  }
}
