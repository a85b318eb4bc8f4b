/*
 * safetensors.h - reading and writing Hugging Face safetensors model folders.
 *
 * Reading: ap_st_open() maps every weight file of a folder read-only
 * (PROT_READ, MAP_PRIVATE) and validates its header; each tensor is a view
 * into a map, nothing is copied. A folder holds either one
 * `model.safetensors`, or shards listed in `model.safetensors.index.json`
 * ("weight_map": tensor name -> shard file name). Files are treated as
 * hostile: every structural defect is refused with a specific AP_ST_E* code
 * and a message naming the file and, where there is one, the tensor.
 *
 * Writing: ap_st_write() writes one file; ap_st_write_dir() writes a folder
 * of shards plus the index, so an export can mirror the input's layout
 * (ap_st_out_from_input() prepares exactly that).
 *
 * File format (https://github.com/huggingface/safetensors): u64 little-endian
 * header length N, N bytes of JSON {name: {"dtype","shape","data_offsets":
 * [begin,end]}, "__metadata__": {str: str}}, then the data area; offsets are
 * relative to the start of the data area (byte 8 + N).
 *
 * Thread safety: an opened ap_st is immutable; any number of threads may
 * read it concurrently. Writers share nothing.
 */
#ifndef AP_SAFETENSORS_H
#define AP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every function that takes (err, errlen) writes a NUL-terminated one-line
 * message there on failure (truncated to errlen; err may be NULL). */
enum ap_st_error {
  AP_ST_OK = 0,
  AP_ST_EARG = -1,          /* caller bug: NULL pointer, bad argument to a writer */
  AP_ST_ENOMEM = -2,        /* allocation failed */
  AP_ST_EIO = -3,           /* open/stat/mmap/read/write/fsync/rename failed (errno text in message) */
  AP_ST_ENOMODEL = -4,      /* folder has neither model.safetensors nor model.safetensors.index.json */
  AP_ST_ETRUNC = -5,        /* file shorter than the 8-byte header length */
  AP_ST_EHDRLEN = -6,       /* header length runs past the end of the file, or exceeds AP_ST_MAX_HEADER */
  AP_ST_EJSON = -7,         /* header is not valid JSON, or not a JSON object */
  AP_ST_EENTRY = -8,        /* a tensor entry is not an object, or lacks/mistypes dtype, shape, data_offsets;
                               or __metadata__ is not an object of strings */
  AP_ST_EDTYPE = -9,        /* a valid safetensors dtype we do not handle (I8, F64, F8_E4M3, ...) */
  AP_ST_EUNKDTYPE = -10,    /* a dtype string that is no safetensors dtype at all */
  AP_ST_ESHAPE = -11,       /* shape has a negative or non-integer dim, or more than AP_ST_MAX_DIMS dims */
  AP_ST_EOFFSET = -12,      /* data_offsets negative, non-integer, or outside the data area */
  AP_ST_EBEGINEND = -13,    /* data_offsets begin > end */
  AP_ST_ESIZE = -14,        /* end-begin != prod(shape)*element size, or that product overflows */
  AP_ST_EOVERLAP = -15,     /* two tensors share bytes */
  AP_ST_EDUP = -16,         /* a tensor name appears twice (in one header, or in two shards) */
  AP_ST_EINDEX = -17,       /* index.json is not valid JSON, lacks an object "weight_map", has a
                               non-string value, or names a shard file that is unsafe (path separators, "..") */
  AP_ST_ESHARDMISSING = -18,/* index.json names a shard file that does not exist */
  AP_ST_ETENSORMISSING = -19,/* index.json maps a tensor to a shard whose header lacks it */
  AP_ST_EUNLISTED = -20,    /* a shard holds a tensor that index.json does not map to that shard */
  AP_ST_ENONFINITE = -21,   /* a weight is NaN or +-inf */
};

#define AP_ST_MAX_DIMS 8
/* The reference implementation refuses headers over 100 MB; so do we. */
#define AP_ST_MAX_HEADER ((uint64_t)100000000)

/* Stable text for a code ("header length out of range", ...); never NULL. */
const char *ap_st_strerror(int code);

/* One tensor of an opened folder. All pointers are owned by the ap_st and
 * stay valid until ap_st_close(). */
typedef struct ap_st_tensor {
  const char *name;
  ap_dtype dtype;
  int ndim;                        /* 0 (scalar) .. AP_ST_MAX_DIMS */
  int64_t shape[AP_ST_MAX_DIMS];   /* row-major, outermost first; entries >= ndim are 0 */
  size_t numel;                    /* product of shape (1 for a scalar) */
  const void *data;                /* read-only view into the map; NOT guaranteed aligned to the
                                      element size (the format allows any offset): read via
                                      memcpy, ap_dtype_load_f32, or check `aligned` */
  size_t nbytes;                   /* numel * ap_dtype_size(dtype) */
  int aligned;                     /* 1 when data is aligned to the element size */
  int shard;                       /* index into ap_st_shard_name() */
  uint64_t file_offset;            /* absolute offset of data in its shard file */
} ap_st_tensor;

typedef struct ap_st ap_st;

/* Opens `path`: a model folder (see top of file), or one .safetensors file
 * (then it is the single shard and there is no index). Validates every header
 * completely; does NOT scan weight values (see ap_st_check_finite).
 * On success returns 0 and *out owns the maps; free with ap_st_close().
 * On failure returns an AP_ST_E* code, *out is NULL, nothing leaks. */
