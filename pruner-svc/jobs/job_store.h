/*
 * job_store.h - the pruner's durable job and checkpoint store, in LMDB
 * (DESIGN.md sections 1 and 4; docs/checkpoints.md explains the choices).
 *
 * One store is one LMDB environment in a directory (data.mdb, lock.mdb).
 * Every function below is safe to call from many threads at once on one
 * store (job runner threads and gRPC handler threads), except ap_js_open and
 * ap_js_close. One process opens a store once: LMDB forbids opening the same
 * environment twice in a process and using it after fork().
 *
 * Durability: every write is one LMDB write transaction committed with sync
 * on (no MDB_NOSYNC, no MDB_WRITEMAP). When a function that writes returns 0,
 * the data is on disk as far as fdatasync guarantees it; a SIGKILL or a power
 * loss afterwards keeps it. A write that did not return 0 left nothing behind:
 * there is never a half-written checkpoint.
 *
 * Key layout (named LMDB databases; numbers are big-endian so that memcmp key
 * order is numeric order; "/" is a literal 0x2F byte; <job> is the job id,
 * 1..AP_JS_ID_MAX bytes of [A-Za-z0-9._-], so "/" never appears inside it):
 *
 *   db "jobs"          <job>                                  -> packed agentprune.v1.Job
 *   db "request_ids"   <client_request_id>                    -> <job>
 *   db "events"        <job> "/" be64(seq)                    -> packed agentprune.v1.JobEvent
 *   db "ckpt_manifest" <job> "/" be64(ckpt_no)                -> manifest (below)
 *   db "ckpt_chunk"    <job> "/" be64(ckpt_no) "/" be32(part) "/" be32(chunk)
 *                                                             -> raw bytes, <= chunk_bytes
 *
 * The database name plays the role of the "ckpt/" prefix of the design note.
 * A checkpoint's parts are its layers 0..n_layers-1, then part
 * AP_JS_PART_STATE (the runner's opaque state blob) and part AP_JS_PART_JOB
 * (the packed Job as of the checkpoint). Each part is cut into chunks of
 * chunk_bytes (default 1 MiB - 16 = exactly 256 LMDB overflow pages); only the
 * last chunk of a part may be shorter. A layer's bytes are its mask bitmap:
 * ceil(bits/64) little-endian uint64 words, bit i of the layer is bit (i % 64)
 * of word i / 64, 1 = pruned; bits past `bits` in the last word are stored as 0.
 * No compression (codec 0); see docs/checkpoints.md for why.
 *
 * Manifest value, all integers little-endian:
 *   u32 magic 0x4B435041 ("APCK")  u16 version (1)  u16 codec (0 = none)
 *   u64 ckpt_no  u64 created_unix_ms  u32 n_layers  u32 chunk_bytes
 *   then n_layers + 2 part records {u64 length, u32 n_chunks, u32 crc32}:
 *     layers: length = bits (bits, not bytes); state and job: length in bytes
 *   u32 crc32 of every byte before it
 * CRC-32 is the IEEE/zlib one (ap_js_crc32), over each part's stored bytes.
 *
 * Job.last_event_seq is maintained by the store, which assigns event seqs:
 * every write of a job record stores the job's actual last seq, and
 * ap_js_job_get / ap_js_job_list report it, whatever the caller's struct held.
 *
 * Error codes: every int-returning function returns 0 or one of AP_JS_E_*.
 */
#ifndef AP_JOB_STORE_H
#define AP_JOB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "agentprune/v1/pruner.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  AP_JS_OK = 0,
  AP_JS_E_INVAL = -1,    /* bad argument: id syntax, NULL, sizes; -> INVALID_ARGUMENT */
  AP_JS_E_NOTFOUND = -2, /* no such job / checkpoint / event; -> NOT_FOUND */
  AP_JS_E_EXISTS = -3,   /* job id or client_request_id already taken; -> ALREADY_EXISTS */
  AP_JS_E_FULL = -4,     /* map cannot grow past max_map_bytes (or disk full); -> RESOURCE_EXHAUSTED */
  AP_JS_E_CORRUPT = -5,  /* CRC mismatch, missing chunk, malformed record; -> DATA_LOSS */
  AP_JS_E_IO = -6,       /* LMDB or OS error (logged with its message); -> INTERNAL */
  AP_JS_E_NOMEM = -7,    /* allocation failed; -> RESOURCE_EXHAUSTED */
  AP_JS_E_SHAPE = -8,    /* checkpoint layer count/bits differ from the caller's; -> FAILED_PRECONDITION */
  AP_JS_E_TIMEOUT = -9,  /* ap_js_events_wait: nothing new before the deadline */
};

