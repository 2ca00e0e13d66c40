/*
 * queue — the LMDB environment and schema. See queue.h for the contract and
 * docs/queue.md for the layouts.
 *
 * Keys are big-endian so that LMDB's byte order is numeric order: all of a
 * campaign's records are one contiguous key range, and the due index sorts
 * by (campaign, due time). Pages are read through LMDB's read-only file
 * mapping (file-backed memory, not the engine's anonymous memory); a write
 * transaction's dirty pages are its own and are freed at commit, so the
 * engine's RSS stays small with a million messages queued. MDB_WRITEMAP was
 * measured and not kept: its commit msyncs the whole map, which gets slower
 * as the spool grows (bench/queue-bench: 37k vs 52k enqueues/s at 1M).
 * MDB_NOTLS lets any thread use a transaction.
 */
#include "queue/queue.h"

#include <ctype.h>
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zstd.h>

#include "engine/mem.h"

enum { T_META, T_CAMPAIGNS, T_COUNTERS, T_CONTACTS, T_MSGS, T_BODIES, T_DUE,
	T_SUPPRESS, T_WARMUP, T_DICTS, T_COUNT };
static const char *const table_names[T_COUNT] = {
	"meta", "campaigns", "counters", "contacts", "msgs", "bodies", "due",
	"suppress", "warmup", "dicts",
};

#define Q_VERSION 1

struct q_env {
	MDB_env *env;
	MDB_dbi dbi[T_COUNT];
	enum q_sync sync;
	uint64_t map_size;
	uint64_t map_max;
	/* Readers: every open transaction. Writer: q_grow(). */
	pthread_rwlock_t resize;
};

struct q_txn {
	q_env *q;
	MDB_txn *txn;
	bool write;
};

static void fmt_err(char *err, size_t errlen, const char *what, int rc)
{
	if (err && errlen)
		snprintf(err, errlen, "queue: %s: %s", what, mdb_strerror(rc));
}

/* Map an LMDB return code to our convention. */
static int q_rc(int rc, char *err, size_t errlen, const char *what)
{
	if (rc == MDB_SUCCESS)
		return 0;
	fmt_err(err, errlen, what, rc);
	return rc == MDB_MAP_FULL ? Q_EFULL : -1;
}

/* ---- key encodings ---- */

static void be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);  p[3] = (unsigned char)v;
}
static void be64(unsigned char *p, uint64_t v)
{
	be32(p, (uint32_t)(v >> 32));
	be32(p + 4, (uint32_t)v);
}
static uint32_t rd32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
		(uint32_t)p[2] << 8 | p[3];
}
static uint64_t rd64(const unsigned char *p)
{
	return (uint64_t)rd32(p) << 32 | rd32(p + 4);
}

#define DUE_KEY_LEN 17

static void due_key(unsigned char k[DUE_KEY_LEN], const struct q_due *d)
{
	be32(k, d->cid);
	be64(k + 4, d->due_ms);
	be32(k + 12, d->idx);
	k[16] = d->chan;
}
static void due_parse(const unsigned char *k, struct q_due *d)
{
	d->cid = rd32(k);
	d->due_ms = rd64(k + 4);
	d->idx = rd32(k + 12);
	d->chan = k[16];
}

/* ---- environment ---- */

static int mkdir_p(const char *dir)
{
	char *p = mem_strdup(dir);
	int rc = 0;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(p, 0750) < 0 && errno != EEXIST)
			rc = -1;
		*s = '/';
	}
	if (mkdir(p, 0750) < 0 && errno != EEXIST)
		rc = -1;
	free(p);
	return rc;
}

