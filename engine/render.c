/*
 * render — the render pool; see render.h. rd_render() (one contact to one
 * message) is at the end of the file.
 *
 * Pool state (jobs, claims, budgets) is guarded by one mutex; workers hold
 * it only to claim a range or to update counts, never while rendering or
 * writing. Notifications to the loop go through `done` + an ev_async.
 */
#include "engine/render.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "templates/mime.h"
#include "templates/unsub.h"

struct job {
	struct camp *camp;
	uint32_t cid;
	uint32_t total;
	uint32_t next;           /* next index to claim */
	unsigned busy;           /* batches in progress */
	uint64_t rendered;       /* rendered messages (committed) */
	uint64_t final;          /* from the committer */
	bool paused;
	bool removed;
	/* The campaign's compression dictionary (queue/queue.h): made from
	 * the first rendered body, usable once its transaction committed. */
	q_dict *dict;
	bool dict_claimed;       /* a worker is writing it */
	struct job *next_job;
};

/* zstd level for bodies: level 1 with a campaign dictionary already takes
 * a 10 KB newsletter to ~1% of its size (bench/queue-bench). */
#define BODY_ZLEVEL 1

struct note {
	uint32_t cid;
	unsigned n;
	bool done;
	struct note *next;
};

struct rd_pool {
	q_env *q;
	evlog *ev;
	struct ev_loop *loop;
	struct rd_env env;
	struct rd_ops ops;
	void *arg;
	unsigned batch;
	uint64_t ahead;

	pthread_mutex_t mu;
	pthread_cond_t cv;       /* work may be available */
	pthread_cond_t idle;     /* a batch finished (rd_remove waits) */
	bool stop;
	struct job *jobs;
	struct job *rr;          /* round-robin position */
	pthread_t *th;
	unsigned nth;

	struct note *notes, **notes_tail;
	ev_async wake;
	_Atomic uint64_t total_rendered;
};

/* ---- loop side ---- */

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	rd_pool *p = w->data;
	(void)loop;
	(void)revents;
	pthread_mutex_lock(&p->mu);
	struct note *n = p->notes;
	p->notes = NULL;
	p->notes_tail = &p->notes;
	pthread_mutex_unlock(&p->mu);
	while (n) {
		struct note *next = n->next;
		p->ops.rendered(p->arg, n->cid, n->n, n->done);
		free(n);
		n = next;
	}
}

static void notify(rd_pool *p, uint32_t cid, unsigned n, bool done)
{
	struct note *x = mem_calloc(1, sizeof *x);
	x->cid = cid;
	x->n = n;
	x->done = done;
	pthread_mutex_lock(&p->mu);
	*p->notes_tail = x;
	p->notes_tail = &x->next;
	pthread_mutex_unlock(&p->mu);
	ev_async_send(p->loop, &p->wake);
}

/* ---- worker ---- */

struct item {
	uint32_t idx;
	char *contact;
	size_t len;
};

struct collect {
	struct item *items;
	size_t n;
	uint32_t end;
};