#define AP_JS_ID_MAX 128          /* job id length limit (bytes) */
#define AP_JS_REQUEST_ID_MAX 256  /* client_request_id length limit (bytes) */
#define AP_JS_CHUNK_BYTES_MAX (1024u * 1024u - 16u) /* 256 overflow pages of 4 KiB */
#define AP_JS_PART_STATE 0xFFFFFFFEu
#define AP_JS_PART_JOB 0xFFFFFFFFu
#define AP_JS_MAX_LAYERS 65000u   /* keeps the manifest itself under 1 MiB */

typedef struct ap_js ap_js;

typedef struct {
  size_t initial_map_bytes; /* 0 = 64 MiB. Only address space; the file grows with use. */
  size_t max_map_bytes;     /* 0 = 1 TiB. Growth stops here: AP_JS_E_FULL. */
  uint32_t chunk_bytes;     /* 0 = AP_JS_CHUNK_BYTES_MAX; 64..AP_JS_CHUNK_BYTES_MAX */
  unsigned max_readers;     /* 0 = 126 concurrent read transactions */
  /* Test only: called inside the checkpoint write transaction after each
   * chunk put (part = layer index or AP_JS_PART_*). Lets crash tests kill the
   * process mid-transaction. NULL in production. */
  void (*test_hook)(void *arg, uint64_t ckpt_no, uint32_t part, uint32_t chunk);
  void *test_hook_arg;
} ap_js_options;

/* Statistics of an open store (ap_js_stats). */
typedef struct {
  size_t map_bytes;          /* current map size */
  size_t used_bytes;         /* (last page number + 1) * page size */
  size_t page_bytes;
  unsigned grow_count;       /* map growths since open */
  int stale_readers_cleared; /* reader slots of dead processes freed by mdb_reader_check at open */
  unsigned reader_slots_used;/* reader slots held right now, by any process */
} ap_js_stats_t;

/* One layer mask to write: `bits` = rows*cols, `words` = ceil(bits/64) words. */
typedef struct {
  uint64_t bits;
  const uint64_t *words;
} ap_js_mask_in;

/* One caller-owned layer bitmap to fill: `bits` must equal the stored one,
 * `words` has room for ceil(bits/64) words. */
typedef struct {
  uint64_t bits;
  uint64_t *words;
} ap_js_mask_out;

/* A checkpoint's metadata, returned by ap_js_checkpoint_read. */
typedef struct {
  uint64_t ckpt_no;
  uint64_t created_unix_ms;
  uint32_t n_layers;
  uint64_t *layer_bits;    /* n_layers entries */
  uint32_t *layer_crc32;   /* n_layers entries */
  uint8_t *state;          /* the runner's blob, state_len bytes (non-NULL even when empty) */
  size_t state_len;
  Agentprune__V1__Job *job; /* the Job as written with the checkpoint */
} ap_js_ckpt;

/* Message for an AP_JS_E_* code (static string; unknown codes give "unknown error"). */
const char *ap_js_strerror(int code);

/* CRC-32 (IEEE 802.3, as zlib's crc32), continuing from `crc` (start with 0). */
uint32_t ap_js_crc32(uint32_t crc, const void *data, size_t len);

/* Opens (creating when missing) the store in directory `dir`, clears reader
 * slots left by dead processes (mdb_reader_check), and opens the databases.
 * `opt` may be NULL for defaults.
 * Ownership: *out belongs to the caller; release with ap_js_close.
 * Errors: AP_JS_E_INVAL (NULL, bad options, dir not creatable), AP_JS_E_IO
 * (LMDB open failure, e.g. lock file not writable, DB on an unsupported FS),
 * AP_JS_E_CORRUPT (not an LMDB file / incompatible), AP_JS_E_NOMEM. */
int ap_js_open(const char *dir, const ap_js_options *opt, ap_js **out);

/* Closes the store. No other call on it may be in flight (including
 * ap_js_events_wait). NULL is accepted. */
void ap_js_close(ap_js *s);

