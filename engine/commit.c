/*
 * commit — the group committer; see commit.h.
 *
 * Threading: producers (the loop thread) append to `in` under `mu` and
 * signal `cv`. The committer thread takes the whole list at once after the
 * window has passed, applies it, and appends the result to `out`; an
 * ev_async wakes the loop, whose callback takes `out` and runs the done
 * callbacks. Jobs follow the same path through their own lists.
 */
#include "engine/commit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/log.h"
#include "engine/mem.h"

#define BATCH_MAX 16384
#define GC_HIGH 100000   /* bodies waiting: free some between batches */

/* Bodies of finished messages, freed after the outcomes are committed. */
struct gc {
	uint64_t *ids;
	size_t n, cap;
};


struct jobnode {
	struct jobnode *next;
	struct cm_job job;
	int rc;                      /* CM_MORE: not finished */
	char err[256];
};

struct batch {
	struct batch *next;
	struct cm_outcome *list;
	struct cm_touched *touched;
	size_t ntouched;
};

struct cm {
	q_env *q;
	evlog *ev;
	struct ev_loop *loop;
	uint64_t window_ms;
	bool full;                   /* sync = full: one outcome per txn */
	struct cm_ops ops;
	void *arg;

	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	bool backlog;                /* the last take left outcomes waiting */
	struct gc pending_gc;        /* bodies of the batch being applied */
	struct gc gc;                /* bodies to free when idle */
	struct cm_outcome *in, **in_tail;
	struct jobnode *jobs_in, **jobs_tail;
	/* results for the loop */
	struct batch *out, **out_tail;
	struct jobnode *jobs_out, **jobs_out_tail;
	ev_async wake;

	_Atomic uint64_t committed, txns;
};

struct cm_outcome *cm_outcome_new(void)
{
	struct cm_outcome *o = mem_calloc(1, sizeof *o);
	o->rcpt = mem_strdup("");
	o->reply = mem_strdup("");
	return o;
}

void cm_outcome_text(struct cm_outcome *o, const char *rcpt,
	const char *reply)
{
	if (rcpt) {
		free(o->rcpt);
		o->rcpt = mem_strndup(rcpt, strnlen(rcpt, Q_RCPT_MAX));
	}
	if (reply) {
		free(o->reply);
		o->reply = mem_strndup(reply, strnlen(reply, Q_REPLY_MAX));
	}
}

void cm_outcome_free(struct cm_outcome *o)
{
	if (!o)
		return;
	buf_free(&o->event);
	free(o->rcpt);
	free(o->reply);
	free(o->warm_site);
	free(o);
}

uint64_t cm_committed(const cm *c) { return atomic_load(&c->committed); }
uint64_t cm_transactions(const cm *c) { return atomic_load(&c->txns); }

/* ---- committer thread ---- */

static uint64_t *counter_for(struct q_counters *c, uint8_t state)
{
	switch (state) {
	case Q_DELIVERED: return &c->delivered;
	case Q_BOUNCED: return &c->bounced;
	case Q_EXPIRED: return &c->expired;
	case Q_SUPPRESSED: return &c->suppressed;
	case Q_FAILED: return &c->failed;
	case Q_CANCELLED: return &c->cancelled;
	default: return &c->deferrals;
	}
}

static struct cm_touched *touch(struct cm_touched **t, size_t *n,
	size_t *cap, uint32_t cid)
{
	for (size_t i = 0; i < *n; i++)
		if ((*t)[i].cid == cid)
			return &(*t)[i];
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 8;
		*t = mem_realloc(*t, *cap * sizeof **t);
	}
	struct cm_touched *x = &(*t)[(*n)++];
	memset(x, 0, sizeof *x);
	x->cid = cid;
	return x;
}

static void gc_add(struct gc *g, uint64_t id)
{
	if (g->n == g->cap) {
		g->cap = g->cap ? g->cap * 2 : 4096;
		g->ids = mem_realloc(g->ids, g->cap * sizeof *g->ids);
	}
	g->ids[g->n++] = id;
}