static int collect_cb(void *arg, uint32_t idx, const void *p, size_t len)
{
	struct collect *c = arg;
	if (idx >= c->end)
		return 1;
	c->items[c->n].idx = idx;
	c->items[c->n].contact = mem_memdup(p, len);
	c->items[c->n].len = len;
	c->n++;
	return 0;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A rendered (or failed) contact, ready to be written. */
struct out {
	uint32_t idx;
	struct rd_msg m;
	buf_t body;
	buf_t packed;            /* body compressed with the dictionary */
	bool use_packed;
	uint8_t state;           /* Q_QUEUED, Q_FAILED, Q_SUPPRESSED, Q_SKIPPED */
	char reason[256];
	/* WhatsApp */
	uint8_t wa;              /* 0 none, Q_QUEUED, Q_STANDBY, Q_FAILED */
	buf_t wa_body;
	char wa_to[32];
	char wa_reason[256];
};

/*
 * The contact's WhatsApp message: due now (both, only, or fallback after
 * the e-mail already failed), on standby (fallback: activated by the
 * committer if the e-mail bounces hard or expires), or failed with a clear
 * reason (no usable phone number).
 */
static int write_wa(q_txn *t, struct job *j, struct out *o, uint64_t now,
	uint64_t due, double tsd, buf_t *events, struct q_counters *d,
	char *err, size_t errlen)
{
	uint8_t st = o->wa;
	bool email_failed = o->state == Q_FAILED || o->state == Q_SUPPRESSED;
	if (st == Q_STANDBY && email_failed)
		st = o->wa_body.len ? Q_QUEUED : Q_FAILED;
	if (st == Q_STANDBY && !o->wa_body.len)
		return 0;   /* no phone: the e-mail is the only channel */
	uint32_t widx = o->idx | Q_WA_BIT;
	uint64_t wid = q_id(j->cid, widx);
	struct q_msg m = { 0 };
	m.state = st;
	m.created_ms = now;
	m.due_ms = due;
	snprintf(m.rcpt, sizeof m.rcpt, "%s", o->wa_to);
	snprintf(m.reply, sizeof m.reply, "%s", o->wa_reason);
	int rc = 0;
	if (st == Q_QUEUED || st == Q_STANDBY) {
		m.body_len = (uint32_t)o->wa_body.len;
		rc = q_body_put(t, wid, o->wa_body.p, o->wa_body.len, err, errlen);
	}
	if (rc == 0 && st == Q_QUEUED) {
		struct q_due qd = { j->cid, due, widx, 1 };
		rc = q_due_put(t, &qd, err, errlen);
		d->wa_created++;
	}
	if (rc == 0 && st == Q_FAILED) {
		struct evlog_event ev = { .event = "whatsapp_failed",
			.campaign = j->cid, .msg = wid, .rcpt = o->wa_to,
			.reply = o->wa_reason, .ms = -1 };
		evlog_format(events, tsd, &ev);
		d->wa_created++;
		d->wa_failed++;
	}
	if (rc == 0)
		rc = q_msg_put(t, wid, &m, err, errlen);
	return rc;
}

static int write_batch(rd_pool *p, struct job *j, struct out *o, size_t n,
	const buf_t *dict, buf_t *events, unsigned *queued, char *err,
	size_t errlen)
{
	uint64_t now = wall_ms();
	uint64_t due = j->camp->send_at_ms > now ? j->camp->send_at_ms : now;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	double tsd = (double)ts.tv_sec + ts.tv_nsec / 1e9;

	for (int attempt = 0; attempt < 16; attempt++) {
		q_txn *t;
		struct q_counters d = { 0 };
		buf_reset(events);
		*queued = 0;
		int rc = q_begin(p->q, true, &t, err, errlen);
		if (rc == 0 && dict)
			rc = q_dict_put(t, j->cid, dict->p, dict->len, err, errlen);
		for (size_t i = 0; rc == 0 && i < n; i++) {
			uint64_t id = q_id(j->cid, o[i].idx);
			struct q_msg m = { 0 };
			const char *sj;
			size_t sl;
			if (o[i].state == Q_QUEUED && o[i].m.rcpt[0] &&
			    q_suppress_get(t, o[i].m.rcpt, &sj, &sl) == 1) {
				o[i].state = Q_SUPPRESSED;
				snprintf(o[i].reason, sizeof o[i].reason,
					"address is on the suppression list");
			}
			m.state = o[i].state;
			m.flags = o[i].m.flags;
			m.created_ms = now;
			m.due_ms = due;
			snprintf(m.rcpt, sizeof m.rcpt, "%s", o[i].m.rcpt);
			snprintf(m.reply, sizeof m.reply, "%s", o[i].reason);
			if (o[i].state == Q_QUEUED) {
				struct q_due qd = { j->cid, due, o[i].idx, 0 };
				const buf_t *b = o[i].use_packed ? &o[i].packed
					: &o[i].body;
				m.body_len = (uint32_t)o[i].body.len;
				rc = q_body_put(t, id, b->p, b->len, err, errlen);
				if (rc == 0)
					rc = q_due_put(t, &qd, err, errlen);
				(*queued)++;
			} else if (o[i].state == Q_SKIPPED) {
				d.skipped++;
			} else {
				struct evlog_event ev = { .event = o[i].state ==
					Q_SUPPRESSED ? "suppressed" : "failed",
					.campaign = j->cid, .msg = id, .rcpt = m.rcpt,
					.reply = o[i].reason, .ms = -1 };
				evlog_format(events, tsd, &ev);
				if (o[i].state == Q_SUPPRESSED)
					d.suppressed++;
				else
					d.failed++;
			}
			if (rc == 0)
				rc = q_msg_put(t, id, &m, err, errlen);
			if (rc == 0 && o[i].wa)
				rc = write_wa(t, j, &o[i], now, due, tsd, events, &d, err,
					errlen);
			if (rc == 0)
				rc = q_contact_del(t, j->cid, o[i].idx, err, errlen);
			d.rendered++;
		}
		if (rc == 0)
			rc = q_counters_add(t, j->cid, &d, err, errlen);
		if (rc == 0) {
			rc = q_commit(t, err, errlen);
			t = NULL;
		}
		q_abort(t);
		if (rc == Q_EFULL) {
			if (q_grow(p->q, err, errlen) == 0)
				continue;
			return -1;
		}
		if (rc == 0 && events->len)
			evlog_write(p->ev, events->p, events->len);
		return rc;
	}
	return -1;
}

/* Pick a job with work and budget; claim a range. Called with mu held. */
static struct job *claim(rd_pool *p, uint32_t *from, uint32_t *end)
{
	struct job *start = p->rr ? p->rr : p->jobs;
	struct job *j = start;
	if (!j)
		return NULL;
	/* Transactional campaigns (welcome, abandoned cart) first. */
	for (struct job *t = p->jobs; t; t = t->next_job) {
		uint64_t out = t->rendered > t->final ? t->rendered - t->final : 0;
		uint64_t claimed = (uint64_t)t->busy * p->batch;
		if (t->camp->priority == CAMP_TRANSACTIONAL && !t->paused &&
		    !t->removed && t->next < t->total && out + claimed < p->ahead) {
			*from = t->next;
			uint64_t e = (uint64_t)t->next + p->batch;
			*end = e > t->total ? t->total : (uint32_t)e;
			t->next = *end;
			t->busy++;
			return t;
		}
	}
	do {
		uint64_t out = j->rendered > j->final ? j->rendered - j->final : 0;
		uint64_t claimed = (uint64_t)j->busy * p->batch;
		if (!j->paused && !j->removed && j->next < j->total &&
		    out + claimed < p->ahead) {
			*from = j->next;
			uint64_t e = (uint64_t)j->next + p->batch;
			*end = e > j->total ? j->total : (uint32_t)e;
			j->next = *end;
			j->busy++;
			p->rr = j->next_job;
			return j;
		}
		j = j->next_job ? j->next_job : p->jobs;
	} while (j != start);
	return NULL;
}

static void *worker(void *arg)
{
	rd_pool *p = arg;
	struct item *items = mem_calloc(p->batch, sizeof *items);
	struct out *o = mem_calloc(p->batch, sizeof *o);
	buf_t events = BUF_INIT;
	char err[512];
	q_zctx *z = q_zctx_new();

	pthread_mutex_lock(&p->mu);
	for (;;) {
		uint32_t from, end;
		struct job *j = NULL;
		while (!p->stop && !(j = claim(p, &from, &end)))
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		struct camp *camp = camp_ref(j->camp);
		pthread_mutex_unlock(&p->mu);

		/* Read the waiting contacts of [from, end). */
		struct collect c = { items, 0, end };
		q_txn *t;
		int rc = q_begin(p->q, false, &t, err, sizeof err);
		if (rc == 0) {
			rc = q_contact_scan(t, j->cid, from, end - from, collect_cb,
				&c, err, sizeof err);
			q_abort(t);
		}
		unsigned queued = 0;
		if (rc >= 0 && c.n) {
			time_t now = time(NULL);
			for (size_t i = 0; i < c.n; i++) {
				struct out *x = &o[i];
				json_error_t je;
				x->idx = items[i].idx;
				x->state = Q_QUEUED;
				x->reason[0] = 0;
				memset(&x->m, 0, sizeof x->m);
				buf_reset(&x->body);
				json_t *contact = json_loadb(items[i].contact,
					items[i].len, 0, &je);
				x->wa = 0;
				buf_reset(&x->wa_body);
				x->wa_to[0] = x->wa_reason[0] = 0;
				if (!contact) {
					x->state = Q_FAILED;
					snprintf(x->reason, sizeof x->reason,
						"stored contact unreadable: %s", je.text);
				} else if (camp->wa_mode == CAMP_WA_ONLY) {
					x->state = Q_SKIPPED;
				} else if (rd_render(camp, &p->env, x->idx, contact, now,
				    &x->body, &x->m, x->reason, sizeof x->reason) < 0) {
					x->state = Q_FAILED;
				} else if (!x->m.rcpt[0]) {
					x->state = Q_FAILED;
					snprintf(x->reason, sizeof x->reason,
						"no e-mail address");
				}
				if (contact && camp->wa_mode != CAMP_WA_NONE) {
					x->wa = camp->wa_mode == CAMP_WA_FALLBACK ? Q_STANDBY
						: Q_QUEUED;
					if (rd_render_wa(camp, contact, &x->wa_body, x->wa_to,
					    sizeof x->wa_to, x->wa_reason,
					    sizeof x->wa_reason) < 0) {
						buf_reset(&x->wa_body);
						if (x->wa == Q_QUEUED)
							x->wa = Q_FAILED;
					}
				}
				json_decref(contact);
				free(items[i].contact);
			}
			/* Compress with the campaign's dictionary once it is in
			 * the queue; the first batch with a message makes it. */
			pthread_mutex_lock(&p->mu);
			const q_dict *dict = j->dict;
			bool make = !dict && !j->dict_claimed;
			if (make)
				j->dict_claimed = true;
			pthread_mutex_unlock(&p->mu);
			const buf_t *dsrc = NULL;
			for (size_t i = 0; i < c.n; i++) {
				o[i].use_packed = false;
				if (o[i].state != Q_QUEUED)
					continue;
				if (make && !dsrc)
					dsrc = &o[i].body;
				else if (dict)
					o[i].use_packed = q_body_pack(z, dict, o[i].body.p,
						o[i].body.len, &o[i].packed) == 1;
			}
			rc = write_batch(p, j, o, c.n, dsrc, &events, &queued, err,
				sizeof err);
			if (make) {
				q_dict *nd = rc >= 0 && dsrc ? q_dict_new(dsrc->p,
					dsrc->len, BODY_ZLEVEL) : NULL;
				pthread_mutex_lock(&p->mu);
				j->dict = nd;
				j->dict_claimed = nd != NULL;
				pthread_mutex_unlock(&p->mu);
			}
		}
		if (rc < 0)
			log_err("render: campaign %u contacts %u-%u: %s; they stay "
				"waiting and are tried again", j->cid, from, end - 1,
				err);
		camp_unref(camp);

		pthread_mutex_lock(&p->mu);
		j->busy--;
		if (rc < 0) {
			/* Give the range back: it is retried after a pause. */
			if (from < j->next)
				j->next = from;
		} else {
			j->rendered += c.n;
			atomic_fetch_add(&p->total_rendered, c.n);
		}
		bool done = rc >= 0 && j->next >= j->total && j->busy == 0;
		pthread_cond_broadcast(&p->idle);
		if (rc >= 0 && (c.n || done) && !j->removed) {
			pthread_mutex_unlock(&p->mu);
			notify(p, j->cid, (unsigned)c.n, done);
			pthread_mutex_lock(&p->mu);
		}
		if (rc < 0) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
		}
	}
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->batch; i++) {
		buf_free(&o[i].body);
		buf_free(&o[i].packed);
		buf_free(&o[i].wa_body);
	}
	free(o);
	free(items);
	buf_free(&events);
	q_zctx_free(z);
	return NULL;
}