/* Fills *st. Errors: AP_JS_E_INVAL, AP_JS_E_IO. */
int ap_js_stats(ap_js *s, ap_js_stats_t *st);

/* ---- jobs ------------------------------------------------------------- */

/* Idempotent create for SubmitJob. `job->id` must be a valid id;
 * `job->spec->client_request_id` (if spec and id are non-empty) is indexed.
 * If that request id is already indexed, nothing is written and *existing is
 * set to the stored job it points to (a retried submit); otherwise the job is
 * stored and *existing is set to NULL.
 * Ownership: *existing (when non-NULL) belongs to the caller, free it with
 * agentprune__v1__job__free_unpacked(*existing, NULL). `job` is not retained.
 * Errors: AP_JS_E_INVAL (bad id or request id), AP_JS_E_EXISTS (job id taken
 * by another request), AP_JS_E_FULL, AP_JS_E_IO, AP_JS_E_NOMEM,
 * AP_JS_E_CORRUPT (the indexed job record is unreadable). */
int ap_js_job_submit(ap_js *s, const Agentprune__V1__Job *job, Agentprune__V1__Job **existing);

/* Creates or replaces the job record `job->id`, and when `ev` is not NULL
 * appends it as the job's next event in the same transaction (atomic status
 * change + event): ev->job_id must equal job->id, the stored event gets the
 * next seq. *seq_out (may be NULL) receives the seq, or 0 when ev is NULL.
 * The callers' structs are not modified. A new client_request_id is indexed.
 * Errors: AP_JS_E_INVAL, AP_JS_E_EXISTS (request id indexed to another job),
 * AP_JS_E_FULL, AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_job_put(ap_js *s, const Agentprune__V1__Job *job, const Agentprune__V1__JobEvent *ev,
                  uint64_t *seq_out);

/* Reads job `job_id`. Ownership: *out belongs to the caller
 * (agentprune__v1__job__free_unpacked(*out, NULL)).
 * Errors: AP_JS_E_INVAL, AP_JS_E_NOTFOUND, AP_JS_E_CORRUPT, AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_job_get(ap_js *s, const char *job_id, Agentprune__V1__Job **out);

/* Lists jobs, newest first (created_unix_ms descending, then id descending),
 * at most `limit` of them (0 = all). With `unfinished_only`, only jobs whose
 * status is QUEUED, RUNNING or UNSPECIFIED, oldest first (the resume order at
 * start). Ownership: *jobs_out is an array of *n_out jobs owned by the caller;
 * release all with ap_js_jobs_free(*jobs_out, *n_out). *jobs_out is NULL when
 * *n_out is 0.
 * Errors: AP_JS_E_INVAL, AP_JS_E_CORRUPT (a record does not unpack), AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_job_list(ap_js *s, uint32_t limit, int unfinished_only, Agentprune__V1__Job ***jobs_out,
                   size_t *n_out);

/* Frees an array from ap_js_job_list. NULL is accepted. */
void ap_js_jobs_free(Agentprune__V1__Job **jobs, size_t n);

/* Deletes a job with its request-id entry, events and checkpoints.
 * Errors: AP_JS_E_INVAL, AP_JS_E_NOTFOUND, AP_JS_E_FULL, AP_JS_E_IO. */
int ap_js_job_delete(ap_js *s, const char *job_id);

/* ---- events ------------------------------------------------------------ */

/* Appends `ev` to the events of job ev->job_id, which must exist, with seq =
 * the job's last seq + 1 (the first is 1); ev->seq is ignored and *seq_out
 * (may be NULL) receives the assigned one. Wakes ap_js_events_wait callers.
 * Errors: AP_JS_E_INVAL, AP_JS_E_NOTFOUND (no such job), AP_JS_E_FULL, AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_event_append(ap_js *s, const Agentprune__V1__JobEvent *ev, uint64_t *seq_out);

/* Reads the events of `job_id` with seq >= from_seq, in seq order, at most
 * `max` of them (0 = all). Ownership: *events_out (NULL when *n_out is 0) is an
 * array of *n_out events owned by the caller; free with ap_js_events_free.
 * An unknown job simply has no events (0 events, return 0).
 * Errors: AP_JS_E_INVAL, AP_JS_E_CORRUPT, AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_events_read(ap_js *s, const char *job_id, uint64_t from_seq, size_t max,
                      Agentprune__V1__JobEvent ***events_out, size_t *n_out);

/* Frees an array from ap_js_events_read. NULL is accepted. */
void ap_js_events_free(Agentprune__V1__JobEvent **events, size_t n);

