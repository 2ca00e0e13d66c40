/* Unit tests for engine/commit: outcomes become durable state (message
 * record, due index, body freed, counters, suppression) in batched
 * transactions, the event log is written only after the commit, and the
 * batch comes back to the loop thread. Real LMDB, real libev loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/commit.h"

static char dir[128], logpath[200], err[512];

struct ctx {
	struct ev_loop *loop;
	size_t got;
	size_t want;
	struct q_counters last;
	uint64_t batches;
};

static void done_cb(void *arg, struct cm_outcome *list,
	const struct cm_touched *t, size_t nt)
{
	struct ctx *c = arg;
	c->batches++;
	while (list) {
		struct cm_outcome *n = list->next;
		assert_true(list->committed);
		c->got++;
		cm_outcome_free(list);
		list = n;
	}
	for (size_t i = 0; i < nt; i++)
		if (t[i].cid == 1)
			c->last = t[i].c;
	if (c->got >= c->want)
		ev_break(c->loop, EVBREAK_ALL);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void run(struct ctx *c)
{
	ev_timer to;
	ev_timer_init(&to, timeout_cb, 30, 0);   /* a bound, not a pace */
	ev_timer_start(c->loop, &to);
	ev_run(c->loop, 0);
	ev_timer_stop(c->loop, &to);
}

/* A fresh spool in a temporary directory (`dir`). */
static q_env *open_spool(size_t map_size, int sync)
{
	snprintf(dir, sizeof dir, "/tmp/carteiro-test-commit-XXXXXX");
	assert_non_null(mkdtemp(dir));
	struct q_config qc = { dir, map_size, 0, sync };
	q_env *q;
	assert_int_equal(q_open(&qc, &q, err, sizeof err), 0);
	return q;
}

