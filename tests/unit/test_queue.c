/* Unit tests for queue/: records round-trip, the due index orders and
 * bounds its scans, purge removes everything a campaign owns, the map grows
 * on MDB_MAP_FULL without losing data, and a reopen sees committed data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/queue.h"

static char dir[256];
static char err[512];

static q_env *open_env(uint64_t map)
{
	struct q_config c = { dir, map, 0, Q_SYNC_GROUP };
	q_env *q;
	int rc = q_open(&c, &q, err, sizeof err);
	if (rc)
		fail_msg("%s", err);
	return q;
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/carteiro-test-queue-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static q_txn *wtxn(q_env *q)
{
	q_txn *t;
	assert_int_equal(q_begin(q, true, &t, err, sizeof err), 0);
	return t;
}

static void test_campaign_and_counters(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	uint32_t a, b;
	assert_int_equal(q_cid_next(t, &a, err, sizeof err), 0);
	assert_int_equal(q_cid_next(t, &b, err, sizeof err), 0);
	assert_int_equal(a, 1);
	assert_int_equal(b, 2);
	assert_int_equal(q_campaign_put(t, a, "{\"x\":1}", 7, err, sizeof err), 0);
	struct q_counters d = { 0 };
	d.total = 10;
	d.delivered = 3;
	assert_int_equal(q_counters_add(t, a, &d, err, sizeof err), 0);
	assert_int_equal(q_counters_add(t, a, &d, err, sizeof err), 0);
	assert_int_equal(q_commit(t, err, sizeof err), 0);
	q_close(q);

	/* Reopen: committed data is there, the id sequence continues. */
	q = open_env(1 << 24);
	t = wtxn(q);
	const char *json;
	size_t len;
	assert_int_equal(q_campaign_get(t, a, &json, &len), 1);
	assert_int_equal(len, 7);
	assert_memory_equal(json, "{\"x\":1}", 7);
	assert_int_equal(q_campaign_get(t, 99, &json, &len), 0);
	struct q_counters c;
	assert_int_equal(q_counters_get(t, a, &c), 1);
	assert_int_equal(c.total, 20);
	assert_int_equal(c.delivered, 6);
	assert_int_equal(q_counters_final(&c), 6);
	uint32_t n;
	assert_int_equal(q_cid_next(t, &n, err, sizeof err), 0);
	assert_int_equal(n, 3);
	q_abort(t);
	q_close(q);
}

static void test_msg_roundtrip(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	struct q_msg m = { 0 }, o;
	m.state = Q_QUEUED;
	m.attempts = 513;
	m.created_ms = 1234567890123ULL;
	m.due_ms = 99;
	m.body_len = 70000;
	strcpy(m.rcpt, "joão@exemplo.com.br");
	strcpy(m.reply, "451 4.7.1 try later");
	uint64_t id = q_id(7, 42);
	assert_int_equal(q_msg_put(t, id, &m, err, sizeof err), 0);
	assert_int_equal(q_msg_get(t, id, &o), 1);
	assert_int_equal(o.state, Q_QUEUED);
	assert_int_equal(o.attempts, 513);
	assert_true(o.created_ms == m.created_ms);
	assert_int_equal(o.body_len, 70000);
	assert_string_equal(o.rcpt, m.rcpt);
	assert_string_equal(o.reply, m.reply);
	assert_int_equal(q_msg_get(t, q_id(7, 43), &o), 0);

	/* Bodies are deleted independently of their record. */
	assert_int_equal(q_body_put(t, id, "abc\r\n", 5, err, sizeof err), 0);
	const void *p;
	size_t len;
	assert_int_equal(q_body_get(t, id, &p, &len), 1);
	assert_int_equal(len, 5);
	assert_int_equal(q_body_del(t, id, err, sizeof err), 0);
	assert_int_equal(q_body_get(t, id, &p, &len), 0);
	assert_int_equal(q_body_del(t, id, err, sizeof err), 0);
	assert_string_equal(q_state_name(Q_BOUNCED), "bounced");
	assert_int_equal(q_state_parse("expired"), Q_EXPIRED);
	assert_int_equal(q_state_parse("nope"), -1);
	q_abort(t);
	q_close(q);
}

