/*
 * queue-bench — the queue's own speed, without SMTP or rendering:
 *
 *   enqueue   N messages written as the render workers write them (message
 *             record + body + due-index entry, -b per transaction,
 *             committed with the configured sync mode). Bodies are
 *             personalised newsletters of -s bytes (a name, an address, an
 *             order number and three cart lines differ per message; the
 *             rest is template text), compressed with the campaign
 *             dictionary as the render workers do (-r: stored raw). The
 *             writer's rate and the compression rate of one core are
 *             reported apart: in the engine, render threads compress in
 *             parallel and one transaction at a time writes;
 *   pick      walking the due index from a cursor, as the scheduler does;
 *   update    N delivery outcomes through the group committer (engine/
 *             commit), as the delivery loop produces them;
 *   memory    RssAnon of this process with N messages queued (LMDB's pages
 *             are file-backed: they are not anonymous memory).
 *
 *   queue-bench [-n N] [-s BODY_BYTES] [-r] [-m full|group|none] [-d DIR] [--json FILE]
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/buf.h"
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

static const char *const first[] = { "Ana", "João", "Maria", "José",
	"Francisca", "Antônio", "Adriana", "Carlos", "Juliana", "Paulo",
	"Márcia", "Lucas", "Aline", "Rafael", "Conceição", "Thiago" };
static const char *const last[] = { "Silva", "Santos", "Oliveira", "Souza",
	"Rodrigues", "Ferreira", "Alves", "Pereira", "Lima", "Gomes" };
static const char *const items[] = { "Café especial 500 g", "Caneca de "
	"cerâmica", "Açúcar mascavo 1 kg", "Filtro de papel 103", "Moedor manual",
	"Chaleira elétrica", "Prensa francesa 600 ml", "Cápsulas (10 un.)" };

/* One contact's rendered newsletter, about `size` bytes (CRLF lines). */
static void newsletter(buf_t *b, uint64_t i, size_t size)
{
	uint64_t h = i * 0x9e3779b97f4a7c15ULL;
	const char *fn = first[h % 16], *ln = last[(h >> 8) % 10];
	buf_reset(b);
	buf_printf(b, "From: Loja Exemplo <ofertas@loja.test>\r\n"
		"To: %s %s <cliente%llu@d%llu.test>\r\n"
		"Subject: =?UTF-8?Q?%s=2C_seu_carrinho_est=C3=A1_esperando?=\r\n"
		"Message-ID: <%016llx.%llu@loja.test>\r\nMIME-Version: 1.0\r\n"
		"Content-Type: text/html; charset=utf-8\r\n"
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
		"<h1>Ol=C3=A1, %s!</h1>\r\n<p>Pedido n=C2=BA %llu</p>\r\n<table>\r\n",
		fn, ln, (unsigned long long)i, (unsigned long long)(i % 1000), fn,
		(unsigned long long)h, (unsigned long long)i, fn,
		(unsigned long long)(100000 + i));
	for (int k = 0; k < 3; k++)
		buf_printf(b, "<tr><td>%s</td><td>%llu</td><td>R$ %llu,%02llu</td>"
			"</tr>\r\n", items[(h >> (12 + 3 * k)) % 8],
			(unsigned long long)(1 + (h >> (20 + k)) % 3),
			(unsigned long long)(10 + (h >> (24 + 4 * k)) % 190),
			(unsigned long long)((h >> (30 + k)) % 100));
	buf_adds(b, "</table>\r\n");
	while (b->len + 160 < size)
		buf_adds(b, "<p>Aproveite as ofertas da semana com frete gr=C3=A1tis "
			"para todo o Brasil em compras acima de R$ 199,00.</p>\r\n");
	buf_printf(b, "<p>%s, para n=C3=A3o receber mais: https://loja.test/u/"
		"%016llx</p>\r\n", fn, (unsigned long long)(h ^ 0x5bd1e995));
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
	bool raw = false;
	char dir[256] = "";
	static const struct option lo[] = {
		{ "json", required_argument, NULL, 'j' }, { NULL, 0, NULL, 0 } };
	int ch;
	while ((ch = getopt_long(argc, argv, "n:s:m:d:b:r", lo, NULL)) != -1) {
		switch (ch) {
		case 'r': raw = true; break;
		case 'n': n = strtoull(optarg, NULL, 10); break;
		case 'b': batch = (unsigned)strtoul(optarg, NULL, 10); break;
		case 's': size = strtoul(optarg, NULL, 10); break;
		case 'm': mode = optarg; break;
		case 'd': snprintf(dir, sizeof dir, "%s", optarg); break;
		case 'j': json = optarg; break;
		default:
			fprintf(stderr, "usage: queue-bench [-n N] [-s BYTES] [-r] "
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
	buf_t body = BUF_INIT, packed = BUF_INIT;
	q_zctx *z = q_zctx_new();
	newsletter(&body, 0, size);
	q_dict *dict = raw ? NULL : q_dict_new(body.p, body.len, 1);
	size_t body_len = body.len;
	uint64_t stored = 0;
	double zsecs = 0;
	long rss0 = rss_anon_kb();

	/* enqueue */
	double t0 = now();
	uint64_t txns = 0;
	for (uint64_t i = 0; i < n;) {
		q_txn *t;
		uint64_t start = i;
		int rc = q_begin(q, true, &t, err, sizeof err);
		for (; rc == 0 && i < n && i - start < batch; i++) {
			newsletter(&body, i + 1, size);
			const buf_t *b = &body;
			if (dict) {
				double z0 = now();
				q_body_pack(z, dict, body.p, body.len, &packed);
				zsecs += now() - z0;
				b = &packed;
			}
			stored += b->len;
			struct q_msg m = { .state = Q_QUEUED, .created_ms = 1,
				.due_ms = 1000 + i % 1000, .body_len = (uint32_t)body.len };
			snprintf(m.rcpt, sizeof m.rcpt, "cliente%llu@d%llu.test",
				(unsigned long long)i, (unsigned long long)(i % 1000));
			struct q_due d = { 1, m.due_ms, (uint32_t)i, 0 };
			rc = q_msg_put(t, q_id(1, (uint32_t)i), &m, err, sizeof err);
			if (!rc)
				rc = q_body_put(t, q_id(1, (uint32_t)i), b->p, b->len, err,
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
	double enq_all = now() - t0;
	long rss_queued = rss_anon_kb();
	/* Making the bodies (and compressing them, timed apart) is the render
	 * threads' work in the engine: the writer's own rate leaves it out. */
	double gen0 = now();
	for (uint64_t i = 0; i < 20000; i++)
		newsletter(&body, i + 1, size);
	double gen = (now() - gen0) / 20000 * (double)n;
	double enq = enq_all - zsecs - gen;
	if (enq <= 0)
		enq = 1e-9;
	struct q_stat qs;
	q_stat(q, &qs, err, sizeof err);
	uint64_t spool_queued = qs.used_bytes;

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

	printf("queue-bench: %llu messages of %zu bytes (personalised), "
		"sync=%s, bodies %s\n", (unsigned long long)n, body_len, mode,
		dict ? "compressed (zstd, campaign dictionary)" : "raw");
	printf("  stored   %10.0f bytes per body on average\n",
		(double)stored / (double)n);
	printf("  enqueue  %10.0f msgs/s  (writer: %.2f s, %llu transactions)\n",
		n / enq, enq, (unsigned long long)txns);
	if (dict)
		printf("  compress %10.0f msgs/s  per core (%.2f s)\n",
			n / zsecs, zsecs);
	printf("  spool    %llu bytes used with all queued\n",
		(unsigned long long)spool_queued);
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
				"\"%s\",\"compressed\":%s,\"stored_bytes_per_body\":%.0f,"
				"\"enqueue_per_s\":%.0f,\"compress_per_s_per_core\":%.0f,"
				"\"pick_per_s\":%.0f,"
				"\"update_per_s\":%.0f,\"group_commits\":%llu,"
				"\"rss_anon_kb\":%ld,\"spool_queued_bytes\":%llu,"
				"\"spool_used_bytes\":%llu}\n",
				(unsigned long long)n, body_len, mode, dict ? "true" : "false",
				(double)stored / (double)n, n / enq, dict ? n / zsecs : 0,
				seen / pick, n / upd, (unsigned long long)utx, rss_queued,
				(unsigned long long)spool_queued,
				(unsigned long long)st.used_bytes);
			fclose(f);
		}
	}
	buf_free(&body);
	buf_free(&packed);
	q_dict_free(dict);
	q_zctx_free(z);
	ev_loop_destroy(c.loop);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : 1;
}