int q_open(const struct q_config *c, q_env **out, char *err, size_t errlen)
{
	q_env *q = mem_calloc(1, sizeof *q);
	MDB_txn *txn = NULL;
	int rc;

	*out = NULL;
	q->sync = c->sync;
	q->map_size = c->map_size ? c->map_size : (uint64_t)1 << 30;
	q->map_max = c->map_max ? c->map_max : (uint64_t)64 << 30;
	pthread_rwlock_init(&q->resize, NULL);

	if (mkdir_p(c->dir) < 0) {
		snprintf(err, errlen, "queue: cannot create spool %s: %s",
			c->dir, strerror(errno));
		goto fail;
	}
	if ((rc = mdb_env_create(&q->env)) != 0) {
		fmt_err(err, errlen, "mdb_env_create", rc);
		goto fail;
	}
	mdb_env_set_maxdbs(q->env, T_COUNT);
	mdb_env_set_maxreaders(q->env, 256);
	if ((rc = mdb_env_set_mapsize(q->env, q->map_size)) != 0) {
		fmt_err(err, errlen, "set map size", rc);
		goto fail;
	}
	unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
	if (c->sync == Q_SYNC_NONE)
		flags |= MDB_NOSYNC | MDB_NOMETASYNC;
	if ((rc = mdb_env_open(q->env, c->dir, flags, 0640)) != 0) {
		snprintf(err, errlen, "queue: cannot open LMDB environment in %s: %s",
			c->dir, mdb_strerror(rc));
		goto fail;
	}
	/* A file larger than our setting keeps its size. */
	MDB_envinfo info;
	mdb_env_info(q->env, &info);
	if (info.me_mapsize > q->map_size)
		q->map_size = info.me_mapsize;

	int stale = 0;
	mdb_reader_check(q->env, &stale);   /* readers of a killed process */

	if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)) != 0) {
		fmt_err(err, errlen, "begin", rc);
		goto fail;
	}
	for (int i = 0; i < T_COUNT; i++) {
		if ((rc = mdb_dbi_open(txn, table_names[i], MDB_CREATE,
		    &q->dbi[i])) != 0) {
			fmt_err(err, errlen, table_names[i], rc);
			goto fail;
		}
	}
	MDB_val k = { 7, (void *)"version" }, v;
	rc = mdb_get(txn, q->dbi[T_META], &k, &v);
	if (rc == MDB_NOTFOUND) {
		unsigned char ver[4];
		be32(ver, Q_VERSION);
		v.mv_size = 4;
		v.mv_data = ver;
		rc = mdb_put(txn, q->dbi[T_META], &k, &v, 0);
	} else if (rc == 0 && (v.mv_size != 4 || rd32(v.mv_data) != Q_VERSION)) {
		snprintf(err, errlen, "queue: %s has schema version %u, this "
			"engine reads version %d", c->dir,
			v.mv_size == 4 ? rd32(v.mv_data) : 0, Q_VERSION);
		goto fail;
	}
	if (rc != 0) {
		fmt_err(err, errlen, "version", rc);
		goto fail;
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc != 0) {
		fmt_err(err, errlen, "commit", rc);
		goto fail;
	}
	*out = q;
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	q_close(q);
	return -1;
}

void q_close(q_env *q)
{
	if (!q)
		return;
	if (q->env) {
		if (q->sync != Q_SYNC_NONE)
			mdb_env_sync(q->env, 1);
		mdb_env_close(q->env);
	}
	pthread_rwlock_destroy(&q->resize);
	free(q);
}

enum q_sync q_sync_mode(const q_env *q)
{
	return q->sync;
}

int q_grow(q_env *q, char *err, size_t errlen)
{
	int rc = 0;
	pthread_rwlock_wrlock(&q->resize);
	if (q->map_size >= q->map_max) {
		snprintf(err, errlen, "queue: the spool is full (map size %llu "
			"bytes reached the limit)", (unsigned long long)q->map_size);
		rc = -1;
	} else {
		uint64_t n = q->map_size * 2;
		if (n > q->map_max)
			n = q->map_max;
		int e = mdb_env_set_mapsize(q->env, n);
		if (e != 0) {
			fmt_err(err, errlen, "grow map", e);
			rc = -1;
		} else {
			q->map_size = n;
		}
	}
	pthread_rwlock_unlock(&q->resize);
	return rc;
}

int q_flush(q_env *q, char *err, size_t errlen)
{
	return q_rc(mdb_env_sync(q->env, 1), err, errlen, "sync");
}

int q_begin(q_env *q, bool write, q_txn **out, char *err, size_t errlen)
{
	MDB_txn *txn;
	pthread_rwlock_rdlock(&q->resize);
	int rc = mdb_txn_begin(q->env, NULL, write ? 0 : MDB_RDONLY, &txn);
	if (rc != 0) {
		pthread_rwlock_unlock(&q->resize);
		*out = NULL;
		return q_rc(rc, err, errlen, "begin");
	}
	q_txn *t = mem_alloc(sizeof *t);
	t->q = q;
	t->txn = txn;
	t->write = write;
	*out = t;
	return 0;
}

int q_commit(q_txn *t, char *err, size_t errlen)
{
	int rc = mdb_txn_commit(t->txn);
	pthread_rwlock_unlock(&t->q->resize);
	free(t);
	return q_rc(rc, err, errlen, "commit");
}

void q_abort(q_txn *t)
{
	if (!t)
		return;
	mdb_txn_abort(t->txn);
	pthread_rwlock_unlock(&t->q->resize);
	free(t);
}

/* ---- small helpers ---- */

static int put(q_txn *t, int tbl, const void *k, size_t klen, const void *v,
	size_t vlen, char *err, size_t errlen)
{
	MDB_val key = { klen, (void *)k }, val = { vlen, (void *)v };
	return q_rc(mdb_put(t->txn, t->q->dbi[tbl], &key, &val, 0), err, errlen,
		table_names[tbl]);
}

static int get(q_txn *t, int tbl, const void *k, size_t klen,
	const void **v, size_t *vlen)
{
	MDB_val key = { klen, (void *)k }, val;
	int rc = mdb_get(t->txn, t->q->dbi[tbl], &key, &val);
	if (rc != 0)
		return rc == MDB_NOTFOUND ? 0 : -1;
	*v = val.mv_data;
	*vlen = val.mv_size;
	return 1;
}

