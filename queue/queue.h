/*
 * queue — carteiro's durable state in one LMDB environment (prefix q_).
 *
 * What lives here (docs/queue.md has the byte layouts):
 *   campaigns  cid -> campaign JSON (definition + lifecycle state)
 *   counters   cid -> struct q_counters (fixed binary record)
 *   contacts   (cid,idx) -> contact JSON, deleted once rendered, so a
 *              restarted engine resumes rendering where it stopped
 *   msgs       (cid,idx) -> message record: state, attempts, due, rcpt,
 *              last reply; kept after the final outcome (for status/show)
 *   bodies     (cid,idx) -> the final wire bytes, raw or zstd-compressed
 *              with the campaign's dictionary; deleted at the final
 *              outcome so delivered messages free their space
 *   due        (cid, due_ms, idx, chan) -> empty: the due-time index. Every
 *              message that waits (new, deferred, send_at) has exactly one
 *              entry; picking the next due message of a campaign is one
 *              B-tree seek, O(log n).
 *   suppress   address -> JSON {reason, ts, campaign}
 *   warmup     site -> first day, day, messages sent that day (warm-up
 *              caps survive a restart)
 *   dicts      cid -> the campaign's compression dictionary
 *   meta       "version", "next_cid"
 *
 * A message id is cid << 32 | idx: deterministic, so re-rendering a contact
 * after a crash overwrites the same records instead of duplicating them.
 *
 * Threads: any thread may open transactions (MDB_NOTLS); LMDB serialises
 * writers. Pointers returned by *_get() are valid until the transaction ends.
 * Growing the map (after Q_EFULL) needs every transaction of the process to
 * be closed; q_begin/q_grow coordinate that with a rwlock, so never call
 * q_grow() while holding a transaction.
 *
 * Errors: functions return 0 on success, -1 on error with a message in the
 * caller's err buffer, Q_EFULL (-2) when the map is full (abort, q_grow(),
 * retry), and get functions return 1 found / 0 not found.
 */
#ifndef CARTEIRO_QUEUE_H
#define CARTEIRO_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

enum q_sync { Q_SYNC_FULL, Q_SYNC_GROUP, Q_SYNC_NONE };

#define Q_EFULL (-2)
#define Q_RCPT_MAX 320
#define Q_REPLY_MAX 512

struct q_config {
	const char *dir;        /* created if missing */
	uint64_t map_size;      /* initial map size in bytes */
	uint64_t map_max;       /* q_grow() never goes beyond (0 = 64 GiB) */
	enum q_sync sync;
};

typedef struct q_env q_env;
typedef struct q_txn q_txn;

static inline uint64_t q_id(uint32_t cid, uint32_t idx)
{
	return (uint64_t)cid << 32 | idx;
}
static inline uint32_t q_id_cid(uint64_t id) { return (uint32_t)(id >> 32); }
static inline uint32_t q_id_idx(uint64_t id) { return (uint32_t)id; }

int q_open(const struct q_config *c, q_env **out, char *err, size_t errlen);
void q_close(q_env *q);
enum q_sync q_sync_mode(const q_env *q);
/* Double the map (bounded by map_max). No transaction may be open. */
int q_grow(q_env *q, char *err, size_t errlen);
/* Flush to disk now (sync = none makes this the only way to be durable). */
int q_flush(q_env *q, char *err, size_t errlen);

int q_begin(q_env *q, bool write, q_txn **out, char *err, size_t errlen);
int q_commit(q_txn *t, char *err, size_t errlen);   /* always frees t */
void q_abort(q_txn *t);                               /* NULL is fine */

/* ---- campaigns ---- */
int q_cid_next(q_txn *t, uint32_t *cid, char *err, size_t errlen);
int q_campaign_put(q_txn *t, uint32_t cid, const char *json, size_t len,
	char *err, size_t errlen);
int q_campaign_get(q_txn *t, uint32_t cid, const char **json, size_t *len);
/* Calls cb for every campaign in id order; a non-zero return stops. */
int q_campaign_each(q_txn *t,
	int (*cb)(void *arg, uint32_t cid, const char *json, size_t len),
	void *arg, char *err, size_t errlen);
/* Remove a campaign and everything it owns (contacts, msgs, bodies, due,
 * counters). Used to undo a half-accepted submission. At most `max`
 * records per call (0 = all), so that each transaction stays small:
 * returns 1 when there is more (call again in a new transaction), 0 when
 * the campaign is gone (its record goes last), -1 on error. */
int q_campaign_purge(q_txn *t, uint32_t cid, unsigned max, char *err,
	size_t errlen);