struct collect {
	struct q_due d[16];
	int n;
};

static int collect_cb(void *arg, const struct q_due *d)
{
	struct collect *c = arg;
	c->d[c->n++] = *d;
	return 0;
}

static void test_due_index(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	/* Inserted out of order, two campaigns interleaved. */
	const struct q_due in[] = {
		{ 5, 300, 1, 0 }, { 5, 100, 9, 0 }, { 6, 50, 1, 0 },
		{ 5, 100, 2, 0 }, { 5, 200, 3, 1 }, { 5, 1000, 4, 0 },
	};
	for (size_t i = 0; i < sizeof in / sizeof *in; i++)
		assert_int_equal(q_due_put(t, &in[i], err, sizeof err), 0);

	struct collect c = { .n = 0 };
	uint64_t next;
	assert_true(q_due_scan(t, 5, NULL, 300, 0, collect_cb, &c, &next, err,
		sizeof err) >= 0);
	assert_int_equal(c.n, 4);
	assert_int_equal(c.d[0].idx, 2);      /* due 100, idx 2 before 9 */
	assert_int_equal(c.d[1].idx, 9);
	assert_int_equal(c.d[2].idx, 3);
	assert_int_equal(c.d[2].chan, 1);
	assert_int_equal(c.d[3].idx, 1);
	assert_true(next == 1000);

	/* Bounded, then resumed after the last key seen. */
	c.n = 0;
	q_due_scan(t, 5, NULL, 5000, 2, collect_cb, &c, NULL, err, sizeof err);
	assert_int_equal(c.n, 2);
	struct q_due last = c.d[1];
	c.n = 0;
	q_due_scan(t, 5, &last, 5000, 2, collect_cb, &c, &next, err,
		sizeof err);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.d[0].idx, 3);
	assert_int_equal(c.d[1].idx, 1);

	/* Nothing due: next due is reported. */
	c.n = 0;
	q_due_scan(t, 5, NULL, 10, 0, collect_cb, &c, &next, err, sizeof err);
	assert_int_equal(c.n, 0);
	assert_true(next == 100);
	c.n = 0;
	q_due_scan(t, 8, NULL, 10, 0, collect_cb, &c, &next, err, sizeof err);
	assert_true(next == UINT64_MAX);

	/* Delete, purge. */
	assert_int_equal(q_due_del(t, &in[1], err, sizeof err), 0);
	assert_int_equal(q_contact_put(t, 5, 1, "{}", 2, err, sizeof err), 0);
	struct q_msg m = { .state = Q_QUEUED };
	strcpy(m.rcpt, "a@b.test");
	assert_int_equal(q_msg_put(t, q_id(5, 1), &m, err, sizeof err), 0);
	assert_int_equal(q_campaign_put(t, 5, "{}", 2, err, sizeof err), 0);
	/* In chunks of 2 records: the first call leaves more. */
	assert_int_equal(q_campaign_purge(t, 5, 2, err, sizeof err), 1);
	int calls = 1, pr;
	while ((pr = q_campaign_purge(t, 5, 2, err, sizeof err)) == 1)
		calls++;
	assert_int_equal(pr, 0);
	assert_true(calls >= 2);
	const char *cj;
	size_t cl;
	assert_int_equal(q_campaign_get(t, 5, &cj, &cl), 0);
	c.n = 0;
	q_due_scan(t, 5, NULL, 5000, 0, collect_cb, &c, NULL, err, sizeof err);
	assert_int_equal(c.n, 0);
	struct q_msg o;
	assert_int_equal(q_msg_get(t, q_id(5, 1), &o), 0);
	/* The other campaign is untouched. */
	c.n = 0;
	q_due_scan(t, 6, NULL, 5000, 0, collect_cb, &c, NULL, err, sizeof err);
	assert_int_equal(c.n, 1);
	q_abort(t);
	q_close(q);
}