/* Deleting what is not there is not an error. */
static int del(q_txn *t, int tbl, const void *k, size_t klen, char *err,
	size_t errlen)
{
	MDB_val key = { klen, (void *)k };
	int rc = mdb_del(t->txn, t->q->dbi[tbl], &key, NULL);
	if (rc == MDB_NOTFOUND)
		return 0;
	return q_rc(rc, err, errlen, table_names[tbl]);
}

static void id_key(unsigned char k[8], uint64_t id)
{
	be64(k, id);
}

/*
 * Visit every key of `tbl` that starts with the 4-byte prefix `cid` (or all
 * keys when all is true), from `start` (a full key, or NULL for the prefix
 * start). cb returns 1 to stop, 0 to go on, -1 on error; when `delete` is
 * set every visited entry is removed.
 */
static int range(q_txn *t, int tbl, bool all, uint32_t cid,
	const void *start, size_t startlen, bool delete, unsigned max,
	int (*cb)(void *arg, const MDB_val *k, const MDB_val *v), void *arg,
	char *err, size_t errlen)
{
	MDB_cursor *cur;
	unsigned char pfx[4];
	MDB_val k, v;
	int rc, n = 0;

	be32(pfx, cid);
	if ((rc = mdb_cursor_open(t->txn, t->q->dbi[tbl], &cur)) != 0)
		return q_rc(rc, err, errlen, "cursor");
	if (start) {
		k.mv_data = (void *)start;
		k.mv_size = startlen;
	} else {
		k.mv_data = pfx;
		k.mv_size = all ? 0 : 4;
	}
	rc = k.mv_size ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
		: mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		if (!all && (k.mv_size < 4 || memcmp(k.mv_data, pfx, 4) != 0))
			break;
		if (max && (unsigned)n >= max)
			break;
		int r = cb ? cb(arg, &k, &v) : 0;
		if (r < 0) {
			mdb_cursor_close(cur);
			return -1;
		}
		if (r > 0)
			break;
		n++;
		if (delete && (rc = mdb_cursor_del(cur, 0)) != 0)
			break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return q_rc(rc, err, errlen, table_names[tbl]);
	return n;
}

/* ---- campaigns ---- */

int q_cid_next(q_txn *t, uint32_t *cid, char *err, size_t errlen)
{
	const void *v;
	size_t len;
	uint32_t next = 1;
	if (get(t, T_META, "next_cid", 8, &v, &len) == 1 && len == 4)
		next = rd32(v);
	if (next == 0 || next == UINT32_MAX) {
		snprintf(err, errlen, "queue: campaign ids exhausted");
		return -1;
	}
	unsigned char b[4];
	be32(b, next + 1);
	*cid = next;
	return put(t, T_META, "next_cid", 8, b, 4, err, errlen);
}

int q_campaign_put(q_txn *t, uint32_t cid, const char *json, size_t len,
	char *err, size_t errlen)
{
	unsigned char k[4];
	be32(k, cid);
	return put(t, T_CAMPAIGNS, k, 4, json, len, err, errlen);
}

int q_campaign_get(q_txn *t, uint32_t cid, const char **json, size_t *len)
{
	unsigned char k[4];
	const void *v;
	be32(k, cid);
	int rc = get(t, T_CAMPAIGNS, k, 4, &v, len);
	if (rc == 1)
		*json = v;
	return rc;
}

struct each_campaign {
	int (*cb)(void *, uint32_t, const char *, size_t);
	void *arg;
};

static int each_campaign_cb(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct each_campaign *e = arg;
	if (k->mv_size != 4)
		return 0;
	return e->cb(e->arg, rd32(k->mv_data), v->mv_data, v->mv_size) ? 1 : 0;
}

int q_campaign_each(q_txn *t,
	int (*cb)(void *arg, uint32_t cid, const char *json, size_t len),
	void *arg, char *err, size_t errlen)
{
	struct each_campaign e = { cb, arg };
	int n = range(t, T_CAMPAIGNS, true, 0, NULL, 0, false, 0,
		each_campaign_cb, &e, err, errlen);
	return n < 0 ? n : 0;
}

int q_campaign_purge(q_txn *t, uint32_t cid, unsigned max, char *err,
	size_t errlen)
{
	static const int tables[] = { T_CONTACTS, T_MSGS, T_BODIES, T_DUE };
	unsigned left = max;
	for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
		int n = range(t, tables[i], false, cid, NULL, 0, true, left, NULL,
			NULL, err, errlen);
		if (n < 0)
			return n;
		if (max && (left -= (unsigned)n) == 0)
			return 1;
	}
	if (q_dict_del(t, cid, err, errlen))
		return -1;
	unsigned char k[4];
	be32(k, cid);
	int rc = del(t, T_COUNTERS, k, 4, err, errlen);
	if (rc == 0)
		rc = del(t, T_CAMPAIGNS, k, 4, err, errlen);
	return rc;
}