static int wake_standby(q_txn *t, const struct cm_outcome *o,
	struct q_counters *d, char *err, size_t errlen)
{
	uint32_t widx = q_id_idx(o->id) | Q_WA_BIT;
	uint64_t wid = q_id(q_id_cid(o->id), widx);
	struct q_msg w;
	if (q_msg_get(t, wid, &w) != 1 || w.state != Q_STANDBY)
		return 0;
	struct q_due qd = { q_id_cid(o->id), o->now_ms, widx, 1 };
	w.state = Q_QUEUED;
	w.due_ms = o->now_ms;
	snprintf(w.reply, sizeof w.reply, "fallback: %.400s", o->reply);
	int rc = q_due_put(t, &qd, err, errlen);
	if (rc == 0)
		rc = q_msg_put(t, wid, &w, err, errlen);
	d->wa_created++;
	return rc;
}

static int apply_one(q_txn *t, struct cm_outcome *o, struct q_counters *d,
	struct gc *gc, char *err, size_t errlen)
{
	struct q_msg m;
	int rc = q_msg_get(t, o->id, &m);
	if (rc < 0) {
		snprintf(err, errlen, "reading message %016llx",
			(unsigned long long)o->id);
		return -1;
	}
	if (rc == 0)
		return 0;   /* purged meanwhile (campaign deleted): nothing to do */
	bool wa = (q_id_idx(o->id) & Q_WA_BIT) != 0;
	if (o->state == Q_SENDING) {
		/* A WhatsApp claim: committed before the request is made, so a
		 * crash can never send it twice (q_sweep fails what stays in
		 * this state). Refused if the message is no longer queued. */
		if (m.state != Q_QUEUED)
			return 0;
		if ((rc = q_due_del(t, &o->due, err, errlen)) != 0)
			return rc;
		m.state = Q_SENDING;
		o->claimed = true;
		return q_msg_put(t, o->id, &m, err, errlen);
	}
	if (m.state != Q_QUEUED && m.state != Q_PAUSED &&
	    !(wa && m.state == Q_SENDING)) {
		/* Cancelled or deleted while in flight. A delivery still counts
		 * as a delivery: the recipient has it. */
		if (o->state == Q_DELIVERED && m.state == Q_CANCELLED) {
			d->cancelled--;
			d->delivered++;
			m.state = Q_DELIVERED;
			snprintf(m.reply, sizeof m.reply, "%s", o->reply);
			return q_msg_put(t, o->id, &m, err, errlen);
		}
		return 0;
	}
	if ((rc = q_due_del(t, &o->due, err, errlen)) != 0)
		return rc;
	if (m.due_ms != o->due.due_ms) {
		/* `queue retry` moved its due entry while it was in flight. */
		struct q_due moved = o->due;
		moved.due_ms = m.due_ms;
		if ((rc = q_due_del(t, &moved, err, errlen)) != 0)
			return rc;
	}
	m.attempts = o->attempts;
	m.last_ms = o->now_ms;
	snprintf(m.reply, sizeof m.reply, "%s", o->reply);
	if (wa && o->state == Q_DELIVERED)
		d->wa_sent++;
	else if (wa && o->state != Q_QUEUED)
		d->wa_failed++;
	else if (!o->no_attempt)
		(*counter_for(d, o->state))++;
	if (o->state == Q_QUEUED) {
		struct q_due nd = o->due;
		nd.due_ms = o->new_due;
		m.due_ms = o->new_due;
		m.state = Q_QUEUED;   /* a WhatsApp claim (SENDING) returns too */
		if ((rc = q_due_put(t, &nd, err, errlen)) != 0)
			return rc;
	} else {
		if (o->state == Q_BOUNCED)
			m.flags = (uint8_t)((m.flags & ~Q_CAT_MASK) |
				((o->category << Q_CAT_SHIFT) & Q_CAT_MASK));
		/* The body is freed by a later, separate transaction: the state
		 * change is what must be quick (freeing a 10 KB body walks
		 * LMDB's overflow pages). A crash in between leaves bodies of
		 * finished messages, which q_sweep() frees at start-up. */
		m.state = o->state;
		gc_add(gc, o->id);
		/* Fallback: the e-mail could not reach the contact (hard
		 * bounce, expired): its WhatsApp message on standby is due. */
		if (!wa && (o->state == Q_EXPIRED || (o->state == Q_BOUNCED &&
		    o->suppress)) && (rc = wake_standby(t, o, d, err, errlen)))
			return rc;
	}
	if (o->suppress && o->rcpt[0]) {
		buf_t j = BUF_INIT;
		buf_printf(&j, "{\"reason\":");
		evlog_json_str(&j, o->reply);
		buf_printf(&j, ",\"ts\":%llu,\"campaign\":%u,\"msg\":\"%016llx\"}",
			(unsigned long long)(o->now_ms / 1000), q_id_cid(o->id),
			(unsigned long long)o->id);
		rc = q_suppress_put(t, o->rcpt, buf_cstr(&j), err, errlen);
		buf_free(&j);
		if (rc)
			return rc;
	}
	return q_msg_put(t, o->id, &m, err, errlen);
}