/* ---- counters ---- */
struct q_counters {
	uint64_t total;       /* contacts accepted */
	uint64_t rendered;    /* messages rendered into the queue */
	uint64_t delivered;
	uint64_t bounced;
	uint64_t expired;
	uint64_t suppressed;
	uint64_t failed;      /* could not be rendered or sent (no address…) */
	uint64_t cancelled;   /* cancelled or deleted by an operator */
	uint64_t deferrals;   /* deferred attempts (a message may defer often) */
	uint64_t wa_sent;
	uint64_t wa_failed;
	uint64_t skipped;     /* contacts without an e-mail message (mode only) */
	uint64_t wa_created;  /* WhatsApp messages due or sent */
	uint64_t spare[3];
};
int q_counters_get(q_txn *t, uint32_t cid, struct q_counters *out);
/* Adds `d` field by field (creates the record if missing). */
int q_counters_add(q_txn *t, uint32_t cid, const struct q_counters *d,
	char *err, size_t errlen);
/* E-mail outcomes that are final (one per contact when finished). */
uint64_t q_counters_final(const struct q_counters *c);
/* The campaign is finished: every contact has its e-mail outcome and
 * every WhatsApp message created has its outcome. */
bool q_counters_done(const struct q_counters *c);

/* ---- contacts (waiting to be rendered) ---- */
int q_contact_put(q_txn *t, uint32_t cid, uint32_t idx, const void *p,
	size_t len, char *err, size_t errlen);
int q_contact_del(q_txn *t, uint32_t cid, uint32_t idx, char *err,
	size_t errlen);
/* Delete every waiting contact of cid (campaign cancelled). */
int q_contact_clear(q_txn *t, uint32_t cid, char *err, size_t errlen);
/* Up to `max` contacts of `cid` with idx >= from, in order; cb returns
 * non-zero to stop. Returns the number visited or -1. */
int q_contact_scan(q_txn *t, uint32_t cid, uint32_t from, unsigned max,
	int (*cb)(void *arg, uint32_t idx, const void *p, size_t len),
	void *arg, char *err, size_t errlen);

/* ---- messages ---- */
enum q_state {
	Q_QUEUED = 1,     /* rendered, waiting in the due index */
	Q_DELIVERED,
	Q_BOUNCED,
	Q_EXPIRED,
	Q_SUPPRESSED,
	Q_FAILED,
	Q_CANCELLED,
	Q_PAUSED,         /* queued, but its campaign is paused */
	Q_STANDBY,        /* WhatsApp fallback, used only if e-mail fails */
	Q_SENDING,        /* WhatsApp: claimed for sending (never sent twice) */
	Q_SKIPPED,        /* no e-mail for this contact (whatsapp mode only) */
};
const char *q_state_name(int s);
int q_state_parse(const char *s);   /* -1 when unknown */

#define Q_CAT_SHIFT 4
#define Q_CAT_MASK 0xf0

struct q_msg {
	uint8_t state;        /* enum q_state */
	uint8_t flags;        /* bits 0-3: render flags; 4-7: bounce category */
	uint16_t attempts;
	uint64_t created_ms;
	uint64_t due_ms;
	uint64_t last_ms;     /* last attempt */
	uint32_t body_len;
	char rcpt[Q_RCPT_MAX + 1];
	char reply[Q_REPLY_MAX + 1];   /* last reply or reason, printable */
};
int q_msg_put(q_txn *t, uint64_t id, const struct q_msg *m, char *err,
	size_t errlen);
int q_msg_get(q_txn *t, uint64_t id, struct q_msg *out);
/* Forget records of a finished campaign (the event log keeps their
 * history; counters stay): Q_FORGET_DELIVERED the delivered messages,
 * Q_FORGET_STANDBY the WhatsApp messages left on standby (their e-mail
 * arrived, or the campaign was cancelled) with their bodies. In chunks: at
 * most `max` records of cid from message id *pos on are looked at (0 = no
 * limit), *n counts the ones forgotten, *pos moves past the last one
 * looked at. Returns 1 when the campaign may have more, 0 at its end, -1
 * on error. */
#define Q_FORGET_DELIVERED 1u
#define Q_FORGET_STANDBY   2u
int q_msg_forget(q_txn *t, uint32_t cid, unsigned what, uint64_t *pos,
	unsigned max, uint64_t *n, char *err, size_t errlen);
/* Every message of `cid` (or of all campaigns when cid == 0) in id order. */
int q_msg_each(q_txn *t, uint32_t cid,
	int (*cb)(void *arg, uint64_t id, const struct q_msg *m), void *arg,
	char *err, size_t errlen);

int q_body_put(q_txn *t, uint64_t id, const void *p, size_t len, char *err,
	size_t errlen);