rd_pool *rd_new(q_env *q, evlog *ev, struct ev_loop *loop, unsigned threads,
	unsigned batch, uint64_t render_ahead, const struct rd_env *env,
	const struct rd_ops *ops, void *arg, char *err, size_t errlen)
{
	rd_pool *p = mem_calloc(1, sizeof *p);
	p->q = q;
	p->ev = ev;
	p->loop = loop;
	p->env = *env;
	p->ops = *ops;
	p->arg = arg;
	p->batch = batch ? batch : 256;
	p->ahead = render_ahead ? render_ahead : UINT64_MAX;
	p->notes_tail = &p->notes;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->idle, NULL);
	ev_async_init(&p->wake, wake_cb);
	p->wake.data = p;
	ev_async_start(loop, &p->wake);
	ev_unref(loop);
	p->th = mem_calloc(threads ? threads : 1, sizeof *p->th);
	for (unsigned i = 0; i < (threads ? threads : 1); i++) {
		if (pthread_create(&p->th[i], NULL, worker, p) != 0) {
			snprintf(err, errlen, "render: cannot start thread %u", i);
			rd_free(p);
			return NULL;
		}
		p->nth++;
	}
	return p;
}

void rd_add(rd_pool *p, struct camp *c, uint32_t total, uint64_t rendered,
	uint64_t final)
{
	struct job *j = mem_calloc(1, sizeof *j);
	j->camp = camp_ref(c);
	j->cid = c->cid;
	j->total = total;
	j->rendered = rendered;
	j->final = final;
	/* After a restart the campaign keeps the dictionary its bodies were
	 * compressed with. */
	q_txn *t;
	char err[256];
	if (q_begin(p->q, false, &t, err, sizeof err) == 0) {
		const void *dp;
		size_t dl;
		if (q_dict_get(t, c->cid, &dp, &dl) == 1) {
			j->dict = q_dict_new(dp, dl, BODY_ZLEVEL);
			j->dict_claimed = true;
		}
		q_abort(t);
	}
	pthread_mutex_lock(&p->mu);
	j->next_job = p->jobs;
	p->jobs = j;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	if (rendered >= total)
		notify(p, c->cid, 0, true);
}

