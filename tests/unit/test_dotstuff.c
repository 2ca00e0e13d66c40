/* Unit tests for bench/dotstuff: table of inputs, each fed whole, byte by
 * byte and in every two-piece split, must give the same content and end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bench/dotstuff.h"

struct dcase {
	const char *in;       /* bytes after 354 */
	const char *content;  /* expected unstuffed content */
	size_t consumed;      /* bytes consumed up to and including ".\r\n"; 0 = not ended */
};

static const struct dcase cases[] = {
	{ ".\r\n", "", 3 },
	{ "a\r\n.\r\n", "a\r\n", 6 },
	{ "..x\r\n.\r\nMAIL", ".x\r\n", 8 },
	{ "...\r\n.\r\n", "..\r\n", 8 },
	{ "a.\r\n.b\r\n.\r\n", "a.\r\nb\r\n", 11 },
	{ ".\rx\r\n.\r\n", "\rx\r\n", 8 },
	{ "no end\r\n", "no end\r\n", 0 },
	{ "x\r\n.\r", "x\r\n", 0 },
	{ "a\r\n\r\n.\r\nQUIT\r\n", "a\r\n\r\n", 8 },
	{ "line\n.\r\n", "line\n", 8 },
};

static size_t
run(const struct dcase *c, size_t split, int bytewise, buf_t *out)
{
	dot_t d;
	size_t n = strlen(c->in), off = 0;
	int done = 0;
	dot_reset(&d);
	while (off < n && !done) {
		size_t chunk = bytewise ? 1 : (off < split ? split - off : n - off);
		if (chunk == 0)
			chunk = n - off;
		if (off + chunk > n)
			chunk = n - off;
		off += dot_feed(&d, c->in + off, chunk, out, &done);
	}
	assert_int_equal(d.bytes, out->len);
	return done ? off : 0;
}

static void
test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct dcase *c = &cases[i];
		size_t n = strlen(c->in);
		for (size_t split = 0; split <= n + 1; split++) {
			for (int bw = 0; bw < 2; bw++) {
				buf_t out = BUF_INIT;
				size_t got = run(c, split, bw, &out);
				if (got != c->consumed || strcmp(buf_cstr(&out), c->content) != 0)
					fail_msg("case %zu split %zu bytewise %d: consumed %zu content '%s'",
					    i, split, bw, got, buf_cstr(&out));
				buf_free(&out);
			}
		}
	}
}

static void
test_count_only(void **state)
{
	(void)state;
	dot_t d;
	int done = 0;
	dot_reset(&d);
	size_t k = dot_feed(&d, "abc\r\n..\r\n.\r\n", 12, NULL, &done);
	assert_int_equal(k, 12);
	assert_int_equal(done, 1);
	assert_int_equal(d.bytes, 8);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_count_only),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