static int count_cb(void *arg, uint32_t idx, const void *p, size_t len)
{
	(void)p;
	(void)len;
	uint32_t *v = arg;
	v[v[0] + 1] = idx;
	v[0]++;
	return 0;
}

static void test_contacts(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	for (uint32_t i = 0; i < 10; i++)
		q_contact_put(t, 3, i, "{}", 2, err, sizeof err);
	q_contact_put(t, 4, 0, "{}", 2, err, sizeof err);
	q_contact_del(t, 3, 4, err, sizeof err);
	uint32_t v[16] = { 0 };
	int n = q_contact_scan(t, 3, 3, 3, count_cb, v, err, sizeof err);
	assert_int_equal(n, 3);
	assert_int_equal(v[1], 3);
	assert_int_equal(v[2], 5);   /* 4 was deleted */
	assert_int_equal(v[3], 6);
	memset(v, 0, sizeof v);
	n = q_contact_scan(t, 3, 8, 100, count_cb, v, err, sizeof err);
	assert_int_equal(n, 2);      /* stops at the campaign's end */
	q_abort(t);
	q_close(q);
}

static void test_map_full_grows(void **state)
{
	(void)state;
	/* A tiny map: filling it must fail cleanly, then q_grow lets the same
	 * write succeed; what was committed before is intact. */
	q_env *q = open_env(1 << 20);
	static char blob[64 * 1024];
	memset(blob, 'x', sizeof blob);
	uint32_t written = 0;
	int full = 0;
	for (int round = 0; round < 200 && written < 100; round++) {
		q_txn *t = wtxn(q);
		int rc = q_body_put(t, q_id(1, written), blob, sizeof blob, err,
			sizeof err);
		if (rc == Q_EFULL) {
			q_abort(t);
			full++;
			assert_int_equal(q_grow(q, err, sizeof err), 0);
			continue;
		}
		assert_int_equal(rc, 0);
		rc = q_commit(t, err, sizeof err);
		if (rc == Q_EFULL) {
			full++;
			assert_int_equal(q_grow(q, err, sizeof err), 0);
			continue;
		}
		assert_int_equal(rc, 0);
		written++;
	}
	assert_int_equal(written, 100);
	assert_true(full > 0);
	q_txn *t;
	assert_int_equal(q_begin(q, false, &t, err, sizeof err), 0);
	for (uint32_t i = 0; i < written; i++) {
		const void *p;
		size_t len;
		assert_int_equal(q_body_get(t, q_id(1, i), &p, &len), 1);
		assert_int_equal(len, sizeof blob);
	}
	q_abort(t);
	struct q_stat st;
	assert_int_equal(q_stat(q, &st, err, sizeof err), 0);
	assert_true(st.map_size > (1 << 20));
	q_close(q);
}