/* Sites under warm-up are few: a short array searched linearly. */
static int add_warmup(q_txn *t, struct cm_outcome *list, char *err,
	size_t errlen)
{
	struct acc { const char *site; int32_t day; uint32_t n; } *a = NULL;
	size_t na = 0;
	for (struct cm_outcome *o = list; o; o = o->next) {
		if (!o->warm_site)
			continue;
		size_t i = 0;
		while (i < na && !(a[i].day == o->warm_day &&
		    strcmp(a[i].site, o->warm_site) == 0))
			i++;
		if (i == na) {
			a = mem_realloc(a, (na + 1) * sizeof *a);
			a[na++] = (struct acc){ o->warm_site, o->warm_day, 0 };
		}
		a[i].n++;
	}
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < na; i++)
		rc = q_warmup_add(t, a[i].site, a[i].day, a[i].n, err, errlen);
	free(a);
	return rc;
}

/* Apply `list` in one transaction; on Q_EFULL grow and retry. */
static int apply_batch(cm *c, struct cm_outcome *list,
	struct cm_touched **touched, size_t *ntouched, char *err,
	size_t errlen)
{
	for (int attempt = 0; attempt < 8; attempt++) {
		size_t cap = 0;
		q_txn *t;
		c->pending_gc.n = 0;
		*ntouched = 0;
		free(*touched);
		*touched = NULL;
		int rc = q_begin(c->q, true, &t, err, errlen);
		for (struct cm_outcome *o = list; rc == 0 && o; o = o->next) {
			struct cm_touched *x = touch(touched, ntouched, &cap,
				q_id_cid(o->id));
			o->claimed = false;
			rc = apply_one(t, o, &x->c, &c->pending_gc, err, errlen);
		}
		/* Warm-up counts: one write per site and day of the batch. */
		if (rc == 0)
			rc = add_warmup(t, list, err, errlen);
		/* Apply the deltas, then read back the totals for the loop. */
		for (size_t i = 0; rc == 0 && i < *ntouched; i++) {
			struct cm_touched *x = &(*touched)[i];
			rc = q_counters_add(t, x->cid, &x->c, err, errlen);
			if (rc == 0 && q_counters_get(t, x->cid, &x->c) < 0)
				rc = -1;
		}
		if (rc == 0) {
			rc = q_commit(t, err, errlen);
			t = NULL;
		}
		if (t)
			q_abort(t);
		if (rc == Q_EFULL) {
			if (q_grow(c->q, err, errlen) == 0)
				continue;
			return -1;
		}
		if (rc == 0) {
			atomic_fetch_add(&c->txns, 1);
			for (size_t i = 0; i < c->pending_gc.n; i++)
				gc_add(&c->gc, c->pending_gc.ids[i]);
		}
		c->pending_gc.n = 0;
		return rc;
	}
	return -1;
}

/* Free up to `max` waiting bodies in one transaction. */
static void free_bodies(cm *c, size_t max)
{
	char err[256];
	size_t n = c->gc.n < max ? c->gc.n : max;
	if (!n)
		return;
	q_txn *t;
	int rc = q_begin(c->q, true, &t, err, sizeof err);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = q_body_del(t, c->gc.ids[c->gc.n - 1 - i], err, sizeof err);
	if (rc == 0) {
		rc = q_commit(t, err, sizeof err);
		t = NULL;
	}
	q_abort(t);
	if (rc != 0) {
		/* Not lost: q_sweep() frees them at the next start. */
		log_warn("commit: freeing delivered bodies: %s", err);
		c->gc.n = 0;
		return;
	}
	c->gc.n -= n;
}