/* ---- counters ---- */

#define NCOUNTERS (sizeof(struct q_counters) / sizeof(uint64_t))

int q_counters_get(q_txn *t, uint32_t cid, struct q_counters *out)
{
	unsigned char k[4];
	const void *v;
	size_t len;
	be32(k, cid);
	memset(out, 0, sizeof *out);
	int rc = get(t, T_COUNTERS, k, 4, &v, &len);
	if (rc != 1)
		return rc;
	uint64_t *o = (uint64_t *)out;
	for (size_t i = 0; i < NCOUNTERS && (i + 1) * 8 <= len; i++)
		o[i] = rd64((const unsigned char *)v + i * 8);
	return 1;
}

int q_counters_add(q_txn *t, uint32_t cid, const struct q_counters *d,
	char *err, size_t errlen)
{
	struct q_counters c;
	unsigned char k[4], v[sizeof c];
	if (q_counters_get(t, cid, &c) < 0) {
		snprintf(err, errlen, "queue: reading counters of campaign %u",
			cid);
		return -1;
	}
	uint64_t *o = (uint64_t *)&c;
	const uint64_t *a = (const uint64_t *)d;
	for (size_t i = 0; i < NCOUNTERS; i++)
		be64(v + i * 8, o[i] + a[i]);
	be32(k, cid);
	return put(t, T_COUNTERS, k, 4, v, sizeof v, err, errlen);
}

uint64_t q_counters_final(const struct q_counters *c)
{
	return c->delivered + c->bounced + c->expired + c->suppressed +
		c->failed + c->cancelled + c->skipped;
}

bool q_counters_done(const struct q_counters *c)
{
	return c->total > 0 && q_counters_final(c) >= c->total &&
		c->wa_sent + c->wa_failed >= c->wa_created;
}

/* ---- contacts ---- */

int q_contact_put(q_txn *t, uint32_t cid, uint32_t idx, const void *p,
	size_t len, char *err, size_t errlen)
{
	unsigned char k[8];
	id_key(k, q_id(cid, idx));
	return put(t, T_CONTACTS, k, 8, p, len, err, errlen);
}

int q_contact_del(q_txn *t, uint32_t cid, uint32_t idx, char *err,
	size_t errlen)
{
	unsigned char k[8];
	id_key(k, q_id(cid, idx));
	return del(t, T_CONTACTS, k, 8, err, errlen);
}

int q_contact_clear(q_txn *t, uint32_t cid, char *err, size_t errlen)
{
	int n = range(t, T_CONTACTS, false, cid, NULL, 0, true, 0, NULL, NULL,
		err, errlen);
	return n < 0 ? n : 0;
}

struct contact_scan {
	int (*cb)(void *, uint32_t, const void *, size_t);
	void *arg;
};

static int contact_scan_cb(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct contact_scan *s = arg;
	if (k->mv_size != 8)
		return 0;
	return s->cb(s->arg, rd32((const unsigned char *)k->mv_data + 4),
		v->mv_data, v->mv_size) ? 1 : 0;
}

int q_contact_scan(q_txn *t, uint32_t cid, uint32_t from, unsigned max,
	int (*cb)(void *arg, uint32_t idx, const void *p, size_t len),
	void *arg, char *err, size_t errlen)
{
	struct contact_scan s = { cb, arg };
	unsigned char k[8];
	id_key(k, q_id(cid, from));
	return range(t, T_CONTACTS, false, cid, k, 8, false, max,
		contact_scan_cb, &s, err, errlen);
}

/* ---- messages ---- */

static const char *const state_names[] = {
	[Q_QUEUED] = "queued", [Q_DELIVERED] = "delivered",
	[Q_BOUNCED] = "bounced", [Q_EXPIRED] = "expired",
	[Q_SUPPRESSED] = "suppressed", [Q_FAILED] = "failed",
	[Q_CANCELLED] = "cancelled", [Q_PAUSED] = "paused",
	[Q_STANDBY] = "standby", [Q_SENDING] = "sending",
	[Q_SKIPPED] = "skipped",
};

const char *q_state_name(int s)
{
	if (s <= 0 || (size_t)s >= sizeof state_names / sizeof *state_names ||
	    !state_names[s])
		return "unknown";
	return state_names[s];
}

int q_state_parse(const char *s)
{
	for (size_t i = 1; i < sizeof state_names / sizeof *state_names; i++)
		if (state_names[i] && strcmp(state_names[i], s) == 0)
			return (int)i;
	return -1;
}

/*
 * Record layout: state u8, flags u8, attempts u16, created u64, due u64,
 * last u64, body_len u32, rcpt_len u16, reply_len u16, rcpt, reply.
 */
#define MSG_HDR 36