static void test_forget_delivered(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	for (uint32_t i = 0; i < 3000; i++) {
		struct q_msg m = { .state = i % 3 ? Q_DELIVERED : Q_BOUNCED };
		strcpy(m.rcpt, "a@b.test");
		assert_int_equal(q_msg_put(t, q_id(9, i), &m, err, sizeof err), 0);
	}
	struct q_msg m = { .state = Q_DELIVERED };
	assert_int_equal(q_msg_put(t, q_id(10, 0), &m, err, sizeof err), 0);
	/* WhatsApp messages on standby (with bodies) for ten contacts. */
	for (uint32_t i = 0; i < 10; i++) {
		struct q_msg w = { .state = Q_STANDBY };
		uint64_t wid = q_id(9, i | Q_WA_BIT);
		assert_int_equal(q_msg_put(t, wid, &w, err, sizeof err), 0);
		assert_int_equal(q_body_put(t, wid, "{}", 2, err, sizeof err), 0);
	}
	assert_int_equal(q_commit(t, err, sizeof err), 0);
	/* In chunks of 700 records, each its own transaction. */
	uint64_t pos = 0, n, total = 0;
	int more, chunks = 0;
	do {
		t = wtxn(q);
		more = q_msg_forget(t, 9, Q_FORGET_DELIVERED, &pos, 700, &n,
			err, sizeof err);
		assert_true(more >= 0);
		assert_true(n <= 700);
		total += n;
		chunks++;
		assert_int_equal(q_commit(t, err, sizeof err), 0);
	} while (more == 1);
	assert_int_equal(total, 2000);
	assert_int_equal(chunks, 5);     /* 3010 records / 700 */
	t = wtxn(q);
	struct q_msg w;
	const void *bp;
	size_t bl;
	assert_int_equal(q_msg_get(t, q_id(9, 3 | Q_WA_BIT), &w), 1);
	pos = 0;   /* the standby ones, with their bodies */
	assert_int_equal(q_msg_forget(t, 9, Q_FORGET_STANDBY, &pos, 0, &n, err,
		sizeof err), 0);
	assert_int_equal(n, 10);
	assert_int_equal(q_msg_get(t, q_id(9, 3 | Q_WA_BIT), &w), 0);
	assert_int_equal(q_body_get(t, q_id(9, 3 | Q_WA_BIT), &bp, &bl), 0);
	pos = 0;   /* a second pass finds nothing more to forget */
	assert_int_equal(q_msg_forget(t, 9, Q_FORGET_DELIVERED, &pos, 0, &n,
		err, sizeof err), 0);
	assert_int_equal(n, 0);
	struct q_msg o;
	for (uint32_t i = 0; i < 3000; i++)
		assert_int_equal(q_msg_get(t, q_id(9, i), &o), i % 3 ? 0 : 1);
	assert_int_equal(q_msg_get(t, q_id(10, 0), &o), 1);  /* untouched */
	q_abort(t);
	q_close(q);
}

static void test_suppress(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	assert_int_equal(q_suppress_put(t, "a@b.test", "{\"reason\":\"x\"}",
		err, sizeof err), 0);
	const char *j;
	size_t len;
	assert_int_equal(q_suppress_get(t, "a@b.test", &j, &len), 1);
	assert_int_equal(q_suppress_get(t, "c@b.test", &j, &len), 0);
	assert_int_equal(q_suppress_get(t, "", &j, &len), 0);
	assert_int_equal(q_suppress_del(t, "a@b.test", err, sizeof err), 0);
	assert_int_equal(q_suppress_get(t, "a@b.test", &j, &len), 0);
	q_abort(t);
	q_close(q);
}

/* Warm-up counts survive a reopen; a new day restarts the count but not
 * the schedule. */
static void test_warmup(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_txn *t = wtxn(q);
	struct q_warmup w;
	assert_int_equal(q_warmup_get(t, "gmail", &w), 0);
	assert_int_equal(q_warmup_add(t, "gmail", 20400, 300, err, sizeof err), 0);
	assert_int_equal(q_warmup_add(t, "gmail", 20400, 200, err, sizeof err), 0);
	assert_int_equal(q_warmup_add(t, "", 20400, 1, err, sizeof err), -1);
	assert_int_equal(q_commit(t, err, sizeof err), 0);
	q_close(q);
	q = open_env(1 << 24);
	t = wtxn(q);
	assert_int_equal(q_warmup_get(t, "gmail", &w), 1);
	assert_int_equal(w.first_day, 20400);
	assert_int_equal(w.day, 20400);
	assert_int_equal(w.count, 500);
	assert_int_equal(q_warmup_add(t, "gmail", 20401, 7, err, sizeof err), 0);
	assert_int_equal(q_warmup_get(t, "gmail", &w), 1);
	assert_int_equal(w.first_day, 20400);
	assert_int_equal(w.day, 20401);
	assert_int_equal(w.count, 7);
	assert_int_equal(q_warmup_get(t, "outlook", &w), 0);
	q_abort(t);
	q_close(q);
}

/* A personalised message: the same template, a few personal pieces. */
static void newsletter(buf_t *b, unsigned i)
{
	buf_reset(b);
	buf_printf(b, "From: Loja <ofertas@loja.test>\r\nTo: cliente%u@d%u.test\r\n"
		"Subject: =?UTF-8?Q?Ol=C3=A1_Cliente_%u?=\r\n\r\n", i, i % 7, i);
	for (int k = 0; k < 60; k++)
		buf_printf(b, "<p>Aproveite as ofertas da semana, cliente %u: frete "
			"gr=C3=A1tis acima de R$ 199,00 (item %d).</p>\r\n", i, k);
}