/* One transaction of a job (one chunk); j->rc is CM_MORE if it has more. */
static void run_job(cm *c, struct jobnode *j)
{
	buf_t events = BUF_INIT;
	for (int attempt = 0; attempt < 8; attempt++) {
		q_txn *t;
		buf_reset(&events);
		j->err[0] = 0;
		int rc = q_begin(c->q, true, &t, j->err, sizeof j->err);
		bool more = false;
		if (rc == 0) {
			rc = j->job.apply(t, j->job.arg, &events, j->err,
				sizeof j->err);
			if (rc == CM_MORE) {
				more = true;
				rc = 0;
			}
			if (rc == 0)
				rc = q_commit(t, j->err, sizeof j->err);
			else
				q_abort(t);
		}
		if (rc == Q_EFULL && q_grow(c->q, j->err, sizeof j->err) == 0)
			continue;
		if (rc == 0 && events.len)
			evlog_write(c->ev, events.p, events.len);
		if (rc == 0 && j->job.committed)
			j->job.committed(j->job.arg);
		j->rc = rc == 0 && more ? CM_MORE : rc;
		break;
	}
	buf_free(&events);
}

static void deliver(cm *c, struct batch *b, struct jobnode *jobs)
{
	pthread_mutex_lock(&c->mu);
	if (b) {
		*c->out_tail = b;
		c->out_tail = &b->next;
	}
	for (struct jobnode *j = jobs, *n; j; j = n) {
		n = j->next;
		j->next = NULL;
		*c->jobs_out_tail = j;
		c->jobs_out_tail = &j->next;
	}
	pthread_mutex_unlock(&c->mu);
	ev_async_send(c->loop, &c->wake);
}

static void process(cm *c, struct cm_outcome *list)
{
	char err[256] = "";
	struct batch *b = mem_calloc(1, sizeof *b);
	b->list = list;
	int rc = apply_batch(c, list, &b->touched, &b->ntouched, err,
		sizeof err);
	if (rc != 0) {
		/* The messages stay due in the queue and will be tried again:
		 * at-least-once, never lost. */
		log_err("commit: %s; the batch's outcomes are not recorded and "
			"its messages will be retried", err);
		b->ntouched = 0;
	} else {
		buf_t lines = BUF_INIT;
		uint64_t n = 0;
		for (struct cm_outcome *o = list; o; o = o->next, n++) {
			o->committed = true;
			buf_add(&lines, o->event.p, o->event.len);
		}
		if (lines.len)
			evlog_write(c->ev, lines.p, lines.len);
		buf_free(&lines);
		atomic_fetch_add(&c->committed, n);
	}
	deliver(c, b, NULL);
}