int q_msg_put(q_txn *t, uint64_t id, const struct q_msg *m, char *err,
	size_t errlen)
{
	unsigned char k[8], v[MSG_HDR + Q_RCPT_MAX + Q_REPLY_MAX];
	size_t rl = strnlen(m->rcpt, Q_RCPT_MAX);
	size_t pl = strnlen(m->reply, Q_REPLY_MAX);
	v[0] = m->state;
	v[1] = m->flags;
	v[2] = (unsigned char)(m->attempts >> 8);
	v[3] = (unsigned char)m->attempts;
	be64(v + 4, m->created_ms);
	be64(v + 12, m->due_ms);
	be64(v + 20, m->last_ms);
	be32(v + 28, m->body_len);
	v[32] = (unsigned char)(rl >> 8); v[33] = (unsigned char)rl;
	v[34] = (unsigned char)(pl >> 8); v[35] = (unsigned char)pl;
	memcpy(v + MSG_HDR, m->rcpt, rl);
	memcpy(v + MSG_HDR + rl, m->reply, pl);
	id_key(k, id);
	return put(t, T_MSGS, k, 8, v, MSG_HDR + rl + pl, err, errlen);
}

static int msg_decode(const unsigned char *v, size_t len, struct q_msg *m)
{
	if (len < MSG_HDR)
		return -1;
	size_t rl = (size_t)v[32] << 8 | v[33], pl = (size_t)v[34] << 8 | v[35];
	if (rl > Q_RCPT_MAX || pl > Q_REPLY_MAX || MSG_HDR + rl + pl > len)
		return -1;
	m->state = v[0];
	m->flags = v[1];
	m->attempts = (uint16_t)(v[2] << 8 | v[3]);
	m->created_ms = rd64(v + 4);
	m->due_ms = rd64(v + 12);
	m->last_ms = rd64(v + 20);
	m->body_len = rd32(v + 28);
	memcpy(m->rcpt, v + MSG_HDR, rl);
	m->rcpt[rl] = 0;
	memcpy(m->reply, v + MSG_HDR + rl, pl);
	m->reply[pl] = 0;
	return 0;
}

int q_msg_get(q_txn *t, uint64_t id, struct q_msg *out)
{
	unsigned char k[8];
	const void *v;
	size_t len;
	id_key(k, id);
	int rc = get(t, T_MSGS, k, 8, &v, &len);
	if (rc != 1)
		return rc;
	return msg_decode(v, len, out) < 0 ? -1 : 1;
}

struct msg_each {
	int (*cb)(void *, uint64_t, const struct q_msg *);
	void *arg;
	struct q_msg m;
};

static int msg_each_cb(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct msg_each *e = arg;
	if (k->mv_size != 8 || msg_decode(v->mv_data, v->mv_size, &e->m) < 0)
		return 0;
	return e->cb(e->arg, rd64(k->mv_data), &e->m) ? 1 : 0;
}

int q_msg_each(q_txn *t, uint32_t cid,
	int (*cb)(void *arg, uint64_t id, const struct q_msg *m), void *arg,
	char *err, size_t errlen)
{
	struct msg_each *e = mem_alloc(sizeof *e);
	e->cb = cb;
	e->arg = arg;
	int n = range(t, T_MSGS, cid == 0, cid, NULL, 0, false, 0,
		msg_each_cb, e, err, errlen);
	free(e);
	return n < 0 ? n : 0;
}