static struct job *find(rd_pool *p, uint32_t cid)
{
	for (struct job *j = p->jobs; j; j = j->next_job)
		if (j->cid == cid && !j->removed)
			return j;
	return NULL;
}

void rd_pause(rd_pool *p, uint32_t cid, bool paused)
{
	pthread_mutex_lock(&p->mu);
	struct job *j = find(p, cid);
	if (j)
		j->paused = paused;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void rd_remove(rd_pool *p, uint32_t cid)
{
	pthread_mutex_lock(&p->mu);
	struct job *j = find(p, cid);
	if (j) {
		j->removed = true;
		while (j->busy)
			pthread_cond_wait(&p->idle, &p->mu);
		for (struct job **pp = &p->jobs; *pp; pp = &(*pp)->next_job)
			if (*pp == j) {
				*pp = j->next_job;
				break;
			}
		if (p->rr == j)
			p->rr = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	if (j) {
		camp_unref(j->camp);
		q_dict_free(j->dict);
		free(j);
	}
}

void rd_final(rd_pool *p, uint32_t cid, uint64_t final)
{
	pthread_mutex_lock(&p->mu);
	struct job *j = find(p, cid);
	if (j && final > j->final) {
		j->final = final;
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
}

uint64_t rd_rendered_total(rd_pool *p)
{
	return atomic_load(&p->total_rendered);
}

void rd_free(rd_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->nth; i++)
		pthread_join(p->th[i], NULL);
	free(p->th);
	ev_ref(p->loop);
	ev_async_stop(p->loop, &p->wake);
	while (p->notes) {
		struct note *n = p->notes->next;
		free(p->notes);
		p->notes = n;
	}
	while (p->jobs) {
		struct job *n = p->jobs->next_job;
		camp_unref(p->jobs->camp);
		q_dict_free(p->jobs->dict);
		free(p->jobs);
		p->jobs = n;
	}
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->idle);
	free(p);
}

/* ---- one contact → one message ---- */

/* A 64-bit value unique enough for Message-IDs and MIME boundaries. */
static uint64_t unique64(uint64_t id)
{
	uint64_t r = 0;
	if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		r = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^
			(uint64_t)ts.tv_sec;
	}
	return r ^ (id * 0xbf58476d1ce4e5b9ULL);
}

