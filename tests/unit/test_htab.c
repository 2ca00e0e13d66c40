/* Unit tests for engine/htab: map and id set against a reference model,
 * through growth and many deletions (tombstones). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/htab.h"

#define N 5000

static void test_map(void **state)
{
	(void)state;
	ht_map m = { 0 };
	static int vals[N];
	char k[32];
	for (int i = 0; i < N; i++) {
		snprintf(k, sizeof k, "d%05d.test", i);
		ht_put(&m, k, &vals[i]);
	}
	assert_int_equal(m.len, N);
	for (int i = 0; i < N; i += 2) {
		snprintf(k, sizeof k, "d%05d.test", i);
		assert_ptr_equal(ht_del(&m, k), &vals[i]);
	}
	for (int round = 0; round < 3; round++)
		for (int i = 0; i < N; i += 2) {
			snprintf(k, sizeof k, "d%05d.test", i);
			ht_put(&m, k, &vals[i]);
			assert_ptr_equal(ht_del(&m, k), &vals[i]);
		}
	for (int i = 0; i < N; i++) {
		snprintf(k, sizeof k, "d%05d.test", i);
		assert_ptr_equal(ht_get(&m, k), i % 2 ? &vals[i] : NULL);
	}
	ht_put(&m, "d00001.test", &vals[0]);   /* replace */
	assert_ptr_equal(ht_get(&m, "d00001.test"), &vals[0]);
	size_t pos = 0, n = 0;
	const char *key;
	void *v;
	while (ht_next(&m, &pos, &key, &v))
		n++;
	assert_int_equal(n, N / 2);
	assert_null(ht_del(&m, "missing"));
	ht_free(&m);
}

static void test_set(void **state)
{
	(void)state;
	ht_set s = { 0 };
	for (uint64_t i = 1; i <= N; i++)
		assert_true(ht_set_add(&s, i << 32 | i));
	assert_false(ht_set_add(&s, 1ULL << 32 | 1));
	for (uint64_t i = 1; i <= N; i += 3)
		assert_true(ht_set_del(&s, i << 32 | i));
	for (uint64_t i = 1; i <= N; i++)
		assert_int_equal(ht_set_has(&s, i << 32 | i), (i - 1) % 3 != 0);
	assert_false(ht_set_del(&s, 12345));
	/* Churn: tombstones must not make the table fill up. */
	for (uint64_t i = 0; i < 100000; i++) {
		assert_true(ht_set_add(&s, (uint64_t)7 << 40 | i));
		assert_true(ht_set_del(&s, (uint64_t)7 << 40 | i));
	}
	assert_true(s.cap < 100000);
	ht_set_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map),
		cmocka_unit_test(test_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