int ap_st_open(const char *path, ap_st **out, char *err, size_t errlen);

/* Unmaps everything and frees st; every ap_st_tensor pointer dies. NULL is a no-op. */
void ap_st_close(ap_st *st);

/* Number of tensors over all shards. */
size_t ap_st_count(const ap_st *st);

/* Tensor i, 0 <= i < ap_st_count() (NULL otherwise). Order: shards in
 * ap_st_shard_name() order, within a shard by increasing file offset, i.e.
 * the order in which the bytes lie on disk. */
const ap_st_tensor *ap_st_get(const ap_st *st, size_t i);

/* The tensor called `name` (O(log n)), or NULL. */
const ap_st_tensor *ap_st_find(const ap_st *st, const char *name);

/* Shards: file names relative to the folder ("model.safetensors" or
 * "model-00001-of-00002.safetensors"), listed in index.json,
 * for sharded folders sorted by file name. Strings owned by st. */
size_t ap_st_shard_count(const ap_st *st);
const char *ap_st_shard_name(const ap_st *st, size_t shard);

/* 1 when the folder was opened through model.safetensors.index.json. An
 * export passes this to ap_st_write_dir() to write an index like the input. */
int ap_st_has_index(const ap_st *st);

/* Value of `key` in shard's "__metadata__" (e.g. "format" -> "pt"), or NULL.
 * Owned by st. */
const char *ap_st_metadata(const ap_st *st, size_t shard, const char *key);

/* Converts t to float32 into dst (t->numel floats, caller-allocated). Returns
 * 0, or AP_ST_ENONFINITE when any element is NaN or +-inf (dst then holds the
 * converted values anyway), AP_ST_EARG on NULL. */
int ap_st_tensor_to_f32(const ap_st_tensor *t, float *dst);

/* Same, with a message naming the tensor and the first bad element's index. */
int ap_st_tensor_to_f32_err(const ap_st_tensor *t, float *dst, char *err, size_t errlen);

/* Scans every tensor for NaN/inf without allocating. Returns 0 or
 * AP_ST_ENONFINITE (message names file, tensor, element index). */
int ap_st_check_finite(const ap_st *st, char *err, size_t errlen);

/* Converts n floats to dtype t at dst (n * ap_dtype_size(t) bytes), rounding
 * to nearest even. Any alignment. */
void ap_f32_to_dtype(ap_dtype t, const float *src, void *dst, size_t n);

/* ---------------------------------------------------------------- writing */

/* One tensor to write. The writer only reads through the pointers. */
typedef struct ap_st_out_tensor {
  const char *name;                /* non-empty, unique, not "__metadata__" */
  ap_dtype dtype;
  int ndim;
  int64_t shape[AP_ST_MAX_DIMS];
  const void *data;                /* nbytes bytes, any alignment; may be NULL when nbytes == 0 */
  size_t nbytes;                   /* must equal prod(shape) * ap_dtype_size(dtype) */
  const char *shard;               /* ap_st_write_dir(): file name inside the folder
                                      (no '/', not starting with '.', ending in ".safetensors");
                                      ignored by ap_st_write() */
} ap_st_out_tensor;

/* Writes one safetensors file at `path`, atomically: a temporary file in the
 * same folder is written, fsync'ed and renamed over `path`, then the folder is
 * fsync'ed; on failure the temporary is removed and `path` is untouched.
 * Layout: header JSON (tensors in the given order, then "__metadata__")
 * padded with spaces to a multiple of 8, so the data area starts 8-aligned;
 * tensor data back to back in the given order, with no holes (the reference
 * reader refuses holes), so each tensor is aligned to its element size when
 * the tensors before it keep that true (same dtype, or larger dtypes first).
 * metadata_json: a JSON object of string values (e.g. "{\"format\":\"pt\"}"),
 * or NULL for {"format":"pt"}, which transformers' loader requires.
 * Returns 0, AP_ST_EARG (bad tensor list or metadata, message names the
 * tensor), AP_ST_EIO or AP_ST_ENOMEM. */
int ap_st_write(const char *path, const ap_st_out_tensor *tensors, size_t n,
                const char *metadata_json, char *err, size_t errlen);

/* Writes a model folder `dir` (must exist): one file per distinct
 * tensors[i].shard, each holding its tensors in the given order, every file
 * with the same metadata (as ap_st_write). When write_index is non-zero, also
 * writes model.safetensors.index.json with {"metadata": {"total_size": sum of
 * tensor bytes}, "weight_map": {name: shard}} (names sorted), as transformers
 * does. All shards are written to temporaries first and renamed only after
 * all succeeded; the index is renamed last, so a reader never sees an index
 * naming a missing shard. Returns as ap_st_write(). */
int ap_st_write_dir(const char *dir, const ap_st_out_tensor *tensors, size_t n,
                    const char *metadata_json, int write_index, char *err, size_t errlen);

/* Fills out[0 .. ap_st_count(in)-1] with the tensors of `in` in ap_st_get()
 * order: same name, dtype, shape, data (pointing into in's maps), nbytes and
 * shard file name. An export replaces .data of the tensors it changed (with
 * buffers of the same dtype and size) and calls
 * ap_st_write_dir(dir, out, n, NULL, ap_st_has_index(in), ...), which
 * reproduces the input's shard layout. The strings point into `in`. */
void ap_st_out_from_input(const ap_st *in, ap_st_out_tensor *out);

#ifdef __cplusplus
}
#endif
#endif