static const char *str_field(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s && *s ? s : NULL;
}

int rd_render_wa(const struct camp *c, const json_t *contact, buf_t *out,
	char *to, size_t tolen, char *err, size_t errlen)
{
	const char *phone = str_field(contact, "phone");
	const char *perr = str_field(contact, "_phone_error");
	to[0] = 0;
	if (!phone) {
		snprintf(err, errlen, "no usable phone number%s%s",
			perr ? ": " : "", perr ? perr : "");
		return -1;
	}
	snprintf(to, tolen, "%s", phone[0] == '+' ? phone + 1 : phone);
	const json_t *ctx[2] = { contact, json_object_get(c->def, "vars") };
	json_t *params = json_array();
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < c->nwa_params; i++) {
		buf_t b = BUF_INIT;
		rc = mu_render(c->wa_params[i], ctx, ctx[1] ? 2 : 1, &b, err,
			errlen);
		json_t *v = rc == 0 ? json_stringn(b.p ? b.p : "", b.len) : NULL;
		if (rc == 0 && !v) {
			snprintf(err, errlen, "parameter %zu is not valid UTF-8", i);
			rc = -1;
		}
		if (v)
			json_array_append_new(params, v);
		buf_free(&b);
	}
	if (rc == 0) {
		json_t *j = json_pack("{sssssssO}", "to", to, "template",
			c->wa_template, "language", c->wa_language, "params", params);
		char *s = json_dumps(j, JSON_COMPACT);
		buf_adds(out, s);
		free(s);
		json_decref(j);
	}
	json_decref(params);
	return rc;
}