static void *cm_main(void *arg)
{
	cm *c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (!c->in && !c->jobs_in && !c->stop && c->gc.n) {
			/* Idle: free delivered bodies, a chunk at a time. */
			pthread_mutex_unlock(&c->mu);
			free_bodies(c, 8192);
			pthread_mutex_lock(&c->mu);
		}
		while (!c->in && !c->jobs_in && !c->stop)
			pthread_cond_wait(&c->cv, &c->mu);
		if (!c->in && !c->jobs_in && c->stop)
			break;
		if (c->in && c->window_ms && !c->stop && !c->backlog) {
			/* Let the group fill for one window. */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + c->window_ms * 1000000;
			ts.tv_sec += (time_t)(ns / 1000000000);
			ts.tv_nsec = (long)(ns % 1000000000);
			while (!c->stop && pthread_cond_timedwait(&c->cv, &c->mu,
			    &ts) == 0)
				;
		}
		struct cm_outcome *list = c->in;
		struct jobnode *jobs = c->jobs_in;
		/* sync = full: one outcome per transaction. group: at most
		 * BATCH_MAX per transaction, so a backlog never makes one huge
		 * transaction (LMDB spills dirty pages past ~128k of them). */
		size_t take = c->full ? 1 : BATCH_MAX;
		struct cm_outcome **cut = &c->in;
		while (*cut && take--)
			cut = &(*cut)->next;
		c->in = *cut;
		*cut = NULL;
		if (!c->in)
			c->in_tail = &c->in;
		c->backlog = c->in != NULL;
		c->jobs_in = NULL;
		c->jobs_tail = &c->jobs_in;
		pthread_mutex_unlock(&c->mu);

		if (list)
			process(c, list);
		if (c->gc.n > GC_HIGH)
			free_bodies(c, 1024);
		/* Jobs with more to do go back to the front of the line, after
		 * the outcomes that arrive meanwhile; the finished ones go to
		 * the loop. */
		struct jobnode *fin = NULL, **fin_tail = &fin;
		struct jobnode *again = NULL, **again_tail = &again;
		for (struct jobnode *j = jobs, *n; j; j = n) {
			n = j->next;
			j->next = NULL;
			run_job(c, j);
			if (j->rc == CM_MORE) {
				*again_tail = j;
				again_tail = &j->next;
			} else {
				*fin_tail = j;
				fin_tail = &j->next;
			}
		}
		if (fin)
			deliver(c, NULL, fin);
		pthread_mutex_lock(&c->mu);
		if (again) {
			*again_tail = c->jobs_in;
			if (!c->jobs_in)
				c->jobs_tail = again_tail;
			c->jobs_in = again;
		}
	}
	pthread_mutex_unlock(&c->mu);
	while (c->gc.n)
		free_bodies(c, 8192);
	return NULL;
}

/* ---- loop side ---- */

static void drain(cm *c)
{
	pthread_mutex_lock(&c->mu);
	struct batch *b = c->out;
	struct jobnode *j = c->jobs_out;
	c->out = NULL;
	c->out_tail = &c->out;
	c->jobs_out = NULL;
	c->jobs_out_tail = &c->jobs_out;
	pthread_mutex_unlock(&c->mu);

	while (b) {
		struct batch *n = b->next;
		c->ops.done(c->arg, b->list, b->touched, b->ntouched);
		free(b->touched);
		free(b);
		b = n;
	}
	while (j) {
		struct jobnode *n = j->next;
		if (j->job.after)
			j->job.after(j->job.arg, j->rc, j->err);
		free(j);
		j = n;
	}
}

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	drain(w->data);
}

cm *cm_new(q_env *q, evlog *ev, struct ev_loop *loop, uint64_t window_ms,
	const struct cm_ops *ops, void *arg, char *err, size_t errlen)
{
	cm *c = mem_calloc(1, sizeof *c);
	c->q = q;
	c->ev = ev;
	c->loop = loop;
	c->full = q_sync_mode(q) == Q_SYNC_FULL;
	c->window_ms = c->full ? 0 : window_ms;
	c->ops = *ops;
	c->arg = arg;
	c->in_tail = &c->in;
	c->jobs_tail = &c->jobs_in;
	c->out_tail = &c->out;
	c->jobs_out_tail = &c->jobs_out;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	ev_async_init(&c->wake, wake_cb);
	c->wake.data = c;
	ev_async_start(loop, &c->wake);
	ev_unref(loop);   /* the committer alone does not keep the loop alive */
	if (pthread_create(&c->th, NULL, cm_main, c) != 0) {
		snprintf(err, errlen, "commit: cannot start thread");
		ev_ref(loop);
		ev_async_stop(loop, &c->wake);
		free(c);
		return NULL;
	}
	return c;
}

void cm_push(cm *c, struct cm_outcome *o)
{
	o->next = NULL;
	pthread_mutex_lock(&c->mu);
	*c->in_tail = o;
	c->in_tail = &o->next;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

void cm_job(cm *c, const struct cm_job *job)
{
	struct jobnode *j = mem_calloc(1, sizeof *j);
	j->job = *job;
	pthread_mutex_lock(&c->mu);
	*c->jobs_tail = j;
	c->jobs_tail = &j->next;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

void cm_free(cm *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->stop = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->th, NULL);
	drain(c);
	ev_ref(c->loop);
	ev_async_stop(c->loop, &c->wake);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c->gc.ids);
	free(c->pending_gc.ids);
	free(c);
}