int q_msg_forget(q_txn *t, uint32_t cid, unsigned what, uint64_t *pos,
	unsigned max, uint64_t *n, char *err, size_t errlen)
{
	MDB_cursor *cur;
	unsigned char k0[8];
	MDB_val k = { 8, k0 }, v;
	int rc;
	unsigned seen = 0;
	*n = 0;
	uint64_t start = *pos > q_id(cid, 0) ? *pos : q_id(cid, 0);
	if (q_id_cid(start) != cid)
		return 0;
	id_key(k0, start);
	if ((rc = mdb_cursor_open(t->txn, t->q->dbi[T_MSGS], &cur)) != 0)
		return q_rc(rc, err, errlen, "forget");
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size == 8 && rd32(k.mv_data) == cid) {
		if (max && seen == max)
			break;
		seen++;
		uint64_t id = rd64(k.mv_data);
		*pos = id + 1;
		int st = v.mv_size > 0 ? ((const unsigned char *)v.mv_data)[0] : 0;
		if ((st == Q_DELIVERED && (what & Q_FORGET_DELIVERED)) ||
		    (st == Q_STANDBY && (what & Q_FORGET_STANDBY))) {
			if (st == Q_STANDBY &&
			    (rc = q_body_del(t, id, err, errlen)) != 0) {
				mdb_cursor_close(cur);
				return rc;
			}
			if ((rc = mdb_cursor_del(cur, 0)) != 0)
				break;
			(*n)++;
			/* after a delete, MDB_NEXT yields the entry that followed */
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return q_rc(rc, err, errlen, "forget");
	return rc == 0 && k.mv_size == 8 && rd32(k.mv_data) == cid ? 1 : 0;
}

int q_body_put(q_txn *t, uint64_t id, const void *p, size_t len, char *err,
	size_t errlen)
{
	unsigned char k[8];
	id_key(k, id);
	return put(t, T_BODIES, k, 8, p, len, err, errlen);
}

int q_body_get(q_txn *t, uint64_t id, const void **p, size_t *len)
{
	unsigned char k[8];
	id_key(k, id);
	return get(t, T_BODIES, k, 8, p, len);
}

int q_body_del(q_txn *t, uint64_t id, char *err, size_t errlen)
{
	unsigned char k[8];
	id_key(k, id);
	return del(t, T_BODIES, k, 8, err, errlen);
}

/* ---- compressed bodies ---- */

/* A zstd frame starts with these bytes; a stored MIME message (ASCII
 * header) or WhatsApp JSON never does, so raw bodies need no marker. */
static const unsigned char zmagic[4] = { 0x28, 0xb5, 0x2f, 0xfd };

struct q_dict {
	ZSTD_CDict *cd;
	size_t len;
};

struct q_zctx {
	ZSTD_CCtx *c;
	ZSTD_DCtx *d;
};

q_zctx *q_zctx_new(void)
{
	q_zctx *z = mem_calloc(1, sizeof *z);
	z->c = ZSTD_createCCtx();
	z->d = ZSTD_createDCtx();
	if (!z->c || !z->d) {
		fprintf(stderr, "carteiro: out of memory (zstd context)\n");
		abort();
	}
	return z;
}

void q_zctx_free(q_zctx *z)
{
	if (!z)
		return;
	ZSTD_freeCCtx(z->c);
	ZSTD_freeDCtx(z->d);
	free(z);
}

q_dict *q_dict_new(const void *p, size_t len, int level)
{
	q_dict *d = mem_calloc(1, sizeof *d);
	/* Content that does not start with zstd's dictionary magic is taken
	 * as a raw-content dictionary (a rendered message always is). */
	d->cd = ZSTD_createCDict(p, len, level);
	if (!d->cd) {
		fprintf(stderr, "carteiro: out of memory (zstd dictionary)\n");
		abort();
	}
	d->len = len;
	return d;
}

void q_dict_free(q_dict *d)
{
	if (!d)
		return;
	ZSTD_freeCDict(d->cd);
	free(d);
}

int q_body_pack(q_zctx *z, const q_dict *d, const void *p, size_t len,
	buf_t *out)
{
	buf_reset(out);
	size_t cap = ZSTD_compressBound(len);
	buf_reserve(out, cap);
	size_t n = ZSTD_compress_usingCDict(z->c, out->p, cap, p, len, d->cd);
	if (ZSTD_isError(n) || n >= len) {
		/* Not worth it (or cannot): stored as it is. */
		buf_reset(out);
		buf_add(out, p, len);
		return 0;
	}
	out->len = n;
	return 1;
}

int q_dict_put(q_txn *t, uint32_t cid, const void *p, size_t len, char *err,
	size_t errlen)
{
	unsigned char k[4];
	be32(k, cid);
	const void *v;
	size_t vl;
	if (get(t, T_DICTS, k, 4, &v, &vl) == 1) {
		/* Bodies may already be compressed with it: never replaced. */
		snprintf(err, errlen, "queue: campaign %u already has a "
			"dictionary", cid);
		return -1;
	}
	return put(t, T_DICTS, k, 4, p, len, err, errlen);
}

int q_dict_get(q_txn *t, uint32_t cid, const void **p, size_t *len)
{
	unsigned char k[4];
	be32(k, cid);
	return get(t, T_DICTS, k, 4, p, len);
}

int q_dict_del(q_txn *t, uint32_t cid, char *err, size_t errlen)
{
	unsigned char k[4];
	be32(k, cid);
	return del(t, T_DICTS, k, 4, err, errlen);
}

int q_body_read(q_txn *t, q_zctx *z, uint64_t id, buf_t *out, char *err,
	size_t errlen)
{
	const void *p;
	size_t len;
	buf_reset(out);
	int rc = q_body_get(t, id, &p, &len);
	if (rc != 1)
		return rc;
	if (len < 4 || memcmp(p, zmagic, 4) != 0) {
		buf_add(out, p, len);
		return 1;
	}
	const void *dict;
	size_t dlen;
	if (q_dict_get(t, q_id_cid(id), &dict, &dlen) != 1) {
		snprintf(err, errlen, "queue: message %016llx is compressed but "
			"campaign %u has no dictionary", (unsigned long long)id,
			q_id_cid(id));
		return -1;
	}
	unsigned long long size = ZSTD_getFrameContentSize(p, len);
	if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN ||
	    size > (64u << 20)) {
		snprintf(err, errlen, "queue: message %016llx: damaged compressed "
			"body", (unsigned long long)id);
		return -1;
	}
	buf_reserve(out, (size_t)size + 1);
	size_t n = ZSTD_decompress_usingDict(z->d, out->p, (size_t)size + 1, p,
		len, dict, dlen);
	if (ZSTD_isError(n) || n != size) {
		snprintf(err, errlen, "queue: message %016llx: damaged compressed "
			"body: %s", (unsigned long long)id, ZSTD_isError(n)
			? ZSTD_getErrorName(n) : "wrong size");
		buf_reset(out);
		return -1;
	}
	out->len = n;
	return 1;
}