static void remove_spool(q_env *q)
{
	q_close(q);
	char cmd[200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

#define N 1000

static int count_due(void *arg, const struct q_due *d)
{
	assert_true(d->due_ms == 999999);
	(*(int *)arg)++;
	return 0;
}

static void test_outcomes(void **state)
{
	(void)state;
	q_env *q = open_spool(1 << 26, Q_SYNC_GROUP);
	snprintf(logpath, sizeof logpath, "%s/events.log", dir);
	evlog *ev = evlog_open(logpath, err, sizeof err);
	assert_non_null(ev);

	/* N queued messages of campaign 1, each with a body and a due entry. */
	q_txn *t;
	assert_int_equal(q_begin(q, true, &t, err, sizeof err), 0);
	for (uint32_t i = 0; i < N; i++) {
		struct q_msg m = { .state = Q_QUEUED, .created_ms = 1000 };
		snprintf(m.rcpt, sizeof m.rcpt, "user%u@d%u.test", i, i % 7);
		struct q_due d = { 1, 1000, i, 0 };
		assert_int_equal(q_msg_put(t, q_id(1, i), &m, err, sizeof err), 0);
		assert_int_equal(q_body_put(t, q_id(1, i), "x\r\n", 3, err,
			sizeof err), 0);
		assert_int_equal(q_due_put(t, &d, err, sizeof err), 0);
	}
	struct q_counters total = { .total = N, .rendered = N };
	assert_int_equal(q_counters_add(t, 1, &total, err, sizeof err), 0);
	assert_int_equal(q_commit(t, err, sizeof err), 0);

	struct ctx c = { .loop = ev_loop_new(EVFLAG_AUTO), .want = N };
	struct cm_ops ops = { done_cb };
	cm *com = cm_new(q, ev, c.loop, 5, &ops, &c, err, sizeof err);
	assert_non_null(com);

	/* i%4: 0 delivered, 1 deferred, 2 bounced (+suppress), 3 expired. */
	for (uint32_t i = 0; i < N; i++) {
		struct cm_outcome *o = cm_outcome_new();
		static const uint8_t kinds[] = { Q_DELIVERED, Q_QUEUED, Q_BOUNCED,
			Q_EXPIRED };
		o->id = q_id(1, i);
		o->due = (struct q_due){ 1, 1000, i, 0 };
		o->state = kinds[i % 4];
		o->new_due = 999999;
		o->attempts = 1;
		o->now_ms = 2000;
		o->suppress = o->state == Q_BOUNCED;
		char a[64], r[64];
		snprintf(a, sizeof a, "user%u@d%u.test", i, i % 7);
		snprintf(r, sizeof r, "250 ok %u", i);
		cm_outcome_text(o, a, r);
		buf_printf(&o->event, "{\"i\":%u}\n", i);
		cm_push(com, o);
	}
	run(&c);
	assert_int_equal(c.got, N);
	/* Batched: far fewer transactions than outcomes. */
	assert_true(cm_transactions(com) < N / 4);
	assert_int_equal(cm_committed(com), N);
	assert_int_equal(c.last.delivered, N / 4);
	assert_int_equal(c.last.bounced, N / 4);
	assert_int_equal(c.last.expired, N / 4);
	assert_int_equal(c.last.deferrals, N / 4);
	cm_free(com);

	assert_int_equal(q_begin(q, false, &t, err, sizeof err), 0);
	for (uint32_t i = 0; i < N; i++) {
		struct q_msg m;
		const void *p;
		size_t len;
		assert_int_equal(q_msg_get(t, q_id(1, i), &m), 1);
		assert_int_equal(m.attempts, 1);
		bool deferred = i % 4 == 1;
		assert_int_equal(m.state, deferred ? Q_QUEUED
			: i % 4 == 0 ? Q_DELIVERED : i % 4 == 2 ? Q_BOUNCED
			: Q_EXPIRED);
		/* bodies stay only for messages that will be retried */
		assert_int_equal(q_body_get(t, q_id(1, i), &p, &len), deferred);
		if (deferred)
			assert_true(m.due_ms == 999999);
		char want[40];
		snprintf(want, sizeof want, "250 ok %u", i);
		assert_string_equal(m.reply, want);
		char a[64];
		snprintf(a, sizeof a, "user%u@d%u.test", i, i % 7);
		assert_int_equal(q_suppress_get(t, a, NULL, &len), i % 4 == 2);
	}
	/* The due index holds exactly the deferred messages, re-keyed. */
	int cnt = 0;
	assert_true(q_due_scan(t, 1, NULL, UINT64_MAX, 0, count_due, &cnt, NULL,
		err, sizeof err) >= 0);
	assert_int_equal(cnt, N / 4);
	q_abort(t);

	/* Every event line was written. */
	FILE *f = fopen(logpath, "r");
	assert_non_null(f);
	char line[128];
	size_t lines = 0;
	while (fgets(line, sizeof line, f))
		lines++;
	fclose(f);
	assert_int_equal(lines, N);

	evlog_close(ev);
	ev_loop_destroy(c.loop);
	remove_spool(q);
}

/* sync = full: every outcome is its own transaction, committed (and
 * fsynced) before the loop hears of it. */
static void test_full_mode(void **state)
{
	(void)state;
	q_env *q = open_spool(1 << 24, Q_SYNC_FULL);
	evlog *ev = evlog_open("", err, sizeof err);
	q_txn *t;
	assert_int_equal(q_begin(q, true, &t, err, sizeof err), 0);
	for (uint32_t i = 0; i < 50; i++) {
		struct q_msg m = { .state = Q_QUEUED };
		struct q_due d = { 2, 1, i, 0 };
		q_msg_put(t, q_id(2, i), &m, err, sizeof err);
		q_due_put(t, &d, err, sizeof err);
	}
	assert_int_equal(q_commit(t, err, sizeof err), 0);
	struct ctx c = { .loop = ev_loop_new(EVFLAG_AUTO), .want = 50 };
	struct cm_ops ops = { done_cb };
	cm *com = cm_new(q, ev, c.loop, 5, &ops, &c, err, sizeof err);
	for (uint32_t i = 0; i < 50; i++) {
		struct cm_outcome *o = cm_outcome_new();
		o->id = q_id(2, i);
		o->due = (struct q_due){ 2, 1, i, 0 };
		o->state = Q_DELIVERED;
		o->attempts = 1;
		cm_push(com, o);
	}
	run(&c);
	assert_int_equal(c.got, 50);
	assert_int_equal(cm_transactions(com), 50);
	cm_free(com);
	evlog_close(ev);
	ev_loop_destroy(c.loop);
	remove_spool(q);
}

/* A job in chunks: each chunk its own transaction, committed() after each,
 * after() once at the end; a failing chunk stops the job and leaves the
 * chunks before it committed. */
struct chunky {
	struct ev_loop *loop;
	uint32_t pos, next;         /* committed position, this chunk's end */
	uint32_t end, fail_at;      /* fail_at: a chunk starting there fails */
	int applies, commits, afters, rc;
};

static int chunky_apply(q_txn *t, void *arg, buf_t *events, char *e,
	size_t elen)
{
	struct chunky *j = arg;
	(void)events;
	j->applies++;
	if (j->fail_at && j->pos == j->fail_at) {
		snprintf(e, elen, "chunk at %u refused", j->pos);
		return -1;
	}
	j->next = j->pos + 1000 < j->end ? j->pos + 1000 : j->end;
	for (uint32_t i = j->pos; i < j->next; i++) {
		struct q_msg m = { .state = Q_QUEUED };
		if (q_msg_put(t, q_id(3, i), &m, e, elen))
			return -1;
	}
	return j->next < j->end ? CM_MORE : 0;
}

static void chunky_committed(void *arg)
{
	struct chunky *j = arg;
	j->pos = j->next;
	j->commits++;
}

static void chunky_after(void *arg, int rc, const char *e)
{
	struct chunky *j = arg;
	(void)e;
	j->afters++;
	j->rc = rc;
	ev_break(j->loop, EVBREAK_ALL);
}

static int count_msg(void *arg, uint64_t id, const struct q_msg *m)
{
	(void)id;
	(void)m;
	(*(int *)arg)++;
	return 0;
}

static void test_chunked_job(void **state)
{
	(void)state;
	q_env *q = open_spool(1 << 24, Q_SYNC_GROUP);
	evlog *ev = evlog_open("", err, sizeof err);
	struct ctx c = { .loop = ev_loop_new(EVFLAG_AUTO) };
	struct cm_ops ops = { done_cb };
	cm *com = cm_new(q, ev, c.loop, 5, &ops, &c, err, sizeof err);

	struct chunky a = { .loop = c.loop, .end = 2500 };
	struct cm_job job = { chunky_apply, chunky_after, &a, chunky_committed };
	cm_job(com, &job);
	run(&c);
	assert_int_equal(a.afters, 1);
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.applies, 3);       /* 1000 + 1000 + 500 */
	assert_int_equal(a.commits, 3);
	int n = 0;
	q_txn *t;
	assert_int_equal(q_begin(q, false, &t, err, sizeof err), 0);
	assert_int_equal(q_msg_each(t, 3, count_msg, &n, err, sizeof err), 0);
	q_abort(t);
	assert_int_equal(n, 2500);

	/* The second chunk fails: the first stays, after() gets the error. */
	struct chunky b = { .loop = c.loop, .pos = 5000, .end = 8000,
		.fail_at = 6000 };
	struct cm_job job2 = { chunky_apply, chunky_after, &b, chunky_committed };
	cm_job(com, &job2);
	run(&c);
	assert_int_equal(b.afters, 1);
	assert_int_equal(b.rc, -1);
	assert_int_equal(b.commits, 1);
	n = 0;
	assert_int_equal(q_begin(q, false, &t, err, sizeof err), 0);
	assert_int_equal(q_msg_each(t, 3, count_msg, &n, err, sizeof err), 0);
	q_abort(t);
	assert_int_equal(n, 3500);

	cm_free(com);
	evlog_close(ev);
	ev_loop_destroy(c.loop);
	remove_spool(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_outcomes),
		cmocka_unit_test(test_full_mode),
		cmocka_unit_test(test_chunked_job),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