void rd_sender(const struct camp *c, const struct rd_env *env, uint64_t id,
	char *out, size_t outlen)
{
	const char *dom = env->bounce_domain && *env->bounce_domain
		? env->bounce_domain : strrchr(c->from_addr, '@') + 1;
	snprintf(out, outlen, "bounce+%016llx@%s", (unsigned long long)id, dom);
}

static bool is_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return false;
	return true;
}

int rd_render(const struct camp *c, const struct rd_env *env, uint32_t idx,
	const json_t *contact, time_t now, buf_t *out, struct rd_msg *m,
	char *err, size_t errlen)
{
	uint64_t id = q_id(c->cid, idx);
	const json_t *ctx[2] = { contact, json_object_get(c->def, "vars") };
	size_t nctx = ctx[1] ? 2 : 1;
	buf_t subject = BUF_INIT, text = BUF_INIT, html = BUF_INIT;
	buf_t msg = BUF_INIT, sig = BUF_INIT, lu = BUF_INIT;
	char name[512] = "", mid[320], token[UNSUB_TOKEN_LEN + 1];
	int rc = -1;

	memset(m, 0, sizeof *m);
	const char *email = str_field(contact, "email");
	if (!email) {
		snprintf(err, errlen, "no e-mail address");
		return -1;
	}
	snprintf(m->rcpt, sizeof m->rcpt, "%s", email);
	rd_sender(c, env, id, m->sender, sizeof m->sender);
	if (!is_ascii(email))
		m->flags |= RD_SMTPUTF8;

	/* Display name: "name", else first_name [last_name]. */
	const char *full = str_field(contact, "name");
	const char *first = str_field(contact, "first_name");
	const char *last = str_field(contact, "last_name");
	if (full)
		snprintf(name, sizeof name, "%s", full);
	else if (first)
		snprintf(name, sizeof name, "%s%s%s", first, last ? " " : "",
			last ? last : "");

	if (mu_render(c->subject, ctx, nctx, &subject, err, errlen) < 0)
		goto out;
	if (c->text && mu_render(c->text, ctx, nctx, &text, err, errlen) < 0)
		goto out;
	if (c->html && mu_render(c->html, ctx, nctx, &html, err, errlen) < 0)
		goto out;

	uint64_t u = unique64(id);
	snprintf(mid, sizeof mid, "%016llx.%016llx@%s",
		(unsigned long long)id, (unsigned long long)u,
		env->hostname && *env->hostname ? env->hostname : "localhost");

	/* One-click unsubscribe (RFC 8058) with a per-recipient token. */
	const char *from_dom = strrchr(c->from_addr, '@') + 1;
	if (unsub_token_make(env->unsub_key, env->unsub_keylen, c->cid, id,
	    email, token) < 0) {
		snprintf(err, errlen, "cannot make the unsubscribe token");
		goto out;
	}
	if (c->unsub_url) {
		if (unsub_header_value(c->unsub_url, from_dom, token, &lu, err,
		    errlen) < 0)
			goto out;
	} else {
		/* No web endpoint: the mailto form alone (not one-click). */
		buf_printf(&lu, "<mailto:unsubscribe@%s?subject=%s>", from_dom,
			token);
	}

	char *rt_name = NULL, *rt_addr = NULL;
	if (c->reply_to && camp_parse_mailbox(c->reply_to, &rt_name, &rt_addr,
	    err, errlen) < 0)
		goto out;
	char cidh[16];
	snprintf(cidh, sizeof cidh, "%u", c->cid);
	mime_header extra[] = { { "X-Campaign-ID", cidh } };
	mime_msg mm = {
		.from_name = c->from_name, .from_addr = c->from_addr,
		.to_name = name, .to_addr = email,
		.reply_to_name = rt_name, .reply_to_addr = rt_addr,
		.subject = buf_cstr(&subject),
		.text = c->text ? buf_cstr(&text) : NULL, .text_len = text.len,
		.html = c->html ? buf_cstr(&html) : NULL, .html_len = html.len,
		.message_id = mid, .date = now,
		.list_unsubscribe = buf_cstr(&lu),
		.list_unsubscribe_post = c->unsub_url
			? UNSUB_POST_VALUE : NULL,
		.feedback_id = c->feedback_id,
		.extra = extra, .n_extra = 1,
		.boundary_seed = u,
	};
	rc = mime_build(&mm, &msg, err, errlen);
	free(rt_name);
	free(rt_addr);
	if (rc < 0)
		goto out;
	rc = -1;
	if (env->nsigners && dkim_sign(env->signers, env->nsigners, msg.p,
	    msg.len, now, &sig, err, errlen) < 0)
		goto out;
	/* The stored form: signatures, then the message, dot-stuffed. */
	if (sig.len)
		mime_dot_stuff(sig.p, sig.len, out);
	mime_dot_stuff(msg.p, msg.len, out);
	for (size_t i = 0; i < out->len; i++)
		if ((unsigned char)out->p[i] >= 0x80) {
			m->flags |= RD_8BIT;
			break;
		}
	rc = 0;
out:
	buf_free(&subject);
	buf_free(&text);
	buf_free(&html);
	buf_free(&msg);
	buf_free(&sig);
	buf_free(&lu);
	return rc;
}
