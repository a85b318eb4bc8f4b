/*
 * store.h - agent-svc's durable state: sessions and their reflection history,
 * in one LMDB environment (DESIGN.md sections 3 and 5).
 *
 * Layout: four named databases in <dir>/data.mdb (lock file <dir>/lock.mdb).
 *
 *   "meta"     "schema"                          -> "1"
 *   "sessions" session_id (32 lowercase hex)     -> packed agentprune.v1.Session
 *   "jobs"     job_id (1..256 bytes)             -> session_id (32 hex)
 *   "history"  session_id (32 hex) ++ iteration  -> packed agentprune.v1.HistoryEntry
 *              (uint32 big-endian, so that a cursor walks one session's
 *              entries in iteration order; 36-byte keys)
 *
 * Session ids are 128 random bits from getrandom(2), as hex. The "jobs" index
 * makes OpenSession idempotent per job_id. Session.next_iteration is kept in
 * the session record: it is the iteration the next Decide must carry, i.e.
 * the last entry's iteration while that entry has no outcome (a retried Decide
 * gets the stored decision), else last + 1. Closing a session only sets
 * Session.closed; its record and history stay for GetHistory.
 *
 * Every mutation is one short write transaction, committed with sync (no
 * MDB_NOSYNC): a Decide or Reflect that returned OK survives kill -9 and power
 * loss. When a put hits MDB_MAP_FULL the transaction is aborted, the map is
 * doubled while no transaction of this process is open (a process-wide
 * rwlock: every transaction holds it shared, the resize holds it exclusive),
 * and the write is retried, up to opts.max_map_bytes. Stale reader slots of
 * killed processes are cleared with mdb_reader_check at open.
 *
 * Thread safety: every function may be called from any thread at once. The
 * store itself does not serialise a read-check-write sequence across calls;
 * its writers re-check their preconditions inside the write transaction, so
 * a race yields AP_STORE_CONFLICT, never a corrupt history.
 *
 * Ownership: messages returned through `out` parameters are heap-allocated
 * protobuf-c messages; free them with protobuf_c_message_free_unpacked(&m->base,
 * NULL). Input messages are borrowed.
 */
#ifndef AP_STORE_H
#define AP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "agentprune/v1/agent.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum {
  AP_STORE_OK = 0,
  AP_STORE_NOT_FOUND = -1,   /* unknown session (or entry) */
  AP_STORE_CONFLICT = -2,    /* precondition failed inside the write txn (see each function) */
  AP_STORE_FULL = -3,        /* the map reached opts.max_map_bytes */
  AP_STORE_IO = -4,          /* any other LMDB or system error (logged) */
  AP_STORE_CORRUPT = -5,     /* a stored value does not unpack */
  AP_STORE_NOMEM = -6,
  AP_STORE_CLOSED = -7,      /* the session is closed */
  AP_STORE_DUPLICATE = -8,   /* the same outcome is already stored (idempotent replay) */
  AP_STORE_BAD_ARG = -9
};

/* Name of a return code ("NOT_FOUND"); never NULL. */
const char *ap_store_strerror(int rc);

typedef struct {
  size_t initial_map_bytes;  /* map size at open; 0 = 64 MiB (grows x2 on demand) */
  size_t max_map_bytes;      /* growth limit; 0 = 64 GiB */
  unsigned max_readers;      /* LMDB reader slots; 0 = 512 */
} ap_store_opts;

typedef struct {
  size_t map_bytes;          /* current map size */
  unsigned map_growths;      /* times the map was doubled since open */
  int stale_readers_cleared; /* slots cleared by mdb_reader_check at open */
} ap_store_stats;

typedef struct ap_store ap_store;

/*
 * Opens (creating when missing) the store in directory `dir`, which must
 * exist or be creatable (one level). opts may be NULL. On failure returns a
 * negative code with a reason in err (e.g. a schema from a newer version).
 */
int ap_store_open(const char *dir, const ap_store_opts *opts, ap_store **out, char *err, size_t errlen);

/* Closes the environment; no call may be in flight. NULL is fine. */
void ap_store_close(ap_store *st);

void ap_store_get_stats(ap_store *st, ap_store_stats *out);

/*
 * Opens the session of spec->job_id, creating it when the job has none:
 * a new random id, the spec's policy ("" becomes "rule") and constraints,
 * created_unix_ms = now_ms, next_iteration = 1. When the job already has a
 * session, that session is returned unchanged (*created = 0), even when it is
 * closed or the spec differs. spec must carry a non-empty job_id (BAD_ARG).
 */
int ap_store_open_session(ap_store *st, const Agentprune__V1__SessionSpec *spec, uint64_t now_ms,
                          Agentprune__V1__Session **out, int *created);

/* Reads a session. NOT_FOUND when unknown. */
int ap_store_get_session(ap_store *st, const char *session_id, Agentprune__V1__Session **out);

/*
 * Reads the history entry of (session, iteration): NOT_FOUND when the
 * session has no entry for that iteration (check the session first).
 */
int ap_store_get_entry(ap_store *st, const char *session_id, uint32_t iteration,
                       Agentprune__V1__HistoryEntry **out);

/*
 * Reads the whole session: the session record, every entry in iteration
 * order, and usage summed over the entries' decisions.
 */
int ap_store_get_history(ap_store *st, const char *session_id, Agentprune__V1__History **out);

/*
 * Stores the decision of a new iteration (entry->iteration, with decision
 * and state; its outcome must be absent). Inside the write txn: NOT_FOUND for
 * an unknown session, CLOSED for a closed one, CONFLICT unless
 * entry->iteration == next_iteration and no entry exists for it yet.
 */
int ap_store_put_decision(ap_store *st, const char *session_id, const Agentprune__V1__HistoryEntry *entry);

/*
 * Records the outcome of outcome->iteration and advances next_iteration.
 * NOT_FOUND (session), CLOSED, CONFLICT when the iteration has no decision or
 * already holds a different outcome, DUPLICATE when it holds an identical one
 * (nothing written: the caller answers as for the first call).
 */
int ap_store_put_outcome(ap_store *st, const char *session_id, const Agentprune__V1__Outcome *outcome);

/*
 * Marks the session closed (already closed: OK, nothing written). When out
 * is not NULL it receives the session record after the change.
 */
int ap_store_close_session(ap_store *st, const char *session_id, Agentprune__V1__Session **out);

/*
 * Calls fn for every session id in key order (read snapshot); stops early when
 * fn returns non-zero. For tools and tests.
 */
int ap_store_foreach_session(ap_store *st, int (*fn)(const char *session_id, void *user), void *user);

#ifdef __cplusplus
}
#endif
#endif