/* ---- due index ---- */

int q_due_put(q_txn *t, const struct q_due *d, char *err, size_t errlen)
{
	unsigned char k[DUE_KEY_LEN];
	due_key(k, d);
	return put(t, T_DUE, k, DUE_KEY_LEN, "", 0, err, errlen);
}

int q_due_del(q_txn *t, const struct q_due *d, char *err, size_t errlen)
{
	unsigned char k[DUE_KEY_LEN];
	due_key(k, d);
	return del(t, T_DUE, k, DUE_KEY_LEN, err, errlen);
}

struct due_scan {
	int (*cb)(void *, const struct q_due *);
	void *arg;
	const unsigned char *skip;   /* the `from` key itself is excluded */
	uint64_t now;
	uint64_t next_due;
	unsigned max, seen;
};

static int due_scan_cb(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct due_scan *s = arg;
	struct q_due d;
	(void)v;
	if (k->mv_size != DUE_KEY_LEN)
		return 0;
	if (s->skip && memcmp(k->mv_data, s->skip, DUE_KEY_LEN) == 0)
		return 0;
	due_parse(k->mv_data, &d);
	if (d.due_ms > s->now) {
		s->next_due = d.due_ms;
		return 1;
	}
	if (s->max && s->seen >= s->max)
		return 1;
	s->seen++;
	return s->cb(s->arg, &d) ? 1 : 0;
}

int q_due_scan(q_txn *t, uint32_t cid, const struct q_due *from,
	uint64_t now, unsigned max,
	int (*cb)(void *arg, const struct q_due *d), void *arg,
	uint64_t *next_due, char *err, size_t errlen)
{
	unsigned char k[DUE_KEY_LEN];
	struct due_scan s = { cb, arg, NULL, now, UINT64_MAX, max, 0 };
	if (from) {
		due_key(k, from);
		s.skip = k;
	}
	int n = range(t, T_DUE, false, cid, from ? k : NULL, DUE_KEY_LEN, false,
		0, due_scan_cb, &s, err, errlen);
	if (next_due)
		*next_due = s.next_due;
	return n < 0 ? n : (int)s.seen;
}

/* ---- suppression ---- */

/* Suppression is by address, case-insensitively: mailbox providers treat
 * local parts that way, and a list that misses "Ana@" for "ana@" is not a
 * suppression list. Keys are stored lowercase. */
static size_t lower_key(const char *addr, char *k, size_t klen)
{
	size_t n = 0;
	for (; addr[n] && n < klen - 1; n++)
		k[n] = (char)tolower((unsigned char)addr[n]);
	k[n] = 0;
	return addr[n] ? 0 : n;
}

int q_suppress_put(q_txn *t, const char *addr, const char *json,
	char *err, size_t errlen)
{
	char k[512];
	size_t l = lower_key(addr, k, sizeof k);
	if (!l) {
		snprintf(err, errlen, "queue: bad address for the suppression "
			"list");
		return -1;
	}
	return put(t, T_SUPPRESS, k, l, json, strlen(json), err, errlen);
}

int q_suppress_get(q_txn *t, const char *addr, const char **json,
	size_t *len)
{
	const void *v;
	char k[512];
	size_t l = lower_key(addr, k, sizeof k);
	if (l == 0)
		return 0;
	int rc = get(t, T_SUPPRESS, k, l, &v, len);
	if (rc == 1 && json)
		*json = v;
	return rc;
}

int q_suppress_del(q_txn *t, const char *addr, char *err, size_t errlen)
{
	char k[512];
	size_t l = lower_key(addr, k, sizeof k);
	return l ? del(t, T_SUPPRESS, k, l, err, errlen) : 0;
}

struct supp_each {
	int (*cb)(void *, const char *, const char *, size_t);
	void *arg;
};

static int supp_each_cb(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct supp_each *e = arg;
	char a[512];
	size_t n = k->mv_size < sizeof a - 1 ? k->mv_size : sizeof a - 1;
	memcpy(a, k->mv_data, n);
	a[n] = 0;
	return e->cb(e->arg, a, v->mv_data, v->mv_size) ? 1 : 0;
}

int q_suppress_each(q_txn *t,
	int (*cb)(void *arg, const char *addr, const char *json, size_t len),
	void *arg, char *err, size_t errlen)
{
	struct supp_each e = { cb, arg };
	int n = range(t, T_SUPPRESS, true, 0, NULL, 0, false, 0, supp_each_cb,
		&e, err, errlen);
	return n < 0 ? n : 0;
}

