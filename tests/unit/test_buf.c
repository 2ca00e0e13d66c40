/* Unit tests for engine/buf. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/buf.h"

static void
test_append_and_printf(void **state)
{
	(void)state;
	buf_t b = BUF_INIT;
	buf_adds(&b, "Olá");
	buf_addc(&b, ',');
	buf_printf(&b, " %s %d", "João", 42);
	assert_string_equal(buf_cstr(&b), "Olá, João 42");
	assert_int_equal(b.len, strlen("Olá, João 42"));
	buf_free(&b);
}

static void
test_large_printf_grows(void **state)
{
	(void)state;
	buf_t b = BUF_INIT;
	char big[5000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	buf_printf(&b, "<%s>", big);
	assert_int_equal(b.len, sizeof big + 1);
	assert_int_equal(b.p[0], '<');
	assert_int_equal(b.p[b.len - 1], '>');
	assert_int_equal(b.p[b.len], '\0');
	buf_free(&b);
}

static void
test_consume_and_binary(void **state)
{
	(void)state;
	buf_t b = BUF_INIT;
	buf_add(&b, "ab\0cd", 5);
	assert_int_equal(b.len, 5);
	buf_consume(&b, 3);
	assert_int_equal(b.len, 2);
	assert_memory_equal(b.p, "cd", 2);
	buf_consume(&b, 10);
	assert_int_equal(b.len, 0);
	assert_string_equal(buf_cstr(&b), "");
	buf_free(&b);
}

static void
test_steal(void **state)
{
	(void)state;
	buf_t b = BUF_INIT;
	buf_adds(&b, "hello");
	size_t n;
	char *s = buf_steal(&b, &n);
	assert_int_equal(n, 5);
	assert_string_equal(s, "hello");
	assert_null(b.p);
	free(s);
	s = buf_steal(&b, &n);
	assert_int_equal(n, 0);
	assert_string_equal(s, "");
	free(s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_and_printf),
		cmocka_unit_test(test_large_printf_grows),
		cmocka_unit_test(test_consume_and_binary),
		cmocka_unit_test(test_steal),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