int q_body_get(q_txn *t, uint64_t id, const void **p, size_t *len);
int q_body_del(q_txn *t, uint64_t id, char *err, size_t errlen);

/*
 * Compressed bodies. The messages of a campaign are one template with a
 * few personal pieces, so each body is compressed (zstd) against a
 * per-campaign dictionary: a rendered message of the campaign, stored in
 * table `dicts` (written once, in the transaction of the first bodies that
 * use it, never replaced; deleted when the campaign is finished). A stored
 * body is either raw bytes or a zstd frame (self-describing), so a body
 * that does not shrink is kept as it is.
 *
 * q_zctx: compression/decompression state of one thread (not shared).
 * q_dict: a campaign's dictionary prepared for compression (read-only,
 * may be used by several threads at once).
 */
typedef struct q_zctx q_zctx;
typedef struct q_dict q_dict;
q_zctx *q_zctx_new(void);
void q_zctx_free(q_zctx *z);
q_dict *q_dict_new(const void *p, size_t len, int level);
void q_dict_free(q_dict *d);
/* Compress p into out with the dictionary; returns 1 if compressed, 0 if
 * out holds the raw bytes (it would not shrink). */
int q_body_pack(q_zctx *z, const q_dict *d, const void *p, size_t len,
	buf_t *out);
/* The campaign's dictionary: -1 if it already has one. */
int q_dict_put(q_txn *t, uint32_t cid, const void *p, size_t len, char *err,
	size_t errlen);
int q_dict_get(q_txn *t, uint32_t cid, const void **p, size_t *len);
int q_dict_del(q_txn *t, uint32_t cid, char *err, size_t errlen);
/* The body of id as sent on the wire (decompressed) into out: 1, 0 when
 * there is none, -1 with err when it cannot be read (no dictionary,
 * damaged). */
int q_body_read(q_txn *t, q_zctx *z, uint64_t id, buf_t *out, char *err,
	size_t errlen);

/* Free the bodies of messages that have a final state (left by a crash
 * between an outcome's commit and the freeing of its body). */
int q_sweep(q_env *q, uint64_t *freed, char *err, size_t errlen);

/* A contact's WhatsApp message has idx | Q_WA_BIT. */
#define Q_WA_BIT 0x80000000u

/* ---- the due-time index ---- */
struct q_due {
	uint32_t cid;
	uint64_t due_ms;
	uint32_t idx;
	uint8_t chan;         /* 0 = e-mail, 1 = WhatsApp */
};
int q_due_put(q_txn *t, const struct q_due *d, char *err, size_t errlen);
int q_due_del(q_txn *t, const struct q_due *d, char *err, size_t errlen);
/*
 * Entries of d->cid strictly after *from (or from the start when from is
 * NULL) with due_ms <= now, in due order, at most `max`; cb returns non-zero
 * to stop. *next_due (if not NULL) receives the due time of the first entry
 * not visited because it is in the future (UINT64_MAX if none).
 */
int q_due_scan(q_txn *t, uint32_t cid, const struct q_due *from,
	uint64_t now, unsigned max,
	int (*cb)(void *arg, const struct q_due *d), void *arg,
	uint64_t *next_due, char *err, size_t errlen);

/* ---- suppression list ---- */
int q_suppress_put(q_txn *t, const char *addr, const char *json,
	char *err, size_t errlen);
int q_suppress_get(q_txn *t, const char *addr, const char **json,
	size_t *len);
int q_suppress_del(q_txn *t, const char *addr, char *err, size_t errlen);
int q_suppress_each(q_txn *t,
	int (*cb)(void *arg, const char *addr, const char *json, size_t len),
	void *arg, char *err, size_t errlen);

/* ---- warm-up: messages sent per site on its current day ---- */
struct q_warmup {
	int32_t first_day;        /* local day the site's warm-up started */
	int32_t day;              /* the day `count` is for */
	uint32_t count;
};
/* 1 and *w filled, or 0 when the site has no record yet. */
int q_warmup_get(q_txn *t, const char *site, struct q_warmup *w);
/* Count n messages for site on `day` (a new day restarts the count; the
 * first call starts the schedule on that day). */
int q_warmup_add(q_txn *t, const char *site, int32_t day, uint32_t n,
	char *err, size_t errlen);

/* ---- statistics ---- */
struct q_stat {
	uint64_t map_size;
	uint64_t used_bytes;      /* last page used * page size */
	uint64_t entries[16];     /* per table, in the order of q_table_name */
};
int q_stat(q_env *q, struct q_stat *out, char *err, size_t errlen);
const char *q_table_name(unsigned i);

#endif