/* ---- statistics ---- */

int q_stat(q_env *q, struct q_stat *out, char *err, size_t errlen)
{
	MDB_envinfo info;
	MDB_stat st;
	q_txn *t;
	memset(out, 0, sizeof *out);
	mdb_env_info(q->env, &info);
	mdb_env_stat(q->env, &st);
	out->map_size = info.me_mapsize;
	out->used_bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
	int rc = q_begin(q, false, &t, err, errlen);
	if (rc)
		return rc;
	for (int i = 0; i < T_COUNT; i++)
		if (mdb_stat(t->txn, q->dbi[i], &st) == 0)
			out->entries[i] = st.ms_entries;
	q_abort(t);
	return 0;
}

/* ---- warm-up ---- */

/* Value: first_day, day, count as three big-endian 32-bit words. */
int q_warmup_get(q_txn *t, const char *site, struct q_warmup *w)
{
	const void *v;
	size_t len;
	size_t kl = strlen(site);
	memset(w, 0, sizeof *w);
	if (kl == 0 || kl > 500)
		return 0;
	int rc = get(t, T_WARMUP, site, kl, &v, &len);
	if (rc != 1 || len != 12)
		return 0;
	w->first_day = (int32_t)rd32(v);
	w->day = (int32_t)rd32((const unsigned char *)v + 4);
	w->count = rd32((const unsigned char *)v + 8);
	return 1;
}

int q_warmup_add(q_txn *t, const char *site, int32_t day, uint32_t n,
	char *err, size_t errlen)
{
	struct q_warmup w;
	size_t kl = strlen(site);
	if (kl == 0 || kl > 500) {
		snprintf(err, errlen, "queue: warm-up site name of %zu bytes", kl);
		return -1;
	}
	if (!q_warmup_get(t, site, &w)) {
		w.first_day = day;
		w.day = day;
		w.count = 0;
	}
	if (w.day != day) {
		w.day = day;
		w.count = 0;
	}
	w.count += n;
	unsigned char v[12];
	be32(v, (uint32_t)w.first_day);
	be32(v + 4, (uint32_t)w.day);
	be32(v + 8, w.count);
	return put(t, T_WARMUP, site, kl, v, sizeof v, err, errlen);
}

const char *q_table_name(unsigned i)
{
	return i < T_COUNT ? table_names[i] : NULL;
}

int q_sweep(q_env *q, uint64_t *freed, char *err, size_t errlen)
{
	unsigned char from[8] = { 0 };
	*freed = 0;
	for (;;) {
		q_txn *t;
		int rc = q_begin(q, true, &t, err, errlen);
		if (rc)
			return rc;
		MDB_cursor *cur;
		MDB_val k = { 8, from }, v;
		unsigned seen = 0;
		if ((rc = mdb_cursor_open(t->txn, q->dbi[T_BODIES], &cur)) != 0) {
			q_abort(t);
			return q_rc(rc, err, errlen, "sweep");
		}
		/* Chunks of 65536 bodies per transaction, resumed by key. */
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		while (rc == 0 && seen < 65536) {
			struct q_msg m;
			seen++;
			if (k.mv_size == 8)
				memcpy(from, k.mv_data, 8);
			if (k.mv_size == 8 && q_msg_get(t, rd64(k.mv_data), &m) == 1 &&
			    m.state == Q_SENDING) {
				/* Claimed for WhatsApp when the engine stopped: it
				 * may have been sent; never send it again. */
				struct q_counters d = { 0 };
				uint64_t id = rd64(k.mv_data);
				m.state = Q_FAILED;
				snprintf(m.reply, sizeof m.reply, "interrupted while "
					"sending; not sent again (a contact never gets a "
					"campaign's WhatsApp twice)");
				d.wa_failed = 1;
				if ((rc = q_msg_put(t, id, &m, err, errlen)) != 0 ||
				    (rc = q_counters_add(t, q_id_cid(id), &d, err,
				    errlen)) != 0)
					break;
			}
			if (k.mv_size == 8 && q_msg_get(t, rd64(k.mv_data), &m) == 1 &&
			    m.state != Q_QUEUED && m.state != Q_PAUSED &&
			    m.state != Q_STANDBY && m.state != Q_SENDING) {
				if ((rc = mdb_cursor_del(cur, 0)) != 0)
					break;
				(*freed)++;
			}
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
		mdb_cursor_close(cur);
		bool done = rc == MDB_NOTFOUND;
		if (rc != 0 && rc != MDB_NOTFOUND) {
			q_abort(t);
			return q_rc(rc, err, errlen, "sweep");
		}
		if ((rc = q_commit(t, err, errlen)) != 0)
			return rc;
		if (done)
			return 0;
		/* next chunk starts after the last key seen */
		for (int b = 7; b >= 0 && ++from[b] == 0; b--)
			;
	}
}