/* Bodies compressed with the campaign dictionary read back exactly, also
 * after a reopen; what cannot be read gives an error, not a crash. */
static void test_compressed_bodies(void **state)
{
	(void)state;
	q_env *q = open_env(1 << 24);
	q_zctx *z = q_zctx_new();
	buf_t src = BUF_INIT, packed = BUF_INIT, out = BUF_INIT;
	newsletter(&src, 0);
	q_dict *d = q_dict_new(src.p, src.len, 1);
	q_txn *t = wtxn(q);
	assert_int_equal(q_dict_put(t, 3, src.p, src.len, err, sizeof err), 0);
	assert_int_equal(q_dict_put(t, 3, "x", 1, err, sizeof err), -1);
	assert_non_null(strstr(err, "already has a dictionary"));
	size_t raw = 0, stored = 0;
	for (unsigned i = 1; i <= 50; i++) {
		newsletter(&src, i);
		assert_int_equal(q_body_pack(z, d, src.p, src.len, &packed), 1);
		raw += src.len;
		stored += packed.len;
		assert_int_equal(q_body_put(t, q_id(3, i), packed.p, packed.len,
			err, sizeof err), 0);
	}
	/* 50 personalised ~6 KB messages shrink at least tenfold. */
	assert_true(stored * 10 < raw);
	/* Tiny bodies do not shrink: stored raw, still readable. */
	assert_int_equal(q_body_pack(z, d, "oi\r\n", 4, &packed), 0);
	assert_int_equal(packed.len, 4);
	assert_int_equal(q_body_put(t, q_id(3, 99), packed.p, packed.len, err,
		sizeof err), 0);
	assert_int_equal(q_commit(t, err, sizeof err), 0);
	q_dict_free(d);
	q_close(q);

	q = open_env(1 << 24);
	t = wtxn(q);
	for (unsigned i = 1; i <= 50; i++) {
		newsletter(&src, i);
		assert_int_equal(q_body_read(t, z, q_id(3, i), &out, err,
			sizeof err), 1);
		assert_int_equal(out.len, src.len);
		assert_memory_equal(out.p, src.p, src.len);
	}
	assert_int_equal(q_body_read(t, z, q_id(3, 99), &out, err, sizeof err), 1);
	assert_memory_equal(out.p, "oi\r\n", 4);
	assert_int_equal(q_body_read(t, z, q_id(3, 100), &out, err, sizeof err), 0);
	/* A damaged frame. */
	const void *p;
	size_t len;
	assert_int_equal(q_body_get(t, q_id(3, 7), &p, &len), 1);
	char *bad = malloc(len);
	memcpy(bad, p, len);
	bad[len / 2] ^= 0x5a;
	bad[len - 1] ^= 0x5a;
	assert_int_equal(q_body_put(t, q_id(3, 7), bad, len, err, sizeof err), 0);
	free(bad);
	assert_int_equal(q_body_read(t, z, q_id(3, 7), &out, err, sizeof err), -1);
	assert_non_null(strstr(err, "damaged"));
	/* The dictionary gone (campaign finished): a clear error. */
	assert_int_equal(q_dict_del(t, 3, err, sizeof err), 0);
	const void *dp;
	size_t dl;
	assert_int_equal(q_dict_get(t, 3, &dp, &dl), 0);
	assert_int_equal(q_body_read(t, z, q_id(3, 8), &out, err, sizeof err), -1);
	assert_non_null(strstr(err, "no dictionary"));
	q_abort(t);
	buf_free(&src);
	buf_free(&packed);
	buf_free(&out);
	q_zctx_free(z);
	q_close(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_campaign_and_counters, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_msg_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_due_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_contacts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full_grows, setup, teardown),
		cmocka_unit_test_setup_teardown(test_suppress, setup, teardown),
		cmocka_unit_test_setup_teardown(test_warmup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compressed_bodies, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_forget_delivered, setup,
			teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