/* The seq of the last event of `job_id` in *seq_out (0 when it has none).
 * Errors: AP_JS_E_INVAL, AP_JS_E_IO. */
int ap_js_event_last_seq(ap_js *s, const char *job_id, uint64_t *seq_out);

/* Blocks until job `job_id` has an event with seq > after_seq, or
 * `timeout_ms` milliseconds pass (WatchJob's live tail). Returns 0 when there
 * is one. Errors: AP_JS_E_TIMEOUT, AP_JS_E_INVAL, AP_JS_E_IO. */
int ap_js_events_wait(ap_js *s, const char *job_id, uint64_t after_seq, int timeout_ms);

/* ---- checkpoints --------------------------------------------------------- */

/* Writes one accepted checkpoint of job job->id in ONE write transaction:
 * every layer's mask (chunked), the runner's opaque `state` blob (state_len
 * bytes, may be 0), the packed `job`, the manifest, the job record itself
 * (jobs db) and, when `ev` is not NULL, the event (typically ACCEPTED) as the
 * job's next event - then deletes every older checkpoint of the job but the
 * previous one, so exactly the last two remain. Checkpoint numbers are
 * assigned by the store: 1 + the job's highest existing number (the first is
 * 1); *ckpt_no_out (may be NULL) receives it, *seq_out (may be NULL) the
 * event's seq (0 without ev).
 * ev->job_id must equal job->id. The job must already exist
 * (ap_js_job_submit/put). Either everything is durable when this returns 0,
 * or nothing changed. The callers' structs and buffers are not modified.
 * Peak memory: LMDB holds the transaction's dirty pages in RAM until commit,
 * i.e. about the checkpoint's size.
 * Errors: AP_JS_E_INVAL (bad id, n_layers 0 or > AP_JS_MAX_LAYERS, NULL words
 * with bits > 0, state_len > UINT32_MAX, ev of another job),
 * AP_JS_E_NOTFOUND (no such job), AP_JS_E_FULL (map reached max_map_bytes or
 * disk full), AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_checkpoint_write(ap_js *s, const Agentprune__V1__Job *job, const Agentprune__V1__JobEvent *ev,
                           const void *state, size_t state_len, const ap_js_mask_in *masks, uint32_t n_layers,
                           uint64_t *ckpt_no_out, uint64_t *seq_out);

/* Reads checkpoint `ckpt_no` of `job_id` (0 = the latest) in one read
 * transaction, verifying the manifest CRC and every part's chunk count, sizes
 * and CRC-32. When `masks` is not NULL, n_layers must equal the stored layer
 * count and masks[i].bits the stored bits; the bitmaps are copied into
 * masks[i].words (only after all checks of that layer pass; on error the
 * caller's buffers may hold partial data and must not be used). When `masks`
 * is NULL (n_layers ignored), everything is still verified but nothing copied.
 * `ckpt_out` may be NULL; otherwise it receives the metadata.
 * Ownership: *ckpt_out belongs to the caller; free with ap_js_ckpt_free.
 * Errors: AP_JS_E_INVAL, AP_JS_E_NOTFOUND (no such job or checkpoint),
 * AP_JS_E_SHAPE (layer count or bits differ), AP_JS_E_CORRUPT (CRC mismatch,
 * missing or extra chunk, malformed manifest or Job: report as DATA_LOSS;
 * an older checkpoint from ap_js_checkpoint_list may still be good),
 * AP_JS_E_IO, AP_JS_E_NOMEM. */
int ap_js_checkpoint_read(ap_js *s, const char *job_id, uint64_t ckpt_no, const ap_js_mask_out *masks,
                          uint32_t n_layers, ap_js_ckpt **ckpt_out);

/* Frees a checkpoint from ap_js_checkpoint_read. NULL is accepted. */
void ap_js_ckpt_free(ap_js_ckpt *c);

/* The checkpoint numbers of `job_id`, ascending, into nos[0..cap-1]; *n_out
 * receives how many exist (may exceed cap). Errors: AP_JS_E_INVAL, AP_JS_E_IO. */
int ap_js_checkpoint_list(ap_js *s, const char *job_id, uint64_t *nos, size_t cap, size_t *n_out);

#ifdef __cplusplus
}
#endif
#endif
