/*
 * queue-bench — the queue's own speed, without SMTP or rendering:
 *
 *   enqueue   N messages written as the render workers write them (message
 *             record + body + due-index entry, -b per transaction,
 *             committed with the configured sync mode);
 *   pick      walking the due index from a cursor, as the scheduler does;
 *   update    N delivery outcomes through the group committer (engine/
 *             commit), as the delivery loop produces them;
 *   memory    RssAnon of this process with N messages queued (LMDB's pages
 *             are file-backed: they are not anonymous memory).
 *
 *   queue-bench [-n N] [-s BODY_BYTES] [-m full|group|none] [-d DIR] [--json FILE]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/commit.h"
#include "engine/mem.h"
#include "queue/queue.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long rss_anon_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "RssAnon:", 8) == 0)
			kb = strtol(line + 8, NULL, 10);
	if (f)
		fclose(f);
	return kb;
}

struct ctx {
	struct ev_loop *loop;
	uint64_t got, want;
};

static void done_cb(void *arg, struct cm_outcome *list,
	const struct cm_touched *t, size_t nt)
{
	struct ctx *c = arg;
	(void)t;
	(void)nt;
	while (list) {
		struct cm_outcome *n = list->next;
		c->got++;
		cm_outcome_free(list);
		list = n;
	}
	if (c->got >= c->want)
		ev_break(c->loop, EVBREAK_ALL);
}

static int count_cb(void *arg, const struct q_due *d)
{
	(void)d;
	(*(uint64_t *)arg)++;
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t n = 1000000;
	size_t size = 2048;
	unsigned batch = 1024;
	const char *mode = "group", *json = NULL;
	char dir[256] = "";
	static const struct option lo[] = {
		{ "json", required_argument, NULL, 'j' }, { NULL, 0, NULL, 0 } };
	int ch;
	while ((ch = getopt_long(argc, argv, "n:s:m:d:b:", lo, NULL)) != -1) {
		switch (ch) {
		case 'n': n = strtoull(optarg, NULL, 10); break;
		case 'b': batch = (unsigned)strtoul(optarg, NULL, 10); break;
		case 's': size = strtoul(optarg, NULL, 10); break;
		case 'm': mode = optarg; break;
		case 'd': snprintf(dir, sizeof dir, "%s", optarg); break;
		case 'j': json = optarg; break;
		default:
			fprintf(stderr, "usage: queue-bench [-n N] [-s BYTES] "
				"[-m full|group|none] [-b PER_TXN] [-d DIR] [--json FILE]\n");
			return 2;
		}
	}
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/carteiro-queue-bench-XXXXXX");
		if (!mkdtemp(dir))
			return 1;
	}
	enum q_sync sync = !strcmp(mode, "full") ? Q_SYNC_FULL
		: !strcmp(mode, "none") ? Q_SYNC_NONE : Q_SYNC_GROUP;
	struct q_config qc = { dir, (uint64_t)1 << 30, 0, sync };
	char err[512];
	q_env *q;
	if (q_open(&qc, &q, err, sizeof err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	char *body = mem_alloc(size);
	for (size_t i = 0; i < size; i++)
		body[i] = (char)('a' + i % 26);
	long rss0 = rss_anon_kb();

	/* enqueue */
	double t0 = now();
	uint64_t txns = 0;
	for (uint64_t i = 0; i < n;) {
		q_txn *t;
		uint64_t start = i;
		int rc = q_begin(q, true, &t, err, sizeof err);
		for (; rc == 0 && i < n && i - start < batch; i++) {
			struct q_msg m = { .state = Q_QUEUED, .created_ms = 1,
				.due_ms = 1000 + i % 1000, .body_len = (uint32_t)size };
			snprintf(m.rcpt, sizeof m.rcpt, "cliente%llu@d%llu.test",
				(unsigned long long)i, (unsigned long long)(i % 1000));
			struct q_due d = { 1, m.due_ms, (uint32_t)i, 0 };
			rc = q_msg_put(t, q_id(1, (uint32_t)i), &m, err, sizeof err);
			if (!rc)
				rc = q_body_put(t, q_id(1, (uint32_t)i), body, size, err,
					sizeof err);
			if (!rc)
				rc = q_due_put(t, &d, err, sizeof err);
		}
		if (rc == 0) {
			rc = q_commit(t, err, sizeof err);
			t = NULL;
		}
		q_abort(t);
		if (rc == Q_EFULL) {
			i = start;
			if (q_grow(q, err, sizeof err)) {
				fprintf(stderr, "%s\n", err);
				return 1;
			}
			continue;
		}
		if (rc) {
			fprintf(stderr, "enqueue: %s\n", err);
			return 1;
		}
		txns++;
	}
	double enq = now() - t0;
	long rss_queued = rss_anon_kb();

	/* pick: walk the due index as the scheduler does, in chunks */
	t0 = now();
	uint64_t seen = 0;
	q_txn *rt;
	q_begin(q, false, &rt, err, sizeof err);
	q_due_scan(rt, 1, NULL, UINT64_MAX, 0, count_cb, &seen, NULL, err,
		sizeof err);
	q_abort(rt);
	double pick = now() - t0;

	/* update: outcomes through the group committer */
	struct ctx c = { ev_loop_new(EVFLAG_AUTO), 0, n };
	evlog *ev = evlog_open("", err, sizeof err);
	struct cm_ops ops = { done_cb };
	cm *com = cm_new(q, ev, c.loop, 5, &ops, &c, err, sizeof err);
	t0 = now();
	for (uint64_t i = 0; i < n; i++) {
		struct cm_outcome *o = cm_outcome_new();
		o->id = q_id(1, (uint32_t)i);
		o->due = (struct q_due){ 1, 1000 + i % 1000, (uint32_t)i, 0 };
		o->state = Q_DELIVERED;
		o->attempts = 1;
		o->now_ms = 2;
		cm_outcome_text(o, NULL, "250 2.0.0 Ok");
		cm_push(com, o);
		/* let the loop take committed batches back as it goes */
		if (i % 4096 == 0)
			ev_run(c.loop, EVRUN_NOWAIT);
	}
	while (c.got < n)
		ev_run(c.loop, EVRUN_ONCE);
	double upd = now() - t0;
	uint64_t utx = cm_transactions(com);
	cm_free(com);
	evlog_close(ev);
	struct q_stat st;
	q_stat(q, &st, err, sizeof err);
	q_close(q);

	printf("queue-bench: %llu messages of %zu bytes, sync=%s\n",
		(unsigned long long)n, size, mode);
	printf("  enqueue  %10.0f msgs/s  (%.2f s, %llu transactions)\n",
		n / enq, enq, (unsigned long long)txns);
	printf("  pick     %10.0f entries/s (due-index walk)\n", seen / pick);
	printf("  update   %10.0f outcomes/s (%.2f s, %llu group commits)\n",
		n / upd, upd, (unsigned long long)utx);
	printf("  RssAnon  %ld kB before, %ld kB with all queued\n", rss0,
		rss_queued);
	printf("  spool    %llu bytes used after delivery (map %llu)\n",
		(unsigned long long)st.used_bytes, (unsigned long long)st.map_size);
	if (json) {
		FILE *f = fopen(json, "w");
		if (f) {
			fprintf(f, "{\"messages\":%llu,\"body_bytes\":%zu,\"sync\":"
				"\"%s\",\"enqueue_per_s\":%.0f,\"pick_per_s\":%.0f,"
				"\"update_per_s\":%.0f,\"group_commits\":%llu,"
				"\"rss_anon_kb\":%ld,\"spool_used_bytes\":%llu}\n",
				(unsigned long long)n, size, mode, n / enq, seen / pick,
				n / upd, (unsigned long long)utx, rss_queued,
				(unsigned long long)st.used_bytes);
			fclose(f);
		}
	}
	free(body);
	ev_loop_destroy(c.loop);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : 1;
}
